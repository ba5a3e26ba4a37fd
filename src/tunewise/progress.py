"""One progress display for every long operation (`train`, `eval`, `compare`, `demo`, `rag index`).

On a terminal it is a Rich bar. Anywhere else (output piped to a file, a CI log, ``2>&1 | tee``) a
bar is never drawn, so the same calls print plain lines instead, at a steady cadence::

    training: 12/30 steps (40%) · 0.21 steps/s · loss 1.8123 · lr 9.7e-04 · 131 tok/s · elapsed 57s · ETA 1m26s
    training: done 30/30 steps in 2m21s · 0.21 steps/s · loss 1.6020 · 128 tok/s

A line is printed every ``TUNEWISE_PROGRESS_EVERY`` seconds (default 10; a quiet stretch, such as
one slow step, still gets its line) or every ``TUNEWISE_PROGRESS_ITEMS`` items (default ``10%`` of
the total; a number is a count, ``0`` turns the count off), whichever comes first, then one final
line. ``TUNEWISE_PROGRESS_EVERY=0`` prints a line on every item. ``TUNEWISE_PROGRESS`` picks the
display: ``auto`` (default: bar on a terminal, lines elsewhere), ``bar``, ``plain`` or ``off``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable

from tunewise.errors import TunewiseError

MODES = ("auto", "bar", "plain", "off")
DEFAULT_EVERY_S = 10.0
DEFAULT_ITEMS = "10%"


def _env_mode() -> str:
    mode = os.environ.get("TUNEWISE_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise TunewiseError(f"TUNEWISE_PROGRESS={mode!r} is not a progress mode", f"use one of: {', '.join(MODES)}")
    return mode


def _env_every_s() -> float:
    raw = os.environ.get("TUNEWISE_PROGRESS_EVERY", "").strip()
    if not raw:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise TunewiseError(f"TUNEWISE_PROGRESS_EVERY={raw!r} is not a number of seconds ≥ 0",
                            "e.g. TUNEWISE_PROGRESS_EVERY=30 (0 = a line for every item)")
    return value


def items_step(total: int | None, raw: str | None = None) -> int:
    """Items between two count-triggered lines (0 = no count trigger), from TUNEWISE_PROGRESS_ITEMS."""
    raw = (os.environ.get("TUNEWISE_PROGRESS_ITEMS", "") if raw is None else raw).strip() or DEFAULT_ITEMS
    try:
        if raw.endswith("%"):
            pct = float(raw[:-1])
            if not math.isfinite(pct) or pct < 0:
                raise ValueError
            return max(1, math.ceil(total * pct / 100)) if total and pct > 0 else 0
        count = int(raw)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise TunewiseError(f"TUNEWISE_PROGRESS_ITEMS={raw!r} is neither a count nor a percentage",
                            "e.g. TUNEWISE_PROGRESS_ITEMS=50 or TUNEWISE_PROGRESS_ITEMS=5% (0 = time only)") from None


def check_settings() -> None:
    """Raise the clear error for a bad TUNEWISE_PROGRESS* variable now, before slow work starts."""
    _env_mode()
    _env_every_s()
    items_step(100)


def fmt_duration(seconds: float | None) -> str:
    """``4.2s``, ``17s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def is_interactive(console) -> bool:
    """Whether a live bar can be drawn on ``console`` (a real terminal, or a notebook)."""
    return bool((console.is_terminal and not console.is_dumb_terminal) or getattr(console, "is_jupyter", False))


