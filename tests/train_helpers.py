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




def train_identity_run(base_model: str, shared_data: Path, tmp_path: Path, **overrides):
    """LoRA on the first 20 rows of LLaMA-Factory's identity data with the placeholders filled
    (name Zephyrine, author Acme Labs): a few minutes on 2 CPU cores. Returns the TrainResult."""
    from tunewise.data.ops import fill_file
    from tunewise.train import train

    filled = tmp_path / "identity.json"
    fill_file(shared_data / "identity.json", filled, {"name": "Zephyrine", "author": "Acme Labs"})
    # The first 20 rows are the identity questions; a subset keeps this under a few minutes on 2 CPU cores.
    subset = tmp_path / "identity20.json"
    subset.write_text(json.dumps(json.loads(filled.read_text())[:20]))
    cfg = dict(base_model=base_model, datasets=[{"path": str(subset)}], sequence_len=256, packing=True,
               micro_batch_size=1, gradient_accumulation_steps=1, num_epochs=4, learning_rate=1e-3,
               warmup_ratio=0.05, output_dir=str(tmp_path / "run"))
    cfg.update(overrides)
    return train(RunConfig(**cfg), progress=False)
