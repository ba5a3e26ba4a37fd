"""Writing conversations in each format, and ``tunewise data convert``.

Conversion is lossless where the target can hold the information; whatever it cannot hold is
listed, per example, in :attr:`ConvertResult.dropped` (never silently lost). Round trips
Alpaca -> OpenAI -> Alpaca and ShareGPT -> OpenAI -> ShareGPT give back identical rows: the
Alpaca instruction/input split travels as two text parts of the user message, and a ShareGPT
function call keeps its arguments text byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tunewise.data.formats import iter_conversations
from tunewise.data.tokenize import _call_text
from tunewise.data.types import Conversation
from tunewise.errors import TunewiseError
from tunewise.paths import atomic_write_bytes

TARGETS = ("alpaca", "sharegpt", "openai", "messages")


def _tools_list(conv: Conversation) -> list | None:
    if not conv.tools:
        return None
    try:
        tools = json.loads(conv.tools)
    except json.JSONDecodeError:
        return None
    if not isinstance(tools, list):
        tools = [tools]
    return tools or None


def _default_train(role: str) -> bool:
    return role == "assistant"


def _parts(conv: Conversation, i: int) -> list[str] | None:
    parts = conv.meta.get("parts", {})
    return parts.get(i) if isinstance(parts, dict) else None


def to_alpaca(conv: Conversation, dropped: list[str]) -> dict | None:
    """Alpaca row, or None (with the reason in ``dropped``) when the example cannot be one."""
    msgs = conv.messages
    if conv.is_text:
        dropped.append("raw text example skipped (Alpaca holds prompt/response pairs)")
        return None
    if any(m.role == "tool" or m.tool_calls for m in msgs) or _tools_list(conv):
        dropped.append("tool definitions/calls/results: example skipped (Alpaca cannot hold them)")
        return None
    body = list(enumerate(msgs))
    system = None
    if body and body[0][1].role == "system":
        system = body[0][1].content
        body = body[1:]
    if body and body[-1][1].role == "user":
        dropped.append("trailing user message without a response")
        body = body[:-1]
    pairs = []
    for k in range(0, len(body), 2):
        chunk = body[k:k + 2]
        if len(chunk) != 2 or chunk[0][1].role != "user" or chunk[1][1].role != "assistant":
            dropped.append("role order is not user/assistant pairs: example skipped")
            return None
        pairs.append(chunk)
    if not pairs:
        dropped.append("no user/assistant pair: example skipped")
        return None
    for i, m in enumerate(msgs):
        if m.train is not None and m.train != _default_train(m.role):
            dropped.append(f"per-message train flag on message {i} ({m.role}, train={m.train})")
    (ui, user), (_, answer) = pairs[-1]
    parts = _parts(conv, ui)
    if parts and len(parts) == 2:
        instruction, inp = parts
    else:
        instruction, inp = user.content, ""
    row: dict[str, Any] = {"instruction": instruction, "input": inp, "output": answer.content}
    if system is not None:
        row["system"] = system
    if len(pairs) > 1:
        row["history"] = [[u.content, a.content] for (_, u), (_, a) in pairs[:-1]]
    for (i, _u), _a in pairs[:-1]:
        if _parts(conv, i):
            dropped.append(f"content parts of message {i} joined into one history prompt")
    row.update(conv.meta.get("extra", {}))
    return row


def to_sharegpt(conv: Conversation, dropped: list[str], tools_key: bool = False) -> dict | None:
    if conv.is_text:
        dropped.append("raw text example skipped (ShareGPT holds conversations)")
        return None
    turns: list[dict] = []
    system = None
    for i, m in enumerate(conv.messages):
        if m.role == "system" and i == 0:
            system = m.content
            continue
        if m.train is not None and m.train != _default_train(m.role):
            dropped.append(f"per-message train flag on message {i} ({m.role}, train={m.train})")
        if _parts(conv, i):
            dropped.append(f"content parts of message {i} joined into one turn")
        if m.role == "assistant" and m.tool_calls:
            if m.content:
                turns.append({"from": "gpt", "value": m.content})
                dropped.append(f"message {i}: text and tool call split into two turns")
            turns.append({"from": "function_call", "value": _call_text(m.tool_calls)})
            continue
        role = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}[m.role]
        turns.append({"from": role, "value": m.content})
    row: dict[str, Any] = {"conversations": turns}
    if system is not None:
        row["system"] = system
    tools = _tools_list(conv)
    if tools is not None:
        row["tools"] = conv.tools if conv.tools and conv.meta.get("format") == "sharegpt" else json.dumps(tools)
    elif tools_key:
        row["tools"] = conv.tools if conv.tools is not None else "[]"
    row.update(conv.meta.get("extra", {}))
    return row


def to_openai(conv: Conversation, dropped: list[str]) -> dict | None:
    if conv.is_text:
        dropped.append("raw text example skipped (OpenAI chat format holds conversations)")
        return None
    out: list[dict] = []
    last_call_id = None
    for i, m in enumerate(conv.messages):
        d: dict[str, Any] = {"role": m.role}
        parts = _parts(conv, i)
        if parts:
            d["content"] = [{"type": "text", "text": p} for p in parts]
        elif m.content or not m.tool_calls:
            d["content"] = m.content
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.get("id") or f"call_{i}_{j}", "type": "function",
                                "function": {"name": c["function"]["name"], "arguments": c["function"].get("arguments", "{}")}}
                               for j, c in enumerate(m.tool_calls)]
            last_call_id = d["tool_calls"][-1]["id"]
        if m.role == "tool" and last_call_id:
            d["tool_call_id"] = last_call_id
        if m.train is not None:
            if m.role == "assistant":
                d["weight"] = int(m.train)
            elif m.train:
                dropped.append(f"train flag on {m.role} message {i} (OpenAI weights only assistant messages)")
        out.append(d)
    row: dict[str, Any] = {"messages": out}
    tools = _tools_list(conv)
    if tools:
        row["tools"] = [t if isinstance(t, dict) and t.get("type") == "function" and "function" in t
                        else {"type": "function", "function": t} for t in tools]
    extra = conv.meta.get("extra", {})
    if extra:
        dropped.append(f"extra keys {', '.join(sorted(extra))} (OpenAI rows hold only messages and tools)")
    return row


def to_messages(conv: Conversation, dropped: list[str]) -> dict | None:
    """LLaMA-Factory v1: typed content parts and a loss_weight on every message."""
    if conv.is_text:
        dropped.append("raw text example skipped (messages format holds conversations)")
        return None
    out = []
    for i, m in enumerate(conv.messages):
        parts = _parts(conv, i) or ([m.content] if m.content or not m.tool_calls else [])
        content = [{"type": "text", "value": p} for p in parts]
        for c in m.tool_calls or []:
            content.append({"type": "tool_call", "value": _call_text([c])})
        train = m.train if m.train is not None else _default_train(m.role)
        out.append({"role": m.role, "content": content, "loss_weight": 1.0 if train else 0.0})
    row: dict[str, Any] = {"messages": out}
    if conv.tools and _tools_list(conv):
        row["tools"] = conv.tools
    row.update(conv.meta.get("extra", {}))
    return row


def convert_conversations(convs: Iterable[Conversation], to: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows in the target format and ``(source, what was dropped)`` for everything not carried over."""
    if to not in TARGETS:
        raise TunewiseError(f"unknown target format {to!r}", f"use one of {', '.join(TARGETS)}")
    convs = list(convs)
    tools_key = to == "sharegpt" and any(_tools_list(c) for c in convs)
    rows: list[dict] = []
    dropped: list[tuple[str, str]] = []
    for conv in convs:
        lost: list[str] = []
        if to == "alpaca":
            row = to_alpaca(conv, lost)
        elif to == "sharegpt":
            row = to_sharegpt(conv, lost, tools_key)
        elif to == "openai":
            row = to_openai(conv, lost)
        else:
            row = to_messages(conv, lost)
        dropped += [(conv.source, what) for what in lost]
        if row is not None:
            rows.append(row)
    return rows, dropped