class ProgressTask:
    """Progress of one operation over ``total`` items (``unit`` is the singular noun).

    Use as a context manager (or :meth:`start` / :meth:`close`) and call :meth:`update` with
    ``advance=`` or ``completed=`` and any display fields (already formatted strings, shown in
    order: ``tps="41 tok/s"``; ``None`` or ``""`` hides one). Disabled, or on a quiet console, it
    does nothing.
    """

    def __init__(self, description: str, total: int | None, *, unit: str = "item", console=None,
                 enabled: bool = True, transient: bool = False, completed: int = 0,
                 order: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic,
                 heartbeat: bool = True):
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.description = description
        self.total = total
        self.unit = unit
        self.console = console
        self.transient = transient
        self.done = completed
        self.start_done = completed
        self.fields: dict[str, str] = {}
        self.order = order  # field names shown first, in this order (others follow as they came)
        self.clock = clock
        self.heartbeat = heartbeat  # a line every every_s even with no item done (tests with a fake clock turn it off)
        mode = _env_mode() if enabled else "off"
        if console.quiet:
            mode = "off"
        elif mode == "auto":
            mode = "bar" if is_interactive(console) else "plain"
        self.mode = mode
        self.every_s = _env_every_s() if mode == "plain" else DEFAULT_EVERY_S
        self.every_items = items_step(total) if mode == "plain" else 0
        self._t0: float | None = None
        self._done_at: float | None = None  # when the last item was done
        self._per_item: bool | None = None  # show the rate as seconds per item (slow items)
        self._last_emit = 0.0
        self._last_emit_done = completed
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._bar_task = None
        self._closed = False

    # ------------------------------------------------------------------ life cycle
    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def start(self) -> "ProgressTask":
        if self._t0 is not None or not self.enabled:
            return self
        self._t0 = self._last_emit = self._done_at = self.clock()
        if self.mode == "bar":
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(
                TextColumn("{task.description}", style="bold", markup=False), BarColumn(bar_width=24),
                MofNCompleteColumn(), TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(compact=True),
                console=self.console, transient=self.transient)
            self._bar.start()
            self._bar_task = self._bar.add_task(self.description, total=self.total, completed=self.done,
                                                info=self._info())
        elif self.every_s > 0 and self.heartbeat:
            self._thread = threading.Thread(target=self._heartbeat, name="tunewise-progress", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> "ProgressTask":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(failed=exc_type is not None)
        return False

    def close(self, failed: bool = False) -> None:
        """Stop the bar, or print the final line (``done …``, or ``stopped at …`` when unfinished)."""
        if self._closed or self._t0 is None:
            self._closed = True
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.update(self._bar_task, completed=self.done, info=self._info())
            self._bar.stop()
            return
        finished = not failed and (self.total is None or self.done >= self.total)
        self._emit(final=True, finished=finished)

    # ------------------------------------------------------------------ updates
    def update(self, completed: int | None = None, advance: int = 0, **fields: str | None) -> None:
        if not self.enabled or self._closed:
            return
        if self._t0 is None:
            self.start()
        with self._lock:
            before = self.done
            self.done = completed if completed is not None else self.done + advance
            if self.done != before:
                self._done_at = self.clock()
            for key, value in fields.items():
                if value:
                    self.fields[key] = value
                else:
                    self.fields.pop(key, None)
        if self._bar is not None:
            self._bar.update(self._bar_task, completed=self.done, info=self._info())
            return
        if self.total is not None and self.done >= self.total:
            return  # the final line says it
        now = self.clock()
        due_time = now - self._last_emit >= self.every_s
        due_items = self.every_items > 0 and self.done - self._last_emit_done >= self.every_items
        if (due_time or due_items) and self.done != self._last_emit_done:
            self._emit()

    def _heartbeat(self) -> None:
        """A line every ``every_s`` seconds even while one item takes longer than that."""
        while True:
            wait = max(0.05, self._last_emit + self.every_s - self.clock())
            if self._stop.wait(wait):
                return
            if self.clock() - self._last_emit >= self.every_s and not self._closed:
                self._emit()

    # ------------------------------------------------------------------ text
    def _shown(self) -> list[str]:
        first = [self.fields[k] for k in self.order if k in self.fields]
        return first + [v for k, v in self.fields.items() if k not in self.order]

    def _info(self) -> str:
        """The bar's text column: the rate, then the caller's fields."""
        _, rate_text = self._rate()
        return " · ".join([rate_text, *self._shown()] if rate_text else self._shown())

    def _rate(self) -> tuple[float | None, str]:
        """Items per second up to the last item done (a slow item in progress does not drag it
        down), as ``0.52 steps/s`` or, for slow items, ``12.3 s/step`` (chosen once, then kept)."""
        n = self.done - self.start_done
        spent = (self._done_at or 0.0) - (self._t0 or 0.0)
        if n <= 0 or spent <= 0:
            return None, ""
        rate = n / spent
        if self._per_item is None:
            self._per_item = rate < 0.5
        if self._per_item:
            return rate, f"{spent / n:.1f} s/{self.unit}"
        return rate, f"{rate:.2f} {self.unit}s/s" if rate < 10 else f"{rate:,.0f} {self.unit}s/s"

    def _line(self, final: bool = False, finished: bool = True) -> str:
        now = self.clock()
        elapsed = max(now - (self._t0 or now), 0.0)
        rate, rate_text = self._rate()
        total = f"/{self.total:,}" if self.total is not None else ""
        parts: list[str] = []
        if final:
            verb = "done" if finished else "stopped at"
            head = f"{self.description}: {verb} {self.done:,}{total} {self.unit}s in {fmt_duration(elapsed)}"
        else:
            pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            head = f"{self.description}: {self.done:,}{total} {self.unit}s{pct}"
        parts.append(head)
        if rate_text:
            parts.append(rate_text)
        parts.extend(self._shown())
        if not final:
            parts.append(f"elapsed {fmt_duration(elapsed)}")
            if self.total is not None:
                eta = None
                if rate:
                    left = max(self.total - self.done, 0)
                    # what is left at the rate so far, less the time already spent on the item in
                    # progress; an item running late still counts a tenth of an item
                    eta = max(left / rate - (now - (self._done_at or now)), (left - 0.9) / rate, 0.0)
                parts.append(f"ETA {fmt_duration(eta)}")
        return " · ".join(parts)

    def _emit(self, final: bool = False, finished: bool = True) -> None:
        with self._lock:
            line = self._line(final, finished)
            self._last_emit = self.clock()
            self._last_emit_done = self.done
            self.console.print(line, markup=False, highlight=False, soft_wrap=True, emoji=False)
            file = self.console.file
            if hasattr(file, "flush"):
                file.flush()


def progress(description: str, total: int | None, *, unit: str = "item", console=None, enabled: bool = True,
             transient: bool = False, completed: int = 0, order: tuple[str, ...] = ()) -> ProgressTask:
    """A :class:`ProgressTask` (a context manager): ``with progress("embedding", n, unit="chunk") as p:``."""
    return ProgressTask(description, total, unit=unit, console=console, enabled=enabled, transient=transient,
                        completed=completed, order=order)
