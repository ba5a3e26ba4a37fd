"""Reading dataset files: Alpaca, ShareGPT, OpenAI chat, LLaMA-Factory v1 messages, plain text,
CSV and Parquet. Files are streamed row by row; every problem is reported with its file and line
(or row) and reading goes on, so ``tunewise data check`` can list every bad line at once.

Layers:
- :func:`iter_rows` turns a file into :class:`RawRow` (a decoded JSON value or a read error).
- :func:`detect_format` picks the row format from the first object row.
- :func:`parse_row` turns one row into a :class:`Conversation` or raises :class:`RowError`.
- :func:`load_conversations` ties them together and raises ``TunewiseError`` on the first problem.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunewise.data.types import Conversation, Message
from tunewise.errors import TunewiseError

FORMATS = ("alpaca", "sharegpt", "openai", "messages", "text")
TABULAR_SUFFIXES = (".csv", ".tsv", ".parquet")

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                "tool": "tool", "function": "tool"}
OPENAI_MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "function_call", "tool_call_id",
                       "loss_weight", "refusal"}

# A ShareGPT function_call value as json.dumps writes it; keeping the raw arguments text makes
# ShareGPT -> OpenAI -> ShareGPT byte-identical.
_CALL_RE = re.compile(r'^\{"name": ("(?:[^"\\]|\\.)*"), "arguments": (.*)\}$', re.S)


class RowError(ValueError):
    """A problem with one row; ``str()`` is the message without the location."""


def array_source(name: str, row: int, line: int) -> str:
    """Where a row of a JSON array is: its 1-based row number, and the line it starts on when that
    differs (a minified array puts every row on line 1): ``"file.json: row 4 (line 1)"``."""
    return f"{name}: row {row}" if row == line else f"{name}: row {row} (line {line})"


@dataclass
class RawRow:
    source: str  # "file.jsonl:12", "file.json: row 4 (line 1)" or "file.parquet[3]"
    index: int  # 0-based row number among rows read (good and bad)
    value: Any = None
    error: str | None = None  # read-level problem (bad JSON, bad bytes): no value
    progress: float = 0.0  # fraction of the file read so far (for progress bars)


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _check_encoding_start(head: bytes, name: str) -> None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (
        len(head) >= 4 and (head[1] == 0 and head[3] == 0 or head[0] == 0 and head[2] == 0)
    ):
        raise TunewiseError(
            f"{name}:1: the file is UTF-16 encoded, not UTF-8",
            f"convert it first: iconv -f UTF-16 -t UTF-8 {name} > {Path(name).stem}.utf8{Path(name).suffix}",
        )


def _bad_utf8(data: bytes, err: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 byte 0x{data[err.start]:02x} at column {err.start + 1}"


def iter_rows(path: str | Path, mapping: dict[str, str] | None = None) -> Iterator[RawRow]:
    """Stream the rows of a dataset file. Raises ``TunewiseError`` only when the whole file is
    unreadable (missing, UTF-16, unknown kind); per-row problems come back as ``RawRow.error``."""
    path = Path(path)
    name = path.name
    if not path.exists():
        raise TunewiseError(f"{path}: no such file", "check the path")
    if path.is_dir():
        raise TunewiseError(f"{path} is a directory", "pass a .json, .jsonl, .txt, .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    with open(path, "rb") as f:
        head = f.read(4096)
    _check_encoding_start(head, name)
    if suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".txt":
        yield from _iter_text_lines(path)
    else:
        first = head.lstrip(codecs.BOM_UTF8).lstrip()[:1]
        if first == b"[":
            yield from _iter_json_array(path)
        elif first == b"" and not head.strip():
            return
        else:
            yield from _iter_json_lines(path)


def _iter_json_lines(path: Path) -> Iterator[RawRow]:
    name = path.name
    index = 0
    decoder = json.JSONDecoder()
    total = max(1, path.stat().st_size)
    done = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            done += len(raw)
            frac = done / total
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            src = f"{name}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRow(src, index, error=_bad_utf8(raw, e), progress=frac)
                index += 1
                continue
            try:
                value, end = decoder.raw_decode(text, len(text) - len(text.lstrip()))
                if text[end:].strip():
                    raise json.JSONDecodeError("extra data after the JSON value", text, end)
            except json.JSONDecodeError as e:
                if index == 0 and (whole := _single_object(path)) is not None:
                    yield RawRow(src, 0, value=whole, progress=1.0)  # one pretty-printed example
                    return
                col = e.colno
                hint = " (truncated line?)" if e.pos >= len(text.rstrip()) else ""
                yield RawRow(src, index, error=f"malformed JSON: {e.msg} at column {col}{hint}", progress=frac)
                index += 1
                continue
            except RecursionError:
                yield RawRow(src, index, error="malformed JSON: nested too deeply", progress=frac)
                index += 1
                continue
            yield RawRow(src, index, value=value, progress=frac)
            index += 1


def _single_object(path: Path) -> dict | None:
    """A file holding one JSON object spread over several lines (not JSON lines), or None."""
    if path.stat().st_size > 64 << 20:
        return None
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


_WS = re.compile(r"\s*")


def _utf8_problems(data: bytes) -> list[tuple[int, int, str]]:
    """Bad UTF-8 in a file: ``(character position in the text decoded with replacement
    characters, line, message)`` for each invalid sequence (at most 1,000)."""
    out: list[tuple[int, int, str]] = []
    pos = chars = 0
    while len(out) < 1000:
        try:
            data[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as err:
            at = pos + err.start
            chars += len(data[pos:at].decode("utf-8"))  # valid up to the bad byte
            line = data.count(b"\n", 0, at) + 1
            col = at - (data.rfind(b"\n", 0, at) + 1) + 1
            out.append((chars, line, f"invalid UTF-8 byte 0x{data[at]:02x} at column {col}"))
            chars += 1  # one replacement character per invalid sequence
            pos = at + max(1, err.end - err.start)
    return out


def _iter_json_array(path: Path) -> Iterator[RawRow]:
    """A JSON array read element by element, so each row knows its number and the line it starts
    on (sources read ``file.json: row 4 (line 1)``)."""
    name = path.name
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
        bad_bytes: list[tuple[int, int, str]] = []
    except UnicodeDecodeError:
        # Report every bad byte with the row it falls in, then read on with replacement characters.
        bad_bytes = _utf8_problems(data)
        text = data.decode("utf-8", errors="replace")
    bad_bytes.reverse()  # popped from the end, in file order

    def bytes_before(stop: int, row: int) -> Iterator[RawRow]:
        while bad_bytes and bad_bytes[-1][0] < stop:
            _, at_line, message = bad_bytes.pop()
            yield RawRow(array_source(name, row, at_line), row - 1, error=message)

    decoder = json.JSONDecoder()
    idx = _WS.match(text, 0).end() + 1  # past "["
    line = 1 + text.count("\n", 0, idx)
    counted = idx
    index = 0
    while True:
        idx = _WS.match(text, idx).end()
        line += text.count("\n", counted, idx)
        counted = idx
        here = array_source(name, index + 1, line)
        if idx >= len(text):
            yield from bytes_before(len(text) + 1, index + 1)
            yield RawRow(here, index, error="malformed JSON: the array is not closed with ']' (truncated file?)")
            return
        if text[idx] == "]" and index == 0:
            yield from bytes_before(len(text) + 1, 1)
            return
        try:
            value, end = decoder.raw_decode(text, idx)
        except json.JSONDecodeError as e:
            yield from bytes_before(len(text) + 1, index + 1)
            trunc = " (truncated file?)" if e.pos >= len(text.rstrip()) else ""
            yield RawRow(array_source(name, index + 1, e.lineno), index,
                         error=f"malformed JSON: {e.msg} at column {e.colno}{trunc}; rows after this point are not read")
            return
        except RecursionError:
            yield from bytes_before(len(text) + 1, index + 1)
            yield RawRow(here, index, error="malformed JSON: nested too deeply; rows after this point are not read")
            return
        yield from bytes_before(end, index + 1)
        yield RawRow(here, index, value=value, progress=end / len(text))
        index += 1
        idx = _WS.match(text, end).end()
        line += text.count("\n", counted, idx)
        counted = idx
        if idx >= len(text):
            yield from bytes_before(len(text) + 1, index)
            yield RawRow(f"{name}: after row {index} (line {line})", index,
                         error="malformed JSON: the array is not closed with ']' (truncated file?)")
            return
        if text[idx] == ",":
            idx += 1
            continue
        yield from bytes_before(len(text) + 1, index)
        if text[idx] == "]":
            if text[idx + 1:].strip():
                yield RawRow(f"{name}: after row {index} (line {line})", index,
                             error="malformed JSON: extra data after the closing ']'")
            return
        yield RawRow(f"{name}: after row {index} (line {line})", index,
                     error=f"malformed JSON: expected ',' or ']' but found {text[idx]!r}; rows after this point are not read")
        return


def _iter_text_lines(path: Path) -> Iterator[RawRow]:
    """Plain text: one example per non-empty line (as Hugging Face's ``text`` loader reads it)."""
    name = path.name
    index = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield RawRow(f"{name}:{lineno}", index, error=_bad_utf8(raw, e))
                index += 1
                continue
            if text.strip():
                yield RawRow(f"{name}:{lineno}", index, value={"text": text})
                index += 1


def _iter_csv(path: Path, delimiter: str) -> Iterator[RawRow]:
    name = path.name
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TunewiseError(f"{name}:{line}: invalid UTF-8 byte 0x{data[e.start]:02x}",
                            "save the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    index = 0
    start = 2
    try:
        for row in reader:
            src = f"{name}:{start}"
            start = reader.line_num + 1
            if None in row:
                yield RawRow(src, index, error=f"{len(row[None])} more field(s) than the header has columns")
            else:
                yield RawRow(src, index, value=dict(row))
            index += 1
    except csv.Error as e:
        yield RawRow(f"{name}:{reader.line_num}", index, error=f"malformed CSV: {e}")


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TunewiseError("reading Parquet needs pyarrow", "pip install pyarrow") from None
    name = path.name
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as e:
        raise TunewiseError(f"{name}: not a readable Parquet file ({str(e).splitlines()[0]})",
                            "check the file, or export it as JSONL") from None
    index = 0
    for batch in pf.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            yield RawRow(f"{name}[{index}]", index, value=row)
            index += 1


# ---------------------------------------------------------------------------------------------
# Row formats
# ---------------------------------------------------------------------------------------------


def apply_mapping(row: Any, mapping: dict[str, str] | None) -> Any:
    """Rename source columns to tunewise's field names: mapping is ``{field: column}``,
    e.g. ``{"instruction": "question", "output": "answer"}``."""
    if not mapping or not isinstance(row, dict):
        return row
    out = dict(row)
    for field_name, column in mapping.items():
        if column in row:
            value = out.pop(column)
            out[field_name] = value
    return out


def detect_format(row: Any) -> str | None:
    """The format a row is written in, from its keys; ``None`` when it cannot be told."""
    if not isinstance(row, dict):
        return None
    for key in ("messages", "conversations"):
        msgs = row.get(key)
        if isinstance(msgs, list):
            first = next((m for m in msgs if isinstance(m, dict)), None)
            if first is None:
                return "openai" if key == "messages" else "sharegpt"
            if "from" in first or "value" in first:
                return "sharegpt"
            return "messages" if _is_llamafactory_v1(msgs) else "openai"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def _is_llamafactory_v1(msgs: list) -> bool:
    """LLaMA-Factory v1 rows carry loss_weight or content parts with a "value" (OpenAI's have "text")."""
    for m in msgs:
        if not isinstance(m, dict):
            continue
        if "loss_weight" in m:
            return True
        content = m.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and "value" in p for p in content):
            return True
    return False


def _str_field(row: dict, key: str, *, required: bool, what: str = "") -> str:
    if key not in row or row[key] is None:
        if required:
            raise RowError(f"missing {what or repr(key)} (key {key!r})")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def parse_row(row: Any, fmt: str) -> Conversation:
    """Turn one row into a Conversation, or raise RowError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise RowError(f"each row must be a JSON object, got {type(row).__name__}")
    if fmt == "alpaca":
        return _parse_alpaca(row)
    if fmt == "sharegpt":
        return _parse_sharegpt(row)
    if fmt in ("openai", "messages"):
        return _parse_messages(row)
    if fmt == "text":
        text = _str_field(row, "text", required=True, what="text")
        if not text.strip():
            raise RowError("empty 'text'")
        return Conversation([Message("text", text, train=True)])
    raise RowError(f"unknown format {fmt!r}")


_ALPACA_KEYS = {"instruction", "input", "output", "system", "history"}


def _parse_alpaca(row: dict) -> Conversation:
    instruction = _str_field(row, "instruction", required=True, what="instruction")
    inp = _str_field(row, "input", required=False)
    output = _str_field(row, "output", required=True, what="response")
    system = _str_field(row, "system", required=False)
    if not output.strip():
        raise RowError("empty response ('output' is blank)")
    if not instruction.strip() and not inp.strip():
        raise RowError("empty prompt ('instruction' and 'input' are blank)")
    messages: list[Message] = []
    if system:
        messages.append(Message("system", system))
    history = row.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise RowError(f"'history' must be a list of [prompt, response] pairs, got {type(history).__name__}")
        for i, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise RowError(f"'history[{i}]' must be a [prompt, response] pair of strings")
            messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    meta: dict[str, Any] = {"format": "alpaca"}
    if inp:
        meta["parts"] = {len(messages): [instruction, inp]}
    messages.append(Message("user", f"{instruction}\n{inp}" if inp else instruction))
    messages.append(Message("assistant", output))
    extra = {k: v for k, v in row.items() if k not in _ALPACA_KEYS}
    if extra:
        meta["extra"] = extra
    if "history" in row:
        meta["has_history_key"] = True
    if "system" in row and not system:
        meta["empty_system_key"] = True
    if "input" not in row:
        meta["no_input_key"] = True
    return Conversation(messages, meta=meta)


def _parse_tool_call(value: str, n: int) -> list[dict]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise RowError(f"function_call value is not valid JSON ({e.msg})") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for j, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise RowError('function_call value must be {"name": ..., "arguments": {...}}')
        args = call.get("arguments", {})
        raw = None
        if not isinstance(parsed, list):
            m = _CALL_RE.match(value)
            if m and json.loads(m.group(1)) == call["name"]:
                raw = m.group(2)
        if raw is None:
            raw = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        out.append({"id": f"call_{n}_{j}", "type": "function", "function": {"name": call["name"], "arguments": raw}})
    return out


def _parse_sharegpt(row: dict) -> Conversation:
    key = "conversations" if "conversations" in row else "messages"
    turns = row.get(key)
    if not isinstance(turns, list):
        raise RowError(f"{key!r} must be a list of turns, got {type(turns).__name__ if turns is not None else 'nothing'}")
    messages: list[Message] = []
    system = row.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise RowError(f"'system' must be a string, got {type(system).__name__}")
        if system:
            messages.append(Message("system", system))
    n_calls = 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"{key}[{i}] must be an object with 'from' and 'value', got {type(turn).__name__}")
        role = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if role not in SHAREGPT_ROLES:
            raise RowError(f"{key}[{i}]: unknown role {role!r} (expected one of {', '.join(SHAREGPT_ROLES)})")
        if not isinstance(value, str):
            raise RowError(f"{key}[{i}].value must be a string, got {type(value).__name__ if value is not None else 'nothing'}")
        if role == "function_call":
            messages.append(Message("assistant", "", tool_calls=_parse_tool_call(value, n_calls)))
            n_calls += 1
        else:
            messages.append(Message(SHAREGPT_ROLES[role], value))
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json.dumps(tools, ensure_ascii=False)
    meta = {"format": "sharegpt", "key": key}
    if "system" in row and not system:
        meta["empty_system_key"] = True
    extra = {k: v for k, v in row.items() if k not in (key, "system", "tools")}
    if extra:
        meta["extra"] = extra
    return Conversation(messages, tools=tools, meta=meta)


def _content_text(content: Any, where: str, parts_out: list[str], calls_out: list[str] | None = None) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise RowError(f"{where}.content[{j}] must be an object, got {type(part).__name__}")
            kind = part.get("type", "text")
            if kind == "tool_call" and calls_out is not None:  # LLaMA-Factory v1: {"type": "tool_call", "value": JSON}
                value = part.get("value")
                if not isinstance(value, str):
                    value = json.dumps(value, ensure_ascii=False)
                calls_out.append(value)
                continue
            if kind != "text":
                raise RowError(f"{where}.content[{j}] is a {kind!r} part; only text is supported")
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise RowError(f"{where}.content[{j}] has no text")
            texts.append(text)
        parts_out.extend(texts)
        return "\n".join(texts)
    raise RowError(f"{where}.content must be a string or a list of parts, got {type(content).__name__}")


def _parse_messages(row: dict) -> Conversation:
    msgs = row.get("messages")
    if msgs is None:
        raise RowError("missing 'messages' list")
    if not isinstance(msgs, list):
        raise RowError(f"'messages' must be a list, got {type(msgs).__name__}")
    messages: list[Message] = []
    meta: dict[str, Any] = {}
    parts_meta: dict[int, list[str]] = {}
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RowError(f"{where} must be an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in OPENAI_ROLES:
            raise RowError(f"{where}: unknown role {role!r} (expected system, user, assistant or tool)")
        content = m.get("content")
        tool_calls = m.get("tool_calls")
        if m.get("function_call") is not None and tool_calls is None:
            fc = m["function_call"]
            if not isinstance(fc, dict):
                raise RowError(f"{where}.function_call must be an object")
            tool_calls = [{"id": f"call_{i}", "type": "function", "function": fc}]
        if tool_calls is not None:
            if not isinstance(tool_calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
                for c in tool_calls
            ):
                raise RowError(f"{where}.tool_calls must be a list of {{'type': 'function', 'function': {{'name', 'arguments'}}}}")
            tool_calls = [dict(c, function=dict(c["function"])) for c in tool_calls]
            for c in tool_calls:
                args = c["function"].get("arguments", "{}")
                if not isinstance(args, str):
                    c["function"]["arguments"] = json.dumps(args, ensure_ascii=False)
        if content is None:
            if not tool_calls:
                raise RowError(f"{where} ({role}) has no content")
            text = ""
        else:
            parts: list[str] = []
            part_calls: list[str] = []
            text = _content_text(content, where, parts, part_calls)
            if len(parts) > 1:
                parts_meta[len(messages)] = parts
            for value in part_calls:
                tool_calls = (tool_calls or []) + _parse_tool_call(value, len(messages))
        train = None
        if "weight" in m:
            w = m["weight"]
            if w not in (0, 1) or isinstance(w, bool):
                raise RowError(f"{where}.weight must be 0 or 1, got {w!r}")
            train = bool(w)
        if "loss_weight" in m:
            w = m["loss_weight"]
            if not isinstance(w, (int, float)) or isinstance(w, bool):
                raise RowError(f"{where}.loss_weight must be a number, got {w!r}")
            train = w > 0
        messages.append(Message(OPENAI_ROLES[role], text, train=train, tool_calls=tool_calls or None))
    tools = row.get("tools")
    tools_str = None
    if tools is not None:
        if isinstance(tools, str):
            tools_str = tools
        elif isinstance(tools, list):
            fns = [t["function"] if isinstance(t, dict) and isinstance(t.get("function"), dict) else t for t in tools]
            tools_str = json.dumps(fns)
        else:
            raise RowError(f"'tools' must be a list, got {type(tools).__name__}")
    meta["format"] = "messages" if _is_llamafactory_v1(msgs) else "openai"
    if parts_meta:
        meta["parts"] = parts_meta
    extra = {k: v for k, v in row.items() if k not in ("messages", "tools")}
    if extra:
        meta["extra"] = extra
    return Conversation(messages, tools=tools_str, meta=meta)


# ---------------------------------------------------------------------------------------------
# Validation of the conversation itself
# ---------------------------------------------------------------------------------------------


def validate_conversation(conv: Conversation) -> None:
    """Raise RowError for conversations training cannot use: no assistant turn, empty responses,
    impossible role order (templates reject these or the loss has nothing to learn)."""
    msgs = conv.messages
    if conv.is_text:
        return
    if not any(m.role == "assistant" for m in msgs):
        raise RowError("no assistant turn (nothing to learn)")
    prev = None
    for i, m in enumerate(msgs):
        if m.role == "system":
            if i != 0:
                raise RowError(f"impossible role order: system message at position {i} (only the first message may be system)")
        elif m.role == "user":
            if prev == "user":
                raise RowError(f"impossible role order: two user messages in a row (positions {i - 1} and {i})")
        elif m.role == "assistant":
            if prev in (None, "system"):
                raise RowError(f"impossible role order: the assistant speaks first (position {i}) before any user message")
            if prev == "assistant" and not msgs[i - 1].tool_calls:
                raise RowError(f"impossible role order: two assistant messages in a row (positions {i - 1} and {i})")
            if not m.content.strip() and not m.tool_calls:
                raise RowError(f"empty response (assistant message at position {i})")
        elif m.role == "tool":
            if prev not in ("assistant", "tool"):
                raise RowError(f"impossible role order: tool result at position {i} does not follow an assistant tool call")
        prev = m.role


# ---------------------------------------------------------------------------------------------
# Whole files
# ---------------------------------------------------------------------------------------------


@dataclass
class ParsedRow:
    source: str
    index: int
    conversation: Conversation | None
    error: str | None
    raw: Any = None
    progress: float = 0.0


def iter_conversations(path: str | Path, format: str = "auto", mapping: dict[str, str] | None = None,
                       validate: bool = True, keep_raw: bool = False) -> Iterator[ParsedRow]:
    """Stream a file as ParsedRow: a Conversation, or the error for that row (reading continues)."""
    if format not in ("auto", "csv", "parquet") + FORMATS:
        raise TunewiseError(f"unknown dataset format {format!r}", f"use one of auto, {', '.join(FORMATS)}")
    fmt = None if format in ("auto", "csv", "parquet") else format  # csv/parquet: the file kind, rows auto
    path = Path(path)
    for raw in iter_rows(path, mapping):
        if raw.error is not None:
            yield ParsedRow(raw.source, raw.index, None, raw.error, progress=raw.progress)
            continue
        row = apply_mapping(raw.value, mapping)
        if fmt is None:
            fmt = detect_format(row)
            if fmt is None:
                keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
                if isinstance(row, dict):
                    raise TunewiseError(
                        f"{raw.source}: cannot tell the dataset format from the keys ({keys})",
                        "expected Alpaca (instruction/output), ShareGPT (conversations), OpenAI (messages) or text; "
                        "rename columns with --map instruction=COLUMN,output=COLUMN",
                    )
                yield ParsedRow(raw.source, raw.index, None, f"each row must be a JSON object, got {keys}", raw.value if keep_raw else None, raw.progress)
                continue
        try:
            conv = parse_row(row, fmt)
            if validate:
                validate_conversation(conv)
        except RowError as e:
            yield ParsedRow(raw.source, raw.index, None, str(e), raw.value if keep_raw else None, raw.progress)
            continue
        conv.source = raw.source
        conv.meta.setdefault("format", fmt)
        yield ParsedRow(raw.source, raw.index, conv, None, raw.value if keep_raw else None, raw.progress)


def sniff_format(path: str | Path, mapping: dict[str, str] | None = None) -> str | None:
    """The detected row format of a file (from its first object row), or None."""
    for raw in iter_rows(Path(path), mapping):
        if raw.error is None:
            fmt = detect_format(apply_mapping(raw.value, mapping))
            if fmt is not None:
                return fmt
    return None


def load_conversations(path: str | Path, format: str = "auto", mapping: dict[str, str] | None = None) -> list[Conversation]:
    """Read every example of a dataset file. Raises TunewiseError naming the first bad row (file:line)
    and how many rows are bad; ``tunewise data check`` lists them all."""
    convs: list[Conversation] = []
    first: ParsedRow | None = None
    bad = 0
    for pr in iter_conversations(path, format, mapping):
        if pr.error is not None:
            bad += 1
            first = first or pr
        else:
            convs.append(pr.conversation)
    if first is not None:
        more = f" (and {bad - 1} more bad row{'s' if bad > 2 else ''})" if bad > 1 else ""
        raise TunewiseError(f"{first.source}: {first.error}{more}", f"run `tunewise data check {path}` to list every problem")
    if not convs:
        raise TunewiseError(f"{path}: no examples found", "the file is empty")
    return convs


def parse_mapping(items: list[str] | str | None) -> dict[str, str] | None:
    """``["instruction=question,output=answer"]`` -> ``{"instruction": "question", "output": "answer"}``."""
    if not items:
        return None
    if isinstance(items, str):
        items = [items]
    out: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            if not pair.strip():
                continue
            if "=" not in pair:
                raise TunewiseError(f"--map {pair!r} is not FIELD=COLUMN", "e.g. --map instruction=question,output=answer")
            k, v = pair.split("=", 1)
            out[k.strip()] = v.strip()
    return out
