"""tunewise: decide whether to fine-tune an LLM with measurements on your own data, then fine-tune well."""

__version__ = "0.1.0"

from tunewise.errors import TunewiseError  # noqa: E402

__all__ = ["TunewiseError", "__version__"]
