"""Shipped, dated tables (GPU prices and peaks, currency rates, OpenAI training prices).

Each YAML file states its ``date`` and ``source``; users override entries with their own YAML.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tunewise.errors import TunewiseError


@lru_cache(maxsize=None)
def _shipped(name: str) -> dict[str, Any]:
    text = resources.files("tunewise.tables").joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_table(name: str) -> dict[str, Any]:
    """A shipped table (``gpus.yaml``, ``fx.yaml``, ``openai_finetuning.yaml``) as a fresh dict."""
    import copy

    return copy.deepcopy(_shipped(name))


def read_override(path: str | Path, what: str) -> dict[str, Any]:
    """Read a user's override YAML for ``what`` (clear errors naming the file)."""
    from tunewise.config import read_yaml

    p = Path(path)
    if not p.is_file():
        raise TunewiseError(f"{what} file {p} does not exist", "check the path")
    return read_yaml(p)
