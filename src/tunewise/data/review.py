"""`tunewise data review`: a local web page to accept, edit or reject each example of a dataset,
write new (gold) examples by hand, and export what was kept.

Nothing here modifies the dataset. Every decision is one line appended to a review log beside it
(``pairs.jsonl`` -> ``pairs.review.jsonl``), flushed and fsynced before the page is told it is
saved, so a reload, a closed browser or a killed server loses nothing. A decision names its example
by a stable id (the row's own ``id``, else a hash of its messages, see :func:`example_id`), never by
its position, so the log stays right when rows are added, removed, reordered or their provenance
changes (a synth rerun). The latest entry for an id wins.

Rows that carry synth provenance (a top-level ``provenance`` object with ``document``, ``chunk_id``,
``span`` and ``chunk_text`` or ``chunk_hash``) are shown beside their source chunk, with the chunk
sentences that support the answer highlighted (:func:`support_spans`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from tunewise.data.convert import TARGETS, check_output_path, convert_conversations, serialize_rows, write_output
from tunewise.data.formats import RowError, iter_conversations, validate_conversation
from tunewise.data.types import Conversation, Message
from tunewise.errors import TunewiseError

LOG_SUFFIX = ".review.jsonl"
DECISIONS = ("accept", "edit", "reject", "undo")  # on any example; "gold" creates a hand-written one
ROLES = ("system", "user", "assistant", "tool", "text")
MAX_BODY = 8 << 20


# ---------------------------------------------------------------------------------------------
# Examples and their ids
# ---------------------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def content_hash(value: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``value``'s canonical JSON (keys sorted)."""
    return hashlib.sha256(_canonical(value)).hexdigest()[:16]


def example_id(raw: Any, conversation: Conversation | None = None) -> str:
    """The stable id of a row, never its position:

    - the row's own ``id`` (a non-empty string or an integer) when it has one: `tunewise data synth`
      writes one, a hash of the chunk, kind, question and answer;
    - else the content hash of its conversation: roles, texts, tool calls and tools, so that other
      keys (``provenance``, scores, metadata) can change, and key order or format details do not
      matter;
    - else (a row that cannot be read as an example) the content hash of the whole row."""
    own = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(own, str) and own.strip():
        return own.strip()
    if isinstance(own, int) and not isinstance(own, bool):
        return str(own)
    if conversation is not None:
        msgs = [{"role": m.role, "content": m.content, **({"tool_calls": m.tool_calls} if m.tool_calls else {})}
                for m in conversation.messages]
        return content_hash({"messages": msgs, **({"tools": conversation.tools} if conversation.tools else {})})
    return content_hash(raw)


def default_log_path(dataset: str | Path) -> Path:
    """``data/pairs.jsonl`` -> ``data/pairs.review.jsonl``."""
    p = Path(dataset)
    return p.with_name(p.stem + LOG_SUFFIX)


@dataclass
class Example:
    id: str
    source: str  # "pairs.jsonl:12", as every tunewise message names a row
    conversation: Conversation | None  # None when the row cannot be read as an example
    error: str | None = None  # why training would refuse the row (shown; only reject is offered)
    raw: Any = None
    duplicate_of: str | None = None  # the first row with the same id (a repeated row)

    @property
    def provenance(self) -> dict | None:
        prov = self.raw.get("provenance") if isinstance(self.raw, dict) else None
        return prov if isinstance(prov, dict) else None


@dataclass
class Dataset:
    path: Path
    format: str | None
    examples: list[Example]
    unreadable: list[str] = field(default_factory=list)  # "file:line: message" for rows with no value

    def __post_init__(self) -> None:
        self.by_id = {e.id: e for e in self.examples}


