"""The run directory: what a training run leaves behind, written so a crash never damages it.

Layout::

    output_dir/
      config.yaml            resolved config
      versions.json          package versions and hardware
      data_fingerprint.json  sha256 of every data file + example/token counts
      metrics.jsonl          one JSON line per logged step / evaluation
      loss.png               train + eval loss curve
      checkpoints/checkpoint-N/   resumable state (complete ones hold tunewise_complete.json)
      adapter/ or model/     the result (PEFT adapter + tokenizer, or full weights + tokenizer)
      summary.json           the TrainResult
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from tunewise.errors import TunewiseError
from tunewise.paths import atomic_write_text, replace_dir

CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = "tunewise_complete.json"
KEEP_CHECKPOINTS = 2
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


SUMMARY = "summary.json"
ADAPTER_DIR = "adapter"  # LoRA / QLoRA result
MODEL_DIR = "model"  # full fine-tuning result


def result_dir(run: Path) -> Path | None:
    """Where a run's result lies: ``adapter/`` (LoRA, QLoRA) or ``model/`` (full fine-tuning), or
    ``run`` itself when it is a bare PEFT adapter directory; ``None`` when there is none."""
    run = Path(run)
    if (run / MODEL_DIR / "config.json").is_file():
        return run / MODEL_DIR
    for cand in (run / ADAPTER_DIR, run):
        if (cand / "adapter_config.json").is_file():
            return cand
    return None


def is_finished(run: Path) -> bool:
    """A training run that completed: it wrote its result (adapter or full model) and summary.json
    (the last file `tunewise train` writes), whatever its method."""
    run = Path(run)
    return (run / SUMMARY).is_file() and result_dir(run) is not None


def read_summary(run: Path) -> dict[str, Any]:
    """What a run recorded: ``summary`` (summary.json, ``{}`` when absent or unreadable) and
    ``loss_curve`` (step, loss, eval_loss rows of metrics.jsonl; a line cut by a kill is skipped)."""
    run = Path(run)
    out: dict[str, Any] = {"run_dir": str(run), "summary": {}}
    try:
        summary = json.loads((run / SUMMARY).read_text(encoding="utf-8"))
        out["summary"] = summary if isinstance(summary, dict) else {}
    except (OSError, json.JSONDecodeError):
        pass
    out["loss_curve"] = [{k: r[k] for k in ("step", "loss", "eval_loss") if k in r} for r in read_metrics(run)
                         if isinstance(r, dict) and "step" in r and ("loss" in r or "eval_loss" in r)]
    return out


def prepare_output_dir(out: Path, resume: bool, overwrite: bool, protected: Iterable[Path] = ()) -> None:
    """Refuse to silently reuse a non-empty directory; ``overwrite`` empties it (never a data dir)."""
    if out.exists() and not out.is_dir():
        raise TunewiseError(f"output_dir {out} is a file", "set output_dir to a directory path")
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and not resume and not overwrite:
        raise TunewiseError(
            f"output_dir {out} already exists and is not empty",
            "pass --resume to continue that run, --overwrite to replace it, or choose another output_dir",
        )
    if non_empty and overwrite and not resume:
        _check_safe_to_delete(out, protected)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _check_safe_to_delete(out: Path, protected: Iterable[Path]) -> None:
    target = out.resolve()
    danger = {Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()}
    reasons = []
    if target in danger:
        reasons.append("it is /, your home or the current directory")
    for marker in (".git", "pyproject.toml", "setup.py"):
        if (target / marker).exists():
            reasons.append(f"it holds {marker} (looks like a project, not a run)")
    for p in protected:
        try:
            rp = Path(p).expanduser().resolve()
        except OSError:
            continue
        if rp == target or target in rp.parents:
            reasons.append(f"it contains the input {p}")
    if reasons:
        raise TunewiseError(
            f"refusing to --overwrite {out}: {reasons[0]}", "set output_dir to a dedicated run directory"
        )


def checkpoint_step(path: Path) -> int | None:
    m = _CKPT_RE.match(path.name)
    return int(m.group(1)) if m else None


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint without its marker is ignored)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p))


def latest_checkpoint(out: Path) -> Path | None:
    done = complete_checkpoints(out)
    return done[-1] if done else None


def clean_partial(out: Path) -> None:
    """Remove staging directories and incomplete checkpoints left by a killed process."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(".tmp-") or (p.is_dir() and checkpoint_step(p) is not None
                                          and not (p / COMPLETE_MARKER).is_file()):
            shutil.rmtree(p, ignore_errors=True)
    for p in out.iterdir():
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def publish_checkpoint(staged: Path, final: Path, meta: dict[str, Any]) -> None:
    """Mark a fully written checkpoint complete, then rename it into place (atomic on POSIX)."""
    _fsync_tree(staged)
    (staged / COMPLETE_MARKER).write_text(json.dumps(meta, indent=2))
    _fsync_tree(staged)
    replace_dir(staged, final)  # a stale copy of the same step (e.g. after resume) is replaced
    _fsync_path(final.parent)


def rotate_checkpoints(out: Path, keep: int = KEEP_CHECKPOINTS) -> None:
    done = complete_checkpoints(out)
    for p in done[: max(0, len(done) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            _fsync_path(p)
    _fsync_path(root)


def _fsync_path(path: Path) -> None:
    """fsync a file or directory by path; best effort (some filesystems refuse directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Files beside the run
# ---------------------------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def package_versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("tunewise", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes",
                 "unsloth", "flash-attn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    out["cpu_count"] = os.cpu_count()
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: ignore it
            continue
    return rows


def truncate_metrics(out: Path, step: int) -> list[dict]:
    """Keep only metric lines up to ``step`` (what a resumed run will log again is dropped)."""
    rows = [r for r in read_metrics(out) if r.get("step", 0) <= step]
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows
