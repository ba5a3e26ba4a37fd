"""tunewise: decide whether to fine-tune an LLM with measurements on your own data, then fine-tune well."""

import logging
import os
import warnings

__version__ = "0.1.0"

# bitsandbytes tries to fetch an optional CPU kernel from the Hugging Face Hub when it is imported
# (by transformers/peft/sentence-transformers); tunewise never downloads at run time and the
# built-in CPU path works, so its warning about that is noise. Set before anything imports it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# PyTorch's CPU kernels keep a compiled kernel per matrix shape (oneDNN primitives, ideep's LRU
# cache). Training rows change length every micro-batch, so with the defaults (1024 entries each) a
# CPU run's memory grew by ~1 MB per new row length for matmuls and ~5 MB per new example length for
# attention (measured with PyTorch's CPU flash-attention kernel), to several GB over a long run. These caps keep it
# at ~0.1 GB with no measurable slowdown (bench/train_throughput.py). They are read when torch first
# builds such a kernel, so they are set before tunewise imports torch; a value already in the
# environment wins.
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
# transformers 5.x warns about its own internal call when PEFT models are saved; not actionable.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")

from tunewise.errors import TunewiseError  # noqa: E402

__all__ = ["TunewiseError", "__version__"]