def load_examples(path: str | Path, format: str = "auto", mapping: dict[str, str] | None = None) -> Dataset:
    """Every row of a dataset as an :class:`Example`. Rows training would refuse are kept (with the
    reason) so a reviewer can reject them; rows that are not even JSON are listed in ``unreadable``.
    Rows with the same id (:func:`example_id`) get ``ID``, ``ID-2``, ``ID-3`` in file order."""
    path = Path(path)
    examples: list[Example] = []
    unreadable: list[str] = []
    seen: dict[str, int] = {}
    taken: set[str] = set()
    fmt: str | None = None
    for pr in iter_conversations(path, format, mapping, validate=False, keep_raw=True):
        if pr.conversation is None and pr.raw is None:
            unreadable.append(f"{pr.source}: {pr.error}")
            continue
        raw = pr.raw
        error = pr.error
        conv = pr.conversation
        if conv is not None:
            fmt = fmt or conv.meta.get("format")
            try:
                validate_conversation(conv)
            except RowError as e:
                error = str(e)
        base = example_id(raw, conv)
        n = seen.get(base, 0) + 1
        eid = base if n == 1 else f"{base}-{n}"
        while eid in taken:  # a row's own id can look like a numbered one
            n += 1
            eid = f"{base}-{n}"
        seen[base] = n
        taken.add(eid)
        examples.append(Example(eid, pr.source, conv, error, raw, duplicate_of=base if eid != base else None))
    if not examples and not unreadable:
        raise TunewiseError(f"{path}: no examples found", "the file is empty")
    return Dataset(path, fmt, examples, unreadable)


# ---------------------------------------------------------------------------------------------
# The review log
# ---------------------------------------------------------------------------------------------


def _messages_ok(entry: dict) -> bool:
    """An edit or a hand-written example carries its messages as [{role, content}, ...] (strings); a
    damaged line without them is skipped like an unreadable one, not carried into an export."""
    if entry.get("decision") not in ("edit", "gold") and "messages" not in entry:
        return True
    try:
        _messages_arg(entry.get("messages"), "review log")  # the rule the page's own requests are held to
    except TunewiseError:
        return False
    return True


class ReviewLog:
    """An append-only JSONL file of decisions. Each :meth:`append` writes one whole line, flushes and
    fsyncs it before returning. A line torn by a crash (no newline, bad JSON) is skipped when read and
    never glued to the next entry."""

    def __init__(self, path: str | Path, dataset: str | Path | None = None):
        self.path = Path(path)
        self.dataset = str(dataset) if dataset is not None else None
        self._lock = threading.Lock()
        self.skipped_lines: list[int] = []

    def read(self) -> list[dict]:
        self.skipped_lines = []
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    self.skipped_lines.append(lineno)
                    continue
                if (isinstance(entry, dict) and isinstance(entry.get("id"), str)
                        and entry.get("decision") in DECISIONS + ("gold",) and _messages_ok(entry)):
                    entries.append(entry)
                elif not (isinstance(entry, dict) and "review_log" in entry):
                    self.skipped_lines.append(lineno)
        return entries

    def check_writable(self) -> None:
        """Raise TunewiseError now, not at the first decision, when the log cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666))
        except OSError as e:
            raise TunewiseError(f"cannot write the review log {self.path} ({e.strerror})",
                                "pass --log PATH somewhere writable") from None

    def append(self, entry: dict) -> dict:
        entry = {**entry, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            try:
                size = os.fstat(fd).st_size
                prefix = b""
                if size == 0:
                    header = {"review_log": 1, "dataset": self.dataset, "created": entry["at"]}
                    prefix = (json.dumps(header, ensure_ascii=False) + "\n").encode("utf-8")
                elif os.pread(fd, 1, size - 1) != b"\n":
                    prefix = b"\n"  # a torn last line from a crash: start on a fresh line
                data = prefix + line.encode("utf-8")
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if size == 0:
                _fsync_dir(self.path.parent)  # the new file's name is durable too
        return entry


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def latest(entries: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Replay a log: the latest decision per dataset example (``undo`` removes it), and each
    hand-written example, in the order written, as ``{"id", "decision", "messages", "edited"}``:
    ``decision`` is ``gold`` (kept, with its latest text) or ``reject`` (left out)."""
    state: dict[str, dict] = {}
    gold: dict[str, dict] = {}
    for e in entries:
        apply_entry(state, gold, e)
    return state, gold


def apply_entry(state: dict[str, dict], gold: dict[str, dict], e: dict) -> None:
    """One step of :func:`latest`."""
    eid, decision = e["id"], e["decision"]
    if decision == "gold":
        gold[eid] = {"id": eid, "decision": "gold", "messages": e.get("messages"), "edited": False}
    elif eid in gold:
        g = gold[eid]
        if decision == "edit":
            g.update(messages=e.get("messages"), edited=True)
        g["decision"] = "reject" if decision == "reject" else "gold"  # accept / edit / undo keep it
    elif decision == "undo":
        state.pop(eid, None)
    else:
        state[eid] = e


# ---------------------------------------------------------------------------------------------
# Edited and hand-written examples
# ---------------------------------------------------------------------------------------------


