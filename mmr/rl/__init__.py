"""GSPO RL: verl entry (train.py), data prep (dataset.py), reward bridge (reward.py), CPU debug engine (local.py)."""
