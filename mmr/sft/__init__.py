"""Supervised fine-tuning: the recipe (train.py), its data stream, checkpoints and config."""