def _messages_arg(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise TunewiseError(f"{where}: 'messages' must be a non-empty list", "send [{role, content}, ...]")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise TunewiseError(f"{where}: messages[{i}] needs a role ({', '.join(ROLES)}) and text content",
                                "send [{role, content}, ...]")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def edited_conversation(original: Conversation | None, messages: list[dict], source: str) -> Conversation:
    """The example a reviewer's edit makes. With the same roles as the original, only the texts
    change: tool calls, tools, per-message train flags and extra keys (provenance) are kept, and the
    Alpaca instruction/input split is kept where that text was not touched."""
    if original is not None and [m.role for m in original.messages] == [m["role"] for m in messages]:
        new_msgs = [Message(o.role, m["content"], o.train, o.tool_calls) for o, m in zip(original.messages, messages)]
        meta = {k: v for k, v in original.meta.items() if k != "parts"}
        parts = original.meta.get("parts")
        if isinstance(parts, dict):
            kept = {i: p for i, p in parts.items() if original.messages[i].content == new_msgs[i].content}
            if kept:
                meta["parts"] = kept
        return Conversation(new_msgs, tools=original.tools, source=source, meta=meta)
    meta = {"format": "openai"}
    if original is not None and original.meta.get("extra"):
        meta["extra"] = original.meta["extra"]
    return Conversation([Message(m["role"], m["content"]) for m in messages], source=source, meta=meta)


def _check_conversation(conv: Conversation, where: str) -> None:
    try:
        validate_conversation(conv)
    except RowError as e:
        raise TunewiseError(f"{where}: {e}", "fix the example before saving it") from None


# ---------------------------------------------------------------------------------------------
# The source chunk beside a synth pair
# ---------------------------------------------------------------------------------------------

SUPPORT_THRESHOLD = 0.5  # share of an answer sentence's content words found in one chunk sentence


def support_spans(chunk: str, answer: str, threshold: float = SUPPORT_THRESHOLD) -> list[tuple[int, int]]:
    """The chunk sentences that support an answer: for each answer sentence, the chunk sentence
    holding the largest share of its content words, kept when that share is at least ``threshold``.
    Sorted, merged character spans into ``chunk``. Sentences and content words (stemmed, stop words
    out, numbers in) are those of synth's grounding check (:mod:`tunewise.data.synth.filters`)."""
    from tunewise.data.synth.filters import Lexicon, sentences

    lexicon = Lexicon()  # one per call: the page is served from several threads
    chunk_sents = [(s, e, lexicon.terms(chunk[s:e])) for s, e in sentences(chunk)]
    picked: set[tuple[int, int]] = set()
    for s, e in sentences(answer):
        words = lexicon.terms(answer[s:e])
        if not words:
            continue
        best, best_score = None, 0.0
        for cs, ce, cw in chunk_sents:
            score = len(words & cw) / len(words)
            if score > best_score:
                best, best_score = (cs, ce), score
        if best is not None and best_score >= threshold:
            picked.add(best)
    merged: list[list[int]] = []
    for s, e in sorted(picked):
        if merged and s <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _int_span(value: Any) -> tuple[int, int] | None:
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 0 <= value[0] <= value[1]):
        return int(value[0]), int(value[1])
    return None


def _hash_matches(text: str, expected: str) -> bool:
    expected = expected.lower().removeprefix("sha256:")
    return len(expected) >= 8 and hashlib.sha256(text.encode("utf-8")).hexdigest().startswith(expected)


def _facts(prov: dict) -> list[str]:
    """One line per check `tunewise data synth` recorded: kind, grounding of each answer sentence,
    retrieval rank, judge."""
    out = []
    if isinstance(prov.get("kind"), str):
        out.append(f"kind: {prov['kind']}")
    for i, g in enumerate(prov.get("grounding") or [], start=1):
        if isinstance(g, dict) and isinstance(g.get("lexical"), (int, float)):
            emb = f" · embedding {g['embedding']:.2f}" if isinstance(g.get("embedding"), (int, float)) else ""
            verdict = "supported" if g.get("supported") else "NOT supported"
            out.append(f"answer sentence {i}: lexical {g['lexical']:.2f}{emb} · {verdict}")
    rank = prov.get("retrieval_rank")
    if isinstance(rank, int) and not isinstance(rank, bool):
        out.append(f"the question retrieves its chunk at rank {rank}")
    if isinstance(prov.get("judge"), dict):
        out.append("judge: " + json.dumps(prov["judge"], ensure_ascii=False)[:300])
    return out


