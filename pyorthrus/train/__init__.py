"""Orthrus trainer: forward-KL self-distillation of the diffusion attention weights over a frozen base.

`pyorthrus train` (cli.py) -> loop.train(TrainConfig) -> model.py (packed AR + diffusion forward) on data.py batches.
"""
from .loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
