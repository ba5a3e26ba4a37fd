"""File operations that keep rows as they were written: split, dedupe and fill placeholders.
Outputs are written atomically; the input is never overwritten."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.data.check import PLACEHOLDER
from tunewise.data.convert import check_output_path, read_valid, serialize_rows, write_output
from tunewise.data.dedup import DuplicateFinder
from tunewise.data.formats import iter_rows
from tunewise.errors import TunewiseError


def _json_safe(rows: list[Any]) -> list[Any]:
    """Parquet rows may hold dates or bytes: make them JSON values (str) so they can be written."""
    return json.loads(json.dumps(rows, ensure_ascii=False, default=str))


def _clusters(parsed: list, threshold: float) -> list[list[int]]:
    finder = DuplicateFinder(threshold=threshold)
    for p in parsed:
        finder.add(p.conversation)
    return finder.groups().clusters()


@dataclass
class SplitResult:
    train_path: str
    eval_path: str
    train_rows: int
    eval_rows: int
    duplicate_groups: int

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def split_file(inp: str | Path, eval: float = 0.1, seed: int = 0, out_dir: str | Path | None = None,
               format: str = "auto", mapping: dict[str, str] | None = None, force: bool = False,
               near_duplicate_threshold: float = 0.8) -> SplitResult:
    """Split into ``STEM.train.jsonl`` and ``STEM.eval.jsonl``. ``eval`` below 1 is a fraction,
    1 or more a row count. Deterministic for a given file and seed; exact and near duplicates are
    grouped first and a group always lands on one side, so the eval set never leaks into training."""
    inp = Path(inp)
    if eval <= 0:
        raise TunewiseError(f"--eval must be positive, got {eval:g}", "e.g. --eval 0.1 (10%) or --eval 100 (rows)")
    if eval >= 1 and eval != int(eval):
        raise TunewiseError(f"--eval {eval:g} is neither a share below 1 nor a whole number of rows",
                            f"e.g. --eval {eval / 100:g} for {eval:g}%, or --eval {int(eval)} for that many rows")
    parsed = read_valid(inp, format, mapping, keep_raw=True)
    n = len(parsed)
    target = int(eval) if eval >= 1 else max(1, round(eval * n))
    if target >= n:
        raise TunewiseError(f"cannot put {target} of {n} rows in the eval set", "use a smaller --eval")
    out_dir = Path(out_dir) if out_dir else inp.parent
    train_path = out_dir / f"{inp.stem}.train.jsonl"
    eval_path = out_dir / f"{inp.stem}.eval.jsonl"
    for p in (train_path, eval_path):
        check_output_path(inp, p, force)
    member: dict[int, int] = {}
    clusters = _clusters(parsed, near_duplicate_threshold)
    for k, group in enumerate(clusters):
        for i in group:
            member[i] = k
    groups: list[list[int]] = [list(g) for g in clusters] + [[i] for i in range(n) if i not in member]
    groups.sort(key=lambda g: g[0])
    random.Random(seed).shuffle(groups)
    in_eval: set[int] = set()
    for g in groups:
        if len(in_eval) >= target:
            break
        if len(in_eval) + len(g) <= target:
            in_eval.update(g)
    train_rows = [p.raw for i, p in enumerate(parsed) if i not in in_eval]
    eval_rows = [p.raw for i, p in enumerate(parsed) if i in in_eval]
    write_output(train_path, serialize_rows(_json_safe(train_rows), train_path))
    write_output(eval_path, serialize_rows(_json_safe(eval_rows), eval_path))
    return SplitResult(str(train_path), str(eval_path), len(train_rows), len(eval_rows), len(clusters))


@dataclass
class DedupeResult:
    output: str
    rows_in: int
    rows_out: int
    removed: list[dict] = field(default_factory=list)  # {"source", "duplicate_of", "kind"}

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def dedupe_file(inp: str | Path, out: str | Path, threshold: float = 0.8, exact_only: bool = False,
                format: str = "auto", mapping: dict[str, str] | None = None, force: bool = False) -> DedupeResult:
    """Keep the first example of every group of exact (and, unless ``exact_only``, near) duplicates."""
    inp, out = Path(inp), Path(out)
    check_output_path(inp, out, force)
    parsed = read_valid(inp, format, mapping, keep_raw=True)
    finder = DuplicateFinder(threshold=threshold)
    for p in parsed:
        finder.add(p.conversation)
    groups = finder.groups()
    drop: dict[int, tuple[int, str]] = {}
    for g in groups.exact:
        for i in g[1:]:
            drop[i] = (g[0], "exact")
    if not exact_only:
        for g in groups.near:
            for i in g[1:]:
                drop.setdefault(i, (g[0], "near"))
    rows = [p.raw for i, p in enumerate(parsed) if i not in drop]
    write_output(out, serialize_rows(_json_safe(rows), out))
    removed = [{"source": parsed[i].source, "duplicate_of": parsed[j].source, "kind": kind}
               for i, (j, kind) in sorted(drop.items())]
    return DedupeResult(str(out), len(parsed), len(rows), removed)


@dataclass
class FillResult:
    output: str
    rows: int
    replaced: dict[str, int]

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def parse_values(items: list[str] | None) -> dict[str, str]:
    """``["name=Tara", "author=Acme Labs"]`` -> ``{"name": "Tara", "author": "Acme Labs"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise TunewiseError(f"--set {item!r} is not NAME=VALUE", "e.g. --set name=Tara --set author='Acme Labs'")
        k, v = item.split("=", 1)
        k = k.strip()
        if not re.fullmatch(r"[A-Za-z_][\w.\-]*", k):
            raise TunewiseError(f"--set {item!r}: {k!r} is not a placeholder name", "names look like {{name}} in the file")
        out[k] = v
    return out


def fill_file(inp: str | Path, out: str | Path, values: dict[str, str], force: bool = False,
              allow_missing: bool = False) -> FillResult:
    """Replace ``{{name}}`` placeholders in every string of every row. Refuses when the file holds a
    placeholder with no value given (so nothing is left half-filled) unless ``allow_missing``."""
    inp, out = Path(inp), Path(out)
    check_output_path(inp, out, force)
    rows: list[Any] = []
    for raw in iter_rows(inp):
        if raw.error is not None:
            raise TunewiseError(f"{raw.source}: {raw.error}", f"fix the file first; `tunewise data check {inp}` lists every problem")
        rows.append(raw.value)
    if not rows:
        raise TunewiseError(f"{inp}: no rows found", "the file is empty")
    found: dict[str, int] = {}
    replaced: dict[str, int] = {}

    def sub(match: re.Match) -> str:
        name = match.group(1)
        found[name] = found.get(name, 0) + 1
        if name in values:
            replaced[name] = replaced.get(name, 0) + 1
            return values[name]
        return match.group(0)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return PLACEHOLDER.sub(sub, v) if "{{" in v else v
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    filled = [walk(r) for r in rows]
    missing = sorted(set(found) - set(values))
    if missing and not allow_missing:
        raise TunewiseError(
            f"{inp} has placeholders with no value: {', '.join('{{' + m + '}}' for m in missing)}",
            "give each one: " + " ".join(f"--set {m}=..." for m in missing),
        )
    unused = sorted(set(values) - set(found))
    if unused and not found:
        raise TunewiseError(f"{inp} has no {{{{placeholders}}}} to fill", "nothing to do")
    write_output(out, serialize_rows(_json_safe(filled), out))
    return FillResult(str(out), len(filled), replaced)
