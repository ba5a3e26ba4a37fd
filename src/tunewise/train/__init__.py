"""Fine-tuning: LoRA, QLoRA (4-bit base) and full, with packing, resumable atomic checkpoints and a
self-describing run directory. ``train(cfg)`` is the one entry point; see docs/train.md.

``train`` and ``TrainResult`` load the trainer (torch, transformers, PEFT, TRL) on first use, so
light modules such as :mod:`tunewise.train.run_dir` import without it."""

__all__ = ["TrainResult", "train"]


def __getattr__(name: str):
    if name in __all__:
        from tunewise.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'tunewise.train' has no attribute {name!r}")