def source_view(example: Example, roots: list[Path]) -> dict | None:
    """What the page shows beside a synth pair: the document, chunk id, the chunk's text and the
    spans to highlight. The chunk text is ``provenance.chunk_text``, or else ``span`` of
    ``document`` read from one of ``roots`` (checked against ``chunk_hash`` when there is one)."""
    prov = example.provenance
    if prov is None:
        return None
    doc = prov.get("document")
    span = _int_span(prov.get("span"))
    view: dict[str, Any] = {"document": doc if isinstance(doc, str) else None, "chunk_id": prov.get("chunk_id"),
                            "heading": prov.get("heading") if isinstance(prov.get("heading"), str) else None,
                            "span": list(span) if span else None, "chunk_text": None, "highlights": [], "note": None,
                            "facts": _facts(prov)}
    chunk = prov.get("chunk_text") if isinstance(prov.get("chunk_text"), str) else None
    if chunk is None and isinstance(doc, str) and span is not None:
        for root in roots:
            p = Path(doc) if Path(doc).is_absolute() else root / doc
            if p.is_file():
                try:
                    text = p.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if span[1] <= len(text):
                    chunk = text[span[0]:span[1]]
                    h = prov.get("chunk_hash")
                    if isinstance(h, str) and not _hash_matches(chunk, h):
                        view["note"] = f"{doc} changed since the pair was made (chunk_hash differs): the text may not be what the pair was written from"
                    break
        else:
            view["note"] = f"{doc} was not found (looked in {', '.join(str(r) for r in roots)}): pass --docs DIR"
    if chunk is None:
        return view
    view["chunk_text"] = chunk
    given = prov.get("support")
    if isinstance(given, list) and given and all(_int_span(s) for s in given):
        view["highlights"] = [list(_int_span(s)) for s in given if _int_span(s)[1] <= len(chunk)]
    elif example.conversation is not None:
        answers = [m.content for m in example.conversation.messages if m.role == "assistant" and m.content]
        if answers:
            view["highlights"] = [list(s) for s in support_spans(chunk, answers[-1])]
    return view


# ---------------------------------------------------------------------------------------------
# A review session: the dataset, its log, and the decisions
# ---------------------------------------------------------------------------------------------


def _message_dicts(conv: Conversation) -> list[dict]:
    out = []
    for m in conv.messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = m.tool_calls
        out.append(d)
    return out


