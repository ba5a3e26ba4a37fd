"""Shared pieces of the training tests (not a test module itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.config import RunConfig


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, shared_data) -> Path:
    """The first 24 rows of the LLaMA-Factory Alpaca demo (a real file, kept small for speed)."""
    rows = json.loads((shared_data / "alpaca_en_demo.json").read_text())[:24]
    path = tmp_path_factory.mktemp("data") / "alpaca24.json"
    path.write_text(json.dumps(rows))
    return path


def make_cfg(model_dir: Path, data: Path, out: Path, **overrides) -> RunConfig:
    base = dict(
        base_model=str(model_dir),
        datasets=[{"path": str(data)}],
        sequence_len=256,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=3,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        save_steps=2,
        output_dir=str(out),
    )
    base.update(overrides)
    return RunConfig(**base)


def cli(args) -> tuple[int, str]:
    """Run `tunewise ARGS` in-process: (exit code, stdout + stderr)."""
    import sys
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from tunewise.cli import main

    buf = StringIO()
    code = 0
    with redirect_stdout(buf), redirect_stderr(buf):
        try:
            main(args)
        except SystemExit as e:
            code = e.code or 0
    sys.stdout.flush()
    return code, buf.getvalue()


