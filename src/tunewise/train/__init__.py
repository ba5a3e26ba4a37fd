"""Fine-tuning: LoRA, QLoRA (4-bit base) and full, with packing, resumable atomic checkpoints and a
self-describing run directory. ``train(cfg)`` is the one entry point; see docs/train.md."""

from tunewise.train.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
