"""Orthrus trainer: forward-KL self-distillation of the diffusion attention weights over a frozen base.

`pyorthrus train` (cli.py) -> loop.train(TrainConfig) -> model.py (packed AR + diffusion forward) on data.py batches.
"""
__all__ = ["TrainConfig", "train"]


def __getattr__(name):  # torch is imported only when training runs: `pyorthrus train --help` works without it
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)