class ReviewSession:
    """A dataset and its review log; what the server and :func:`export_reviewed` work on."""

    def __init__(self, dataset: str | Path, log: str | Path | None = None, format: str = "auto",
                 mapping: dict[str, str] | None = None, docs: str | Path | None = None):
        self.dataset = load_examples(dataset, format, mapping)
        self.log = ReviewLog(log or default_log_path(dataset), Path(dataset).name)
        if self.log.path.resolve() == Path(dataset).resolve():
            raise TunewiseError(f"{self.log.path} is the dataset itself", "pass another --log file")
        self.roots = [Path(docs)] if docs else []
        self.roots.append(Path(dataset).resolve().parent)
        self._lock = threading.Lock()
        self.decisions, self.gold = latest(self.log.read())
        known = self.dataset.by_id
        self._views: dict[str, dict | None] = {}
        self.stale = [i for i in self.decisions if i not in known and i not in self.gold]

    # -- reading -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        c = {"examples": len(self.dataset.examples), "decided": 0, "accept": 0, "edit": 0, "reject": 0,
             "gold": sum(1 for g in self.gold.values() if g["decision"] == "gold")}
        for e in self.dataset.examples:
            d = self.decisions.get(e.id)
            if d:
                c["decided"] += 1
                c[d["decision"]] += 1
        c["kept"] = c["accept"] + c["edit"] + c["gold"]
        return c

    def first_undecided(self) -> str | None:
        return next((e.id for e in self.dataset.examples if e.id not in self.decisions), None)

    def _example_json(self, e: Example) -> dict:
        return {"id": e.id, "source": e.source, "error": e.error, "duplicate_of": e.duplicate_of, "gold": False,
                "messages": _message_dicts(e.conversation) if e.conversation else None,
                "raw": None if e.conversation else e.raw, "tools": e.conversation.tools if e.conversation else None,
                "has_chunk": e.provenance is not None, "decision": self.decisions.get(e.id)}

    def chunk(self, eid: str) -> dict | None:
        """The source view of one example (fetched by the page when it shows the example)."""
        e = self.dataset.by_id.get(eid)
        if e is None:
            raise TunewiseError(f"no example with id {eid!r} in {self.dataset.path.name}", "reload the page")
        if eid not in self._views:
            self._views[eid] = source_view(e, self.roots)
        return self._views[eid]

    def _gold_json(self, g: dict) -> dict:
        return {"id": g["id"], "source": f"written by hand ({self.log.path.name})", "error": None, "duplicate_of": None,
                "gold": True, "messages": g["messages"], "raw": None, "tools": None, "has_chunk": False, "decision": g}

    def state(self) -> dict:
        with self._lock:
            log = self.log.path
            shown = log.name if log.resolve().parent == self.dataset.path.resolve().parent else str(log)
            return {"dataset": self.dataset.path.name, "log": shown, "format": self.dataset.format,
                    "examples": [self._example_json(e) for e in self.dataset.examples]
                    + [self._gold_json(g) for g in self.gold.values()],
                    "counts": self.counts(), "first_undecided": self.first_undecided(),
                    "unreadable": self.dataset.unreadable, "stale_decisions": len(self.stale),
                    "skipped_log_lines": self.log.skipped_lines}

    # -- writing -------------------------------------------------------------------------------

    def decide(self, eid: str, decision: str, messages: Any = None) -> dict:
        """Record accept / edit / reject / undo for one example (dataset or hand-written)."""
        if decision not in DECISIONS:
            raise TunewiseError(f"unknown decision {decision!r}", f"use one of {', '.join(DECISIONS)}")
        with self._lock:
            known = self.dataset.by_id
            if eid not in known and eid not in self.gold:
                raise TunewiseError(f"no example with id {eid!r} in {self.dataset.path.name}", "reload the page")
            ex = known.get(eid)
            entry: dict[str, Any] = {"id": eid, "decision": decision}
            if ex is not None:
                entry["source"] = ex.source
                if decision in ("accept", "edit") and ex.conversation is None:
                    raise TunewiseError(f"{ex.source}: {ex.error}", "this row cannot be read as an example: reject it")
                if decision == "accept" and ex.error:
                    raise TunewiseError(f"{ex.source}: {ex.error}", "edit the example to fix it, or reject it")
            if decision == "edit":
                msgs = _messages_arg(messages, f"edit of {eid}")
                _check_conversation(edited_conversation(ex.conversation if ex else None, msgs, eid), f"edit of {eid}")
                entry["messages"] = msgs
            entry = self.log.append(entry)
            apply_entry(self.decisions, self.gold, entry)
            return entry

    def add_gold(self, messages: Any) -> dict:
        """Record a new example written by hand; returns its log entry (with its new id)."""
        msgs = _messages_arg(messages, "new example")
        _check_conversation(Conversation([Message(m["role"], m["content"]) for m in msgs]), "new example")
        with self._lock:
            entry = self.log.append({"id": "gold-" + uuid.uuid4().hex[:12], "decision": "gold", "messages": msgs})
            apply_entry(self.decisions, self.gold, entry)
            return entry

    # -- export --------------------------------------------------------------------------------

    def kept_conversations(self) -> list[Conversation]:
        """Accepted rows as they are, edited rows as edited (both in file order), then hand-written
        examples in the order they were written."""
        out = []
        for e in self.dataset.examples:
            d = self.decisions.get(e.id)
            if d is None or e.conversation is None:
                continue
            if d["decision"] == "accept" and not e.error:
                out.append(e.conversation)
            elif d["decision"] == "edit":
                out.append(edited_conversation(e.conversation, d["messages"], e.source))
        for g in self.gold.values():
            if g["decision"] == "gold":
                out.append(Conversation([Message(m["role"], m["content"]) for m in g["messages"]],
                                        source=f"{self.log.path.name}: {g['id']}", meta={"format": "openai"}))
        return out


@dataclass
class ExportResult:
    output: str
    to: str
    rows: int
    counts: dict[str, int]
    dropped: list[tuple[str, str]]

    def to_dict(self) -> dict:
        return {"output": self.output, "to": self.to, "rows": self.rows, "counts": self.counts,
                "dropped": [{"source": s, "what": w} for s, w in self.dropped]}


