"""What training sees: each example rendered with the chat template, split into segments that are
trained, masked, special tokens (end-of-turn) or cut off by ``sequence_len``."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tunewise.data.formats import iter_conversations
from tunewise.data.tokenize import _encode_batch, _example, _Template, render_conversation
from tunewise.errors import TunewiseError


@dataclass
class Segment:
    text: str
    trained: bool
    special: bool
    cut: bool = False  # beyond sequence_len: dropped by truncation


@dataclass
class ShownExample:
    source: str
    segments: list[Segment]
    tokens: int
    trainable: int
    truncated: bool


def show_examples(path: str | Path, tokenizer, n: int = 3, sequence_len: int = 2048, train_on: str = "assistant",
                  chat_template: str | None = None, format: str = "auto", mapping: dict[str, str] | None = None,
                  start: int = 0) -> list[ShownExample]:
    """The first ``n`` valid examples (from ``start``) as training will see them."""
    out: list[ShownExample] = []
    tpl = None
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    rows = (p for p in iter_conversations(path, format, mapping) if p.conversation is not None)
    for pr in islice(rows, start, start + n):
        conv = pr.conversation
        if tpl is None and not conv.is_text:
            tpl = _Template(tokenizer, chat_template)
            for t in tpl.specials:
                tid = tokenizer.convert_tokens_to_ids(t)
                if isinstance(tid, int):
                    specials.add(tid)
        r = render_conversation(conv, tokenizer, train_on, chat_template, _tpl=tpl)
        enc = _encode_batch(tokenizer, [r.text], add_special_tokens=r.add_special_tokens)[0]
        ex = _example(enc, r, tokenizer, 10**9)
        segs: list[Segment] = []
        offsets = list(enc.offsets)
        for k, tid in enumerate(ex.input_ids):
            if k < len(offsets):
                s, e = offsets[k]
                text = r.text[s:e]
                if k + 1 < len(offsets) and offsets[k + 1][0] > e:  # keep characters between tokens
                    text = r.text[s:offsets[k + 1][0]]
            else:
                text = tokenizer.convert_ids_to_tokens(tid) or ""
            seg = Segment(text, ex.labels[k] != -100, tid in specials, cut=k >= sequence_len)
            prev = segs[-1] if segs else None
            if prev and (prev.trained, prev.special, prev.cut) == (seg.trained, seg.special, seg.cut) and not seg.special:
                prev.text += seg.text
            else:
                segs.append(seg)
        kept = ex.labels[:sequence_len]
        out.append(ShownExample(pr.source, segs, len(ex.input_ids), sum(1 for x in kept if x != -100),
                                len(ex.input_ids) > sequence_len))
    if not out:
        raise TunewiseError(f"{path}: no valid examples to show", f"run `tunewise data check {path}`")
    return out
