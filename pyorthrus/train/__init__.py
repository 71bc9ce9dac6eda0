"""Orthrus trainer: forward-KL self-distillation of the diffusion attention weights over a frozen base.

`pyorthrus train` (cli.py) -> loop.train(TrainConfig) -> loop.run_job with a job per kind of base: loop.PackedJob
(model.py's packed AR + diffusion forward on data.py batches) or qwen35.DocumentJob (Qwen3.5, one document at a time
on pyorthrus.reference_qwen35).
"""
__all__ = ["TrainConfig", "train"]


def __getattr__(name):  # torch is imported only when training runs: `pyorthrus train --help` works without it
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)