def export_reviewed(session: ReviewSession, out: str | Path, to: str | None = None, force: bool = False) -> ExportResult:
    """Write the kept examples (accepted, edited, hand-written) to ``out`` in a training format
    (default: the dataset's own, or openai), atomically. Undecided and rejected examples are left out."""
    out = Path(out)
    to = to or (session.dataset.format if session.dataset.format in TARGETS else "openai")
    if to not in TARGETS:
        raise TunewiseError(f"unknown export format {to!r}", f"use one of {', '.join(TARGETS)}")
    check_output_path(session.dataset.path, out, force)
    if out.resolve() == session.log.path.resolve():
        raise TunewiseError(f"{out} is the review log", "export to another file")
    convs = session.kept_conversations()
    if not convs:
        raise TunewiseError(f"nothing to export: no example of {session.dataset.path.name} is accepted or edited yet",
                            f"review it first: tunewise data review {session.dataset.path}")
    rows, dropped = convert_conversations(convs, to)
    if not rows:
        raise TunewiseError(f"no kept example can be written as {to}", dropped[0][1] if dropped else None)
    write_output(out, serialize_rows(rows, out))
    skipped = list(session.log.skipped_lines)
    if skipped:  # damaged log lines left out: said, with where they are
        lines = ", ".join(map(str, skipped[:5])) + (" …" if len(skipped) > 5 else "")
        dropped = [*dropped, (f"{session.log.path.name} line(s) {lines}", "unreadable review-log entry, left out")]
    return ExportResult(str(out), to, len(rows), session.counts(), dropped)


# ---------------------------------------------------------------------------------------------
# The local server
# ---------------------------------------------------------------------------------------------

PAGE = Path(__file__).with_name("review.html")


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, session: ReviewSession, port: int = 0, token: str | None = None):
        self.session = session
        self.token = token or secrets.token_urlsafe(24)
        self.page = PAGE.read_bytes()
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as e:
            raise TunewiseError(f"cannot listen on 127.0.0.1:{port} ({e.strerror})",
                                "pick another --port, or --port 0 for any free one") from None
        self.port = self.server_address[1]
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # no request log on the terminal
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                         "connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _allowed(self) -> bool:
        url = urlsplit(self.path)
        given = self.headers.get("X-Review-Token") or (parse_qs(url.query).get("token") or [""])[0]
        if self.headers.get("Host") not in self.server.hosts or not hmac.compare_digest(given.encode(), self.server.token.encode()):
            self._send(HTTPStatus.FORBIDDEN, b"403 forbidden: open the exact URL `tunewise data review` printed "
                       b"(it carries a token that changes each time the server starts)\n", "text/plain; charset=utf-8")
            return False
        return True

    def do_GET(self) -> None:
        if not self._allowed():
            return
        route = urlsplit(self.path).path
        if route == "/":
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif route == "/api/state":
            self._json(HTTPStatus.OK, self.server.session.state())
        elif route == "/api/chunk":
            eid = (parse_qs(urlsplit(self.path).query).get("id") or [""])[0]
            try:
                self._json(HTTPStatus.OK, {"id": eid, "chunk": self.server.session.chunk(eid)})
            except TunewiseError as e:
                self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {route}"})

    def do_POST(self) -> None:
        if not self._allowed():
            return
        route = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise TunewiseError("the request body is empty or too large", "send one decision at a time")
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            if not isinstance(body, dict):
                raise TunewiseError("the request body must be a JSON object")
            session = self.server.session
            if route == "/api/decide":
                entry = session.decide(str(body.get("id")), str(body.get("decision")), body.get("messages"))
            elif route == "/api/gold":
                entry = session.add_gold(body.get("messages"))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {route}"})
                return
        except TunewiseError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        except (ValueError, UnicodeDecodeError) as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {e}"})
            return
        except OSError as e:  # the log cannot be written (disk full, permissions): say so, keep serving
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"cannot write {self.server.session.log.path}: {e.strerror}"})
            return
        with session._lock:
            counts = session.counts()
            first = session.first_undecided()
            decision = session.decisions.get(entry["id"]) or session.gold.get(entry["id"])
        self._json(HTTPStatus.OK, {"entry": entry, "counts": counts, "first_undecided": first, "decision": decision})


def serve(session: ReviewSession, port: int = 0, token: str | None = None,
          on_ready: Callable[[ReviewServer], None] | None = None) -> None:
    """Serve the review page on 127.0.0.1 until interrupted (Ctrl+C)."""
    session.log.check_writable()
    server = ReviewServer(session, port, token)
    try:
        if on_ready is not None:
            on_ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