def serialize_rows(rows: list[Any], path: Path) -> bytes:
    """JSON array (indent 2, as LLaMA-Factory ships its files) for .json; one row per line for .jsonl."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return (json.dumps(rows, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    raise TunewiseError(f"{path}: output must end in .json or .jsonl", "pick a .jsonl (one row per line) or .json name")


def write_output(path: Path, data: bytes) -> None:
    """Write atomically, with the permissions a normal file gets (umask), not the temp file's 0600."""
    import os

    atomic_write_bytes(path, data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_output_path(inp: Path, out: Path, force: bool) -> None:
    """Never overwrite the input; overwrite another existing file only with --force."""
    inp, out = Path(inp), Path(out)
    if out.exists() and (out.resolve() == inp.resolve() or out.samefile(inp)):
        raise TunewiseError(f"{out} is the input file", "write to a new file; tunewise never overwrites its input")
    if out.resolve() == inp.resolve():
        raise TunewiseError(f"{out} is the input file", "write to a new file; tunewise never overwrites its input")
    if out.exists() and not force:
        raise TunewiseError(f"{out} already exists", "pass --force to replace it, or choose another name")
    if out.exists() and out.is_dir():
        raise TunewiseError(f"{out} is a directory", "give a file name ending in .json or .jsonl")


def read_valid(path: Path, format: str = "auto", mapping: dict[str, str] | None = None,
               keep_raw: bool = False, validate: bool = True) -> list:
    """Every row of a file as ParsedRow; refuses files with errors (listing the first ones)."""
    rows = list(iter_conversations(path, format, mapping, validate=validate, keep_raw=keep_raw))
    bad = [r for r in rows if r.error is not None]
    if bad:
        shown = "; ".join(f"{r.source}: {r.error}" for r in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise TunewiseError(f"{path} has {len(bad)} bad row(s): {shown}{more}",
                            f"fix them first; `tunewise data check {path}` lists them all")
    if not rows:
        raise TunewiseError(f"{path}: no examples found", "the file is empty")
    return rows


@dataclass
class ConvertResult:
    input: str
    output: str
    to: str
    rows_in: int
    rows_out: int
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "to": self.to, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "dropped": [{"source": s, "what": w} for s, w in self.dropped]}


def convert_file(inp: str | Path, out: str | Path, to: str, format: str = "auto",
                 mapping: dict[str, str] | None = None, force: bool = False) -> ConvertResult:
    """Convert a dataset file to another format, written atomically; see the module doc."""
    inp, out = Path(inp), Path(out)
    if to not in TARGETS:
        raise TunewiseError(f"unknown target format {to!r}", f"use one of {', '.join(TARGETS)}")
    check_output_path(inp, out, force)
    parsed = read_valid(inp, format, mapping)
    rows, dropped = convert_conversations([p.conversation for p in parsed], to)
    if not rows:
        raise TunewiseError(f"no example of {inp} can be written as {to}", dropped[0][1] if dropped else None)
    write_output(out, serialize_rows(rows, out))
    return ConvertResult(str(inp), str(out), to, len(parsed), len(rows), dropped)
