"""Fine-tuning: LoRA, QLoRA (4-bit base) and full, with packing, resumable atomic checkpoints and a
self-describing run directory. ``train(cfg)`` is the one entry point; see docs/train.md."""

import logging

# bitsandbytes tries to fetch an optional CPU kernel from the Hugging Face Hub when it is imported
# (by transformers/peft); tunewise never downloads at run time and the built-in CPU path works, so
# its warning about that is noise. Set before anything imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from tunewise.train.trainer import TrainResult, train  # noqa: E402

__all__ = ["TrainResult", "train"]
