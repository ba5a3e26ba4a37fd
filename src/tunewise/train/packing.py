"""Padding-free batches: examples are packed into rows of at most ``sequence_len`` tokens and every
micro-batch is flattened into one row whose ``position_ids`` restart at 0 for each example.

transformers turns restarting ``position_ids`` (with no ``attention_mask``) into a block-diagonal
causal mask for sdpa/eager attention, and flash-attention uses them as sequence boundaries, so packed
examples never attend to each other (proved in tests/test_train_packing.py). No token is padding.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Sequence

from tunewise.train.attention import SEGMENTS_KEY

IGNORE = -100


def usable(example) -> bool:
    """An example can be trained on: at least two tokens and at least one trained label after
    the first (the rule :func:`tunewise.data.tokenize.skip_reason` names the reasons of)."""
    from tunewise.data.tokenize import learnable

    return learnable(example)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of examples grouped into rows of <= ``capacity``
    tokens. Deterministic for the same lengths, so resumed runs see the same rows."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        n = min(lengths[i], capacity)
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            space, row = free.pop(pos)
            rows[row].append(i)
            space -= n
        else:
            rows.append([i])
            row, space = len(rows) - 1, capacity - n
        if space > 0:
            bisect.insort(free, (space, row))
    for row in rows:
        row.sort()
    rows.sort(key=lambda r: r[0])
    return rows


class RowDataset:
    """A map-style dataset of rows; each row is a list of tokenized examples trained together."""

    def __init__(self, examples: list, sequence_len: int, packing: bool):
        self.examples = examples
        if packing:
            self.rows = pack_rows([len(e.input_ids) for e in examples], sequence_len)
        else:
            self.rows = [[i] for i in range(len(examples))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int) -> list:
        return [self.examples[i] for i in self.rows[idx]]

    @property
    def n_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


@dataclass
class PaddingFreeCollator:
    """Flatten a micro-batch of rows into a single ``[1, T]`` row.

    Returns ``input_ids``, ``position_ids`` (restarting per example), ``shift_labels``: the label
    each position predicts (the next token, or -100), so an example's last token never predicts the
    first token of the next example, and ``tunewise_segments``: each example's (start, end) in the
    row, for the per-example attention of :mod:`tunewise.train.attention`.
    """

    def __call__(self, rows: list[list]) -> dict:
        import torch

        ids: list[int] = []
        pos: list[int] = []
        shift: list[int] = []
        segments: list[tuple[int, int]] = []
        for row in rows:
            for ex in row:
                n = len(ex.input_ids)
                segments.append((len(ids), len(ids) + n))
                ids.extend(ex.input_ids)
                pos.extend(range(n))
                shift.extend(ex.labels[1:])
                shift.append(IGNORE)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            "shift_labels": torch.tensor([shift], dtype=torch.long),
            SEGMENTS_KEY: tuple(segments),
        }


def split_row(batch: dict, max_tokens: int) -> list[dict]:
    """Split a collated row into pieces of at most ``max_tokens`` tokens, at example boundaries.

    An example longer than ``max_tokens`` is a piece of its own. The pieces' losses add up to the
    row's (the loss is a sum over trained tokens), so running them one after the other and
    accumulating gradients gives the row's gradients with the activation memory of one piece.
    """
    segments = batch.get(SEGMENTS_KEY)
    if not segments or batch["input_ids"].shape[0] != 1 or segments[-1][1] - segments[0][0] <= max_tokens:
        return [batch]
    groups: list[list[tuple[int, int]]] = [[]]
    for s, e in segments:
        if groups[-1] and e - groups[-1][0][0] > max_tokens:
            groups.append([])
        groups[-1].append((s, e))
    pieces = []
    for group in groups:
        a, b = group[0][0], group[-1][1]
        piece = {k: v[:, a:b] for k, v in batch.items() if k != SEGMENTS_KEY}
        piece[SEGMENTS_KEY] = tuple((s - a, e - a) for s, e in group)
        pieces.append(piece)
    return pieces


def split_eval(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of ``items`` (at least one when fraction > 0) with a seeded shuffle."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_eval = min(len(items) - 1, max(1, round(len(items) * fraction)))
    held = set(idx[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
