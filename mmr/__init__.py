"""mmr: train multimodal reasoning models (Qwen2.5-VL, Qwen3-VL): curated data -> SFT -> GSPO RL."""

__version__ = "0.1.0"
