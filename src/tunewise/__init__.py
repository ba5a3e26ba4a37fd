"""tunewise: decide whether to fine-tune an LLM with measurements on your own data, then fine-tune well."""

import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes tries to fetch an optional CPU kernel from the Hugging Face Hub when it is imported
# (by transformers/peft/sentence-transformers); tunewise never downloads at run time and the
# built-in CPU path works, so its warning about that is noise. Set before anything imports it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# transformers 5.x warns about its own internal call when PEFT models are saved; not actionable.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")

from tunewise.errors import TunewiseError  # noqa: E402

__all__ = ["TunewiseError", "__version__"]
