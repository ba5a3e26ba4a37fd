"""`tunewise train` killed with SIGKILL mid-run, then `--resume`: the result matches an
uninterrupted run with the same seed (same steps, final loss within 1%)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_helpers import cli as _cli, small_data  # noqa: F401  (fixture)


def _config(path: Path, model: Path, data: Path, out: Path) -> Path:
    path.write_text(
        f"base_model: {model}\n"
        f"datasets:\n  - path: {data}\n"
        "sequence_len: 128\nmicro_batch_size: 2\ngradient_accumulation_steps: 1\n"
        "max_steps: 8\nsave_steps: 2\nlearning_rate: 0.005\nlora_dropout: 0.1\n"
        "val_set_size: 0.15\neval_steps: 3\n"
        f"output_dir: {out}\n"
    )
    return path


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_model_dir, small_data, tmp_path):  # noqa: F811
    killed_out = tmp_path / "killed"
    cfg_killed = _config(tmp_path / "killed.yaml", tiny_model_dir, small_data, killed_out)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tunewise.cli import main; main()", "train", str(cfg_killed), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy(),
    )
    ckpts = killed_out / "checkpoints"
    deadline = time.monotonic() + 180
    try:
        # Kill as soon as the first checkpoint is complete (training is mid-way, maybe mid-save).
        while not (ckpts / "checkpoint-2" / "tunewise_complete.json").is_file():
            assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_out / "adapter").exists() and not (killed_out / "summary.json").exists()

    # Resuming without --resume is refused; with --resume it continues from the newest complete checkpoint.
    code, text = _cli(["train", str(cfg_killed)])
    assert code == 1 and "--resume" in text
    code, text = _cli(["train", str(cfg_killed), "--resume", "--json"])
    assert code == 0, text
    resumed = json.loads(text[text.index("{"):])

    straight_out = tmp_path / "straight"
    cfg_straight = _config(tmp_path / "straight.yaml", tiny_model_dir, small_data, straight_out)
    code, text = _cli(["train", str(cfg_straight), "--json"])
    assert code == 0, text
    straight = json.loads(text[text.index("{"):])

    assert resumed["steps"] == straight["steps"] == 8
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=0.01)
    assert resumed["eval_loss"] == pytest.approx(straight["eval_loss"], rel=0.01)
    # Step-by-step losses agree too (data order and RNG state were restored), and metrics.jsonl
    # holds each step once.
    def losses(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    a, b = losses(killed_out), losses(straight_out)
    assert [s for s, _ in a] == list(range(1, 9)) == [s for s, _ in b]
    for (_, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, rel=0.01)
