"""What a run shows and records while it trains: progress (a bar, or lines in a log), metrics.jsonl, loss.png."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from tunewise.paths import atomic_write_bytes
from tunewise.train.run_dir import read_metrics

PLOT_EVERY_S = 30.0


def plot_loss(out: Path, title: str = "") -> Path | None:
    """Draw train (and eval) loss against step from metrics.jsonl into loss.png."""
    rows = read_metrics(out)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and math.isfinite(r["loss"])]
    evals = [(r["step"], r["eval_loss"]) for r in rows
             if r.get("eval_loss") is not None and math.isfinite(r["eval_loss"])]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1.4)
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="#d62728", marker="o", linewidth=1.4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per trained token)")
    ax.set_title(title or f"Training loss — {out.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "loss.png", buf.getvalue())
    return out / "loss.png"


class MetricsCallback(TrainerCallback):
    """Append every log (train and eval) to metrics.jsonl; refresh loss.png every PLOT_EVERY_S."""

    def __init__(self, out: Path, title: str = ""):
        self.out = out
        self.title = title
        self.path = out / "metrics.jsonl"
        self._last_plot = 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "tokens",
                    "trained_tokens", "elapsed_s"):
            if key in logs:
                value = logs[key]
                row["lr" if key == "learning_rate" else key] = float(value) if value is not None else None
        if len(row) == 2:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        now = time.monotonic()
        if "eval_loss" in logs or now - self._last_plot > PLOT_EVERY_S:
            self._last_plot = now
            plot_loss(self.out, self.title)

    def on_train_begin(self, args, state, control, **kwargs):
        # the first refresh comes PLOT_EVERY_S into training, not at step 1 (matplotlib's import
        # alone takes ~0.5 s); train() draws the final plot after the training loop
        self._last_plot = time.monotonic()


class ProgressCallback(TrainerCallback):
    """Training progress through :mod:`tunewise.progress`: a Rich bar on a terminal, plain lines in
    a log. Shows optimizer steps done/total, steps/s, loss (and eval loss), learning rate, trained
    tokens/s over this session, elapsed and ETA."""

    def __init__(self, console=None, description: str = "training"):
        from rich.console import Console

        from tunewise.progress import check_settings

        check_settings()
        self.console = console or Console(stderr=True)
        self.description = description
        self.task = None
        self._t0 = 0.0
        self._tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from tunewise.progress import ProgressTask

        self.task = ProgressTask(self.description, state.max_steps, unit="step", console=self.console,
                                 completed=state.global_step, order=("loss", "eval", "lr", "tps")).start()
        self._t0 = time.perf_counter()
        self._tokens0 = state.num_input_tokens_seen

    def _tps(self, args, state) -> str:
        seconds = time.perf_counter() - self._t0
        tokens = (state.num_input_tokens_seen - self._tokens0) * max(args.world_size, 1)
        return f"{tokens / seconds:,.0f} tok/s" if seconds > 0 and tokens > 0 else ""

    def on_step_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.task.update(completed=state.global_step, tps=self._tps(args, state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.task is None or not logs:
            return
        fields = {}
        if "loss" in logs:
            fields["loss"] = f"loss {logs['loss']:.4f}"
        if "eval_loss" in logs:
            fields["eval"] = f"eval loss {logs['eval_loss']:.4f}"
        if "learning_rate" in logs:
            fields["lr"] = f"lr {logs['learning_rate']:.1e}"
        fields["tps"] = self._tps(args, state)
        self.task.update(completed=state.global_step, **fields)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self, failed: bool = False):
        if self.task is not None:
            self.task.close(failed=failed)
            self.task = None


RichProgressCallback = ProgressCallback  # the name train() uses (from when it was only a Rich bar)
