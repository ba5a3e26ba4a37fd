"""Shipped, dated tables (GPU prices and peaks, currency rates, OpenAI training prices).

Each YAML file states its ``date`` and ``source``; users override entries with their own YAML.
The one home of the GPU table (``load_gpus``, ``find_gpu``) and of currency conversion
(``load_fx``, ``usd_rate``): costs, estimate, advise and compare all read them from here.
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


# ---------------------------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------------------------

GPU_FIELDS = ("name", "kind", "vram_gb", "bf16_tflops", "usd_per_hour", "decode_tokens_per_s_8b")


def load_gpus(override: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The GPU table (shipped, merged with a user's YAML ``gpus:`` mapping)."""
    table = load_table("gpus.yaml")["gpus"]
    if override:
        data = read_override(override, "GPU table")
        extra = data.get("gpus", data)
        if not isinstance(extra, dict):
            raise TunewiseError(f"{override}: 'gpus' must be a mapping of name to fields", "see tables/gpus.yaml")
        for key, fields in extra.items():
            if not isinstance(fields, dict):
                raise TunewiseError(f"{override}: gpus.{key} must be a mapping", "see tables/gpus.yaml")
            merged = {**table.get(key, {}), **fields}
            missing = [r for r in GPU_FIELDS if r not in merged]
            if missing:
                raise TunewiseError(f"{override}: gpus.{key} lacks {', '.join(missing)}", "add those fields")
            for num in GPU_FIELDS[2:]:
                if not isinstance(merged[num], (int, float)) or merged[num] <= 0:
                    raise TunewiseError(f"{override}: gpus.{key}.{num} must be a positive number", "fix the value")
            table[key] = merged
    return table


def gpu_table_source() -> tuple[str, str]:
    """(date, source) of the shipped GPU table."""
    t = load_table("gpus.yaml")
    return str(t["date"]), " ".join(str(t["source"]).split())


def find_gpu(name: str, gpus: dict[str, dict[str, Any]]) -> str:
    """Normalise a GPU name ("RTX 4090", "a100-80gb", "H100") to a table key, or a clear error."""
    import difflib

    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    aliases = {k.replace("rtx-", ""): k for k in gpus}
    aliases.update({"a100": "a100-80gb", "a6000": "rtx-a6000", "cpu": "cpu-16", "3090": "rtx-3090", "4090": "rtx-4090"})
    if key in gpus:
        return key
    if key in aliases:
        return aliases[key]
    close = difflib.get_close_matches(key, list(gpus), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise TunewiseError(
        f"unknown GPU '{name}'",
        f"{hint}known: {', '.join(gpus)}; add yours with --gpus FILE (see docs/advise.md)",
    )


# ---------------------------------------------------------------------------------------------
# Currencies
# ---------------------------------------------------------------------------------------------

CURRENCIES = ("USD", "INR")


def load_fx(override: str | Path | None = None) -> dict[str, Any]:
    """The dated currency table (units of each currency per USD), merged with a user's YAML."""
    fx = load_table("fx.yaml")
    if override:
        data = read_override(override, "currency table")
        fx["usd_to"].update(data.get("usd_to", {}))
        fx["date"] = data.get("date", "user override")
        fx["source"] = data.get("source", str(override))
    return fx


def check_currency(currency: str) -> str:
    """``currency`` upper-cased, or a clear error when tunewise cannot show amounts in it."""
    cur = currency.strip().upper()
    if cur not in CURRENCIES:
        raise TunewiseError(f"unknown currency '{currency}'", f"use {' or '.join(CURRENCIES)}")
    return cur


def usd_rate(currency: str, override: float | None = None, fx: dict[str, Any] | None = None) -> float:
    """Units of ``currency`` per USD: the user's ``override`` if given, else the (dated) fx table.

    The one place a rate is looked up; a currency missing from the table is an error, never a
    silent guess.
    """
    cur = check_currency(currency)
    if override is not None:
        if override <= 0:
            raise TunewiseError(f"exchange rate {override} for {cur} must be positive", "e.g. --inr-rate 88")
        return float(override)
    if cur == "USD":
        return 1.0
    table = fx if fx is not None else load_fx()
    rate = table.get("usd_to", {}).get(cur)
    if not isinstance(rate, (int, float)) or rate <= 0:
        raise TunewiseError(f"tables/fx.yaml has no USD rate for {cur}",
                            f"give the rate yourself (--inr-rate, or usd_rate: in a compare config)")
    return float(rate)
