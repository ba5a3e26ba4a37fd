"""``tunewise data check``: every problem in a dataset file, with its file and line, plus the
statistics that matter for fine-tuning, counted with the model's own tokenizer and chat template.

The file is streamed in batches: what stays in memory is per-example token counts, an 8-byte
digest and a 64-value MinHash signature (for duplicates), and the issues found.
"""

from __future__ import annotations

import itertools
from array import array
import json
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tunewise.data.convert import to_openai
from tunewise.data.dedup import DuplicateFinder
from tunewise.data.formats import ParsedRow, iter_conversations
from tunewise.data.tokenize import TRAIN_ON, Rendered, _char_to_token, _encode_batch, _Template, render_conversation, trained_token_spans
from tunewise.data.types import Conversation
from tunewise.errors import TunewiseError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.\-]*)\s*\}\}")

#: The guide's minimum dataset sizes per goal: (low, high, description).
GOALS: dict[str, tuple[int, int, str]] = {
    "style": (500, 1_000, "style / tone"),
    "task": (1_000, 5_000, "task-specific behaviour"),
    "domain": (5_000, 20_000, "domain knowledge"),
}

#: OpenAI fine-tuning defaults (from OpenAI's chat fine-tuning data-prep cookbook).
OPENAI_TARGET_EPOCHS = 3
OPENAI_MIN_TARGET_EXAMPLES = 100
OPENAI_MAX_TARGET_EXAMPLES = 25_000
OPENAI_MIN_EPOCHS = 1
OPENAI_MAX_EPOCHS = 25
#: Tokens per training example OpenAI accepts for gpt-4o-mini fine-tuning.
OPENAI_TOKEN_LIMIT = 65_536
#: USD per million training tokens for gpt-4o-mini-2024-07-18 (OpenAI pricing page; pass
#: ``price_per_mtok`` for other models or when the price changes).
OPENAI_DEFAULT_PRICE_PER_MTOK = 3.00
OPENAI_MESSAGE_KEYS = ("role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id")
OPENAI_ROLES = ("system", "user", "assistant", "function", "tool")

SHORT_RESPONSE_TOKENS = 3
MAX_ISSUES_PER_CODE = 10_000  # beyond this only the count grows (keeps memory flat on broken files)


@dataclass
class Issue:
    level: str  # "error" | "warning"
    code: str
    source: str
    message: str
    order: int = 0  # position of the example in the input (eval file after the training file)


def _dist(values) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0, "min": 0, "p50": 0, "p95": 0, "max": 0, "mean": 0, "total": 0}
    return {"n": int(arr.size), "min": int(arr.min()), "p50": float(np.percentile(arr, 50)),
            "p95": float(np.percentile(arr, 95)), "max": int(arr.max()), "mean": float(arr.mean()),
            "total": int(arr.sum())}


def openai_epochs(n_examples: int) -> int:
    """OpenAI's default epochs: 3, raised so the job sees at least 100 example-passes (max 25),
    lowered to stay under 25,000 (min 1)."""
    if n_examples <= 0:
        return 0
    epochs = OPENAI_TARGET_EPOCHS
    if n_examples * epochs < OPENAI_MIN_TARGET_EXAMPLES:
        epochs = min(OPENAI_MAX_EPOCHS, math.ceil(OPENAI_MIN_TARGET_EXAMPLES / n_examples))
    elif n_examples * epochs > OPENAI_MAX_TARGET_EXAMPLES:
        epochs = max(OPENAI_MIN_EPOCHS, OPENAI_MAX_TARGET_EXAMPLES // n_examples)
    return epochs


def openai_format_errors(row: Any) -> list[str]:
    """The cookbook's format checks on one raw row (codes as the cookbook names them; tool-calling
    keys and the ``tool`` role are accepted as OpenAI's current format allows)."""
    if not isinstance(row, dict):
        return ["data_type"]
    messages = row.get("messages")
    if not messages or not isinstance(messages, list):
        return ["missing_messages_list"]
    errs = []
    for m in messages:
        if not isinstance(m, dict):
            errs.append("data_type")
            continue
        if "role" not in m or ("content" not in m and not m.get("tool_calls") and not m.get("function_call")):
            errs.append("message_missing_key")
        if any(k not in OPENAI_MESSAGE_KEYS for k in m):
            errs.append("message_unrecognized_key")
        if m.get("role") not in OPENAI_ROLES:
            errs.append("unrecognized_role")
        content = m.get("content")
        has_call = bool(m.get("function_call") or m.get("tool_calls"))
        if (not content and not has_call) or (content is not None and not isinstance(content, (str, list))):
            errs.append("missing_content")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errs.append("example_missing_assistant_message")
    return errs


@dataclass
class CheckReport:
    file: str
    format: str | None
    model: str
    sequence_len: int
    train_on: str
    target: str
    goal: str | None
    rows: int = 0
    examples: int = 0
    issues: list[Issue] = field(default_factory=list)
    issue_counts: dict[str, int] = field(default_factory=dict)  # "error:code" -> count (including unstored)
    stats: dict[str, Any] = field(default_factory=dict)
    goal_assessment: dict[str, Any] | None = None
    openai: dict[str, Any] | None = None
    eval_file: str | None = None
    eval_examples: int | None = None  # usable eval examples (with --eval)
    eval_size: dict[str, Any] | None = None  # is the eval set large enough? (tunewise.compare.stats.eval_size_check)
    seconds: float = 0.0
    _error_orders: set = field(default_factory=set, repr=False)  # training rows with at least one error

    @property
    def error_examples(self) -> int:
        """Training rows with at least one error (bad, or not trainable as they are)."""
        return len(self._error_orders)

    @property
    def n_errors(self) -> int:
        return sum(n for k, n in self.issue_counts.items() if k.startswith("error:"))

    @property
    def n_warnings(self) -> int:
        return sum(n for k, n in self.issue_counts.items() if k.startswith("warning:"))

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def add(self, level: str, code: str, source: str, message: str, order: int = 1 << 62) -> None:
        key = f"{level}:{code}"
        if level == "error" and order < 1 << 40:  # a training row's (eval rows and file-level issues come later)
            self._error_orders.add(order)
        n = self.issue_counts.get(key, 0)
        self.issue_counts[key] = n + 1
        if n < MAX_ISSUES_PER_CODE:
            self.issues.append(Issue(level, code, source, message, order))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_error_orders")
        d["error_examples"] = self.error_examples
        d["ok"] = self.ok
        d["n_errors"] = self.n_errors
        d["n_warnings"] = self.n_warnings
        return d


class _Counts:
    """What check keeps per example, as compact int arrays (about 14 bytes an example)."""

    def __init__(self) -> None:
        self.total = array("i")
        self.kept = array("i")
        self.trainable = array("i")
        self.never_stops = 0

    def append(self, total: int, kept: int, trainable: int, ends_with_stop: bool) -> None:
        self.total.append(total)
        self.kept.append(kept)
        self.trainable.append(trainable)
        if not ends_with_stop and trainable > 0:
            self.never_stops += 1


def _placeholders(conv: Conversation) -> list[str]:
    names: list[str] = []
    for m in conv.messages:
        if "{{" in m.content:
            names += PLACEHOLDER.findall(m.content)
    if conv.tools and "{{" in conv.tools:
        names += PLACEHOLDER.findall(conv.tools)
    return list(dict.fromkeys(names))


def _role_token_counts(enc, text: str, conv: Conversation, tpl_msgs_offset: int = 0) -> dict[str, int]:
    """Tokens per role, by locating each message's content in the rendered text."""
    counts: dict[str, int] = {}
    cursor = 0
    for m in conv.messages:
        content = m.content
        if not content:
            continue
        pos = text.find(content, cursor)
        if pos < 0:
            continue
        a = _char_to_token(enc, pos, forward=True)
        b = _char_to_token(enc, pos + len(content) - 1, forward=False)
        if a is not None and b is not None and b >= a:
            counts[m.role] = counts.get(m.role, 0) + (b - a + 1)
        cursor = pos + len(content)
    return counts


class _Checker:
    def __init__(self, report: CheckReport, tokenizer, chat_template: str | None, dup: DuplicateFinder,
                 target: str, token_limit: int):
        self.report = report
        self.tok = tokenizer
        self.chat_template = chat_template
        self.tpl: _Template | None = None
        self.dup = dup
        self.target = target
        self.token_limit = token_limit
        self.examples = _Counts()
        self.role_tokens: dict[str, array] = {}
        self.sources: list[str] = []
        self.orders = array("q")
        self.is_eval = bytearray()
        self.placeholder_names: Counter = Counter()
        self.skipped = 0  # examples training will skip (no learnable token)
        self.skipped_tokens = 0
        self.stop_ids: set[int] = set()
        if tokenizer.eos_token_id is not None:
            self.stop_ids.add(tokenizer.eos_token_id)
        self.openai_rows: dict[str, Any] = {
            "format_errors": Counter(), "n_missing_system": 0, "n_missing_user": 0,
            "n_messages": [], "tokens": [], "assistant_tokens": [], "n_too_long": 0,
        }

    def template(self) -> _Template:
        if self.tpl is None:
            self.tpl = _Template(self.tok, self.chat_template)
            for t in self.tpl.end_tokens:
                tid = self.tok.convert_tokens_to_ids(t)
                if isinstance(tid, int) and tid != getattr(self.tok, "unk_token_id", None):
                    self.stop_ids.add(tid)
        return self.tpl

    def prepare(self, rows: list[ParsedRow], is_eval: bool) -> list[tuple[ParsedRow, Rendered]]:
        """The Python half of a batch: validate, look for placeholders, render, fingerprint."""
        rep = self.report
        good: list[tuple[ParsedRow, Rendered]] = []
        self.dup.add_many([pr.conversation for pr in rows if pr.error is None])  # ids follow self.sources
        for pr in rows:
            order = pr.index + ((1 << 40) if is_eval else 0)
            if not is_eval:
                rep.rows += 1
            if pr.error is not None:
                rep.add("error", "bad_row", pr.source, pr.error, order)
                if self.target == "openai" and not is_eval and pr.raw is not None:
                    self.openai_rows["format_errors"].update(openai_format_errors(pr.raw))
                continue
            conv = pr.conversation
            self.sources.append(pr.source)
            self.orders.append(order)
            self.is_eval.append(is_eval)
            if is_eval:
                continue
            rep.examples += 1
            names = _placeholders(conv)
            if names:
                self.placeholder_names.update(names)
                rep.add("error", "placeholder", pr.source,
                        "unfilled template placeholder " + ", ".join("{{" + n + "}}" for n in names), order)
            is_text = conv.is_text
            if not is_text and conv.messages[-1].role != "assistant":
                rep.add("warning", "trailing_turn", pr.source,
                        f"ends with a {conv.messages[-1].role} message that is never trained on", order)
            try:
                tpl = None if is_text else self.template()
                rendered = render_conversation(conv, self.tok, rep.train_on, self.chat_template, _tpl=tpl)
            except TunewiseError as e:
                rep.add("error", "template", pr.source, e.message, order)
                self.examples.append(0, 0, 0, False)
                continue
            good.append((pr, rendered))
            if self.target == "openai":
                self._openai_row(pr)
        return good

    def submit(self, good: list[tuple[ParsedRow, Rendered]], pool) -> list:
        """Start tokenizing a prepared batch on the pool's thread (the Rust tokenizer releases the
        GIL, so the next batch is prepared meanwhile)."""
        parts = []
        for special in (False, True):
            part = [(pr, r) for pr, r in good if r.add_special_tokens == special]
            if part:
                parts.append((part, pool.submit(_encode_batch, self.tok, [r.text for _, r in part], special)))
        return parts

    def finish(self, parts: list) -> None:
        for part, future in parts:
            for (pr, r), enc in zip(part, future.result()):
                self._example(pr, r, enc)

    def _example(self, pr: ParsedRow, r: Rendered, enc) -> None:
        rep = self.report
        conv = pr.conversation
        is_text = r.add_special_tokens  # raw text (no chat template)
        n = len(enc)
        token_spans = trained_token_spans(enc, r.spans)  # inclusive, in order, not overlapping
        ids = enc.ids if is_text or token_spans else None
        if is_text:
            eos = self.tok.eos_token_id
            if eos is not None and (not ids or ids[-1] != eos):
                token_spans.append((n, n))
                n += 1
        last_trained = token_spans[-1][1] if token_spans else -1
        total = n
        seq = rep.sequence_len
        kept = min(total, seq)
        trainable = sum(max(0, min(b, kept - 1) - a + 1) for a, b in token_spans)
        truncated = total > seq
        # Training skips an example with no trained token it can learn from: one at a position
        # past the first (the first token has nothing before it to predict it from) and within
        # sequence_len; see tunewise.data.tokenize.skip_reason, which train applies to the same tokens.
        learnable = sum(max(0, min(b, kept - 1) - max(a, 1) + 1) for a, b in token_spans)
        cut_away = sum(max(0, b - max(a, kept) + 1) for a, b in token_spans)
        if is_text:
            ends = not truncated
        else:
            ends = last_trained >= 0 and last_trained < kept and ids[last_trained] in self.stop_ids
        roles = {} if is_text else _role_token_counts(enc, r.text, conv)
        for role, c in roles.items():
            self.role_tokens.setdefault(role, array("i")).append(c)
        resp = roles.get("assistant", 0) if not is_text else total
        if learnable == 0:
            self.examples.append(total, kept, 0, True)
            self.skipped += 1
            self.skipped_tokens += kept  # not in the epoch's tokens
            if cut_away:
                first = token_spans[0][0] if token_spans else 0
                rep.add("warning", "skipped_too_long", pr.source,
                        f"{total:,} tokens: sequence_len={seq} cuts away the whole response (it starts at token "
                        f"{first + 1:,}), so training will skip this example; raise sequence_len to {total:,} "
                        f"to train on all of it, or shorten the prompt", pr.index)
            else:
                rep.add("error", "zero_trainable", pr.source,
                        "no trainable tokens after masking (every turn is masked): training would skip it; "
                        "unmask a response (weight / loss_weight) or remove the example", pr.index)
            return
        self.examples.append(total, kept, trainable, ends)
        if truncated:
            rep.add("warning", "too_long", pr.source,
                    f"{total} tokens, longer than sequence_len={seq}: {total - seq} tokens cut", pr.index)
        if not ends:
            why = "cut off by sequence_len" if truncated else "the chat template puts no end-of-turn token after it"
            rep.add("warning", "never_stops", pr.source,
                    f"no end-of-turn token after the response ({why}): teaches the model to never stop", pr.index)
        if not is_text:
            has_calls = any(m.tool_calls for m in conv.messages if m.role == "assistant")
            if resp < SHORT_RESPONSE_TOKENS and not has_calls:
                rep.add("warning", "short_response", pr.source, f"very short response ({resp} token{'s' if resp != 1 else ''})", pr.index)

    def _openai_row(self, pr: ParsedRow) -> None:
        """OpenAI cookbook checks and token counts for one example (raw row if the file is OpenAI)."""
        conv = pr.conversation
        o = self.openai_rows
        raw = pr.raw if conv.meta.get("format") == "openai" and pr.raw is not None else to_openai(conv, [])
        errs = openai_format_errors(raw)
        o["format_errors"].update(errs)
        for code in dict.fromkeys(errs):
            self.report.add("error", f"openai_{code}", pr.source, f"OpenAI format check failed: {code}", pr.index)
        if raw is None:
            return
        msgs = raw.get("messages") or []
        o["n_messages"].append(len(msgs))
        if not any(isinstance(m, dict) and m.get("role") == "system" for m in msgs):
            o["n_missing_system"] += 1
        if not any(isinstance(m, dict) and m.get("role") == "user" for m in msgs):
            o["n_missing_user"] += 1
        o.setdefault("_pending", []).append(((pr.source, pr.index), msgs))

    def flush_openai(self) -> None:
        """Token counts as the cookbook computes them (3 per message, 1 per name, 3 to prime the
        reply, plus content tokens), with the chosen model's tokenizer."""
        o = self.openai_rows
        pending = o.pop("_pending", [])
        if not pending:
            return
        texts: list[str] = []
        index: list[tuple[int, bool, bool]] = []
        for k, (_, msgs) in enumerate(pending):
            for m in msgs:
                if not isinstance(m, dict):
                    continue
                content = m.get("content")
                if isinstance(content, list):
                    content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                text = (content or "") + ("".join(json.dumps(c) for c in m["tool_calls"]) if m.get("tool_calls") else "")
                texts.append(text)
                index.append((k, m.get("role") == "assistant", "name" in m))
        counts = [0] * len(pending)
        assistant = [0] * len(pending)
        for k, (_, msgs) in enumerate(pending):
            counts[k] = 3 + 3 * len(msgs)
        encs = _encode_batch(self.tok, texts, add_special_tokens=False) if texts else []
        for (k, is_asst, has_name), enc in zip(index, encs):
            counts[k] += len(enc.ids) + (1 if has_name else 0)
            if is_asst:
                assistant[k] += len(enc.ids)
        for ((source, order), _), c in zip(pending, counts):
            if c > self.token_limit:
                o["n_too_long"] += 1
                self.report.add("warning", "openai_too_long", source,
                                f"{c} tokens, over OpenAI's {self.token_limit}-token limit per example (it will be cut)", order)
        o["tokens"] += counts
        o["assistant_tokens"] += assistant


def check_dataset(
    path: str | Path,
    model: str = "smollm2-135m",
    tokenizer=None,
    sequence_len: int = 2048,
    train_on: str = "assistant",
    goal: str | None = None,
    target: str = "local",
    eval_path: str | Path | None = None,
    format: str = "auto",
    mapping: dict[str, str] | None = None,
    chat_template: str | None = None,
    price_per_mtok: float = OPENAI_DEFAULT_PRICE_PER_MTOK,
    openai_token_limit: int = OPENAI_TOKEN_LIMIT,
    near_duplicate_threshold: float = 0.8,
    batch_size: int = 1024,
    progress: Callable[[float, int], None] | None = None,
    tolerance: float | None = None,
) -> CheckReport:
    """Check one dataset file; see the module doc. ``progress(fraction_read, rows)`` is called per batch.

    With ``eval_path``, an eval set too small to measure differences of ``tolerance`` (default:
    compare's quality_tolerance) gets the ``small_eval`` warning, listed first."""
    t0 = time.perf_counter()
    if goal is not None and goal not in GOALS:
        raise TunewiseError(f"unknown goal {goal!r}", f"use one of {', '.join(GOALS)}")
    if train_on not in TRAIN_ON:
        raise TunewiseError(f"unknown train_on {train_on!r}", f"use one of {', '.join(TRAIN_ON)}")
    if target not in ("local", "openai"):
        raise TunewiseError(f"unknown target {target!r}", "use local or openai")
    if sequence_len < 1:
        raise TunewiseError(f"--sequence-len must be positive, got {sequence_len}")
    if tokenizer is None:
        from tunewise.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    path = Path(path)
    report = CheckReport(file=str(path), format=None, model=str(model), sequence_len=sequence_len,
                         train_on=train_on, target=target, goal=goal,
                         eval_file=str(eval_path) if eval_path else None)
    dup = DuplicateFinder(threshold=near_duplicate_threshold)
    checker = _Checker(report, tokenizer, chat_template, dup, target, openai_token_limit)
    formats: Counter = Counter()
    pending: list = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for file, is_eval in ([(path, False)] + ([(Path(eval_path), True)] if eval_path else [])):
            batch: list[ParsedRow] = []
            rows = iter_conversations(file, format, mapping, keep_raw=(target == "openai"))
            for pr in itertools.chain(rows, [None]):
                if pr is not None:
                    if pr.conversation is not None and not is_eval:
                        formats[pr.conversation.meta.get("format", "?")] += 1
                    batch.append(pr)
                    if len(batch) < batch_size:
                        continue
                if not batch:
                    continue
                parts = checker.submit(checker.prepare(batch, is_eval), pool)
                checker.finish(pending)  # the previous batch, tokenized while this one was prepared
                pending = parts
                checker.flush_openai()
                if progress and not is_eval:
                    progress(batch[-1].progress, report.rows)
                batch = []
        checker.finish(pending)
    if progress:
        progress(1.0, report.rows)
    report.format = formats.most_common(1)[0][0] if formats else None
    if report.rows == 0:
        report.add("error", "empty", f"{path.name}:1", "the file holds no examples")
    _duplicates(report, checker)
    _statistics(report, checker)
    if eval_path:
        _eval_size(report, checker, Path(eval_path), tolerance)
    if goal:
        report.goal_assessment = assess_size(report.examples, goal)
    if target == "openai":
        report.openai = _openai_summary(checker, report, price_per_mtok, openai_token_limit)
    if checker.placeholder_names:
        report.stats["placeholders"] = dict(checker.placeholder_names)
    report.issues.sort(key=lambda i: i.order)  # stable: per example, issues keep the order found
    report.seconds = time.perf_counter() - t0
    return report


def _duplicates(report: CheckReport, checker: _Checker) -> None:
    groups = checker.dup.groups()
    src, is_eval, order = checker.sources, checker.is_eval, checker.orders
    exact_ids = set()
    n_exact = n_near = 0
    for g in groups.exact:
        train = [i for i in g if not is_eval[i]]
        for i in train[1:]:
            report.add("warning", "duplicate", src[i], f"exact duplicate of {src[train[0]]}", order[i])
            exact_ids.add(i)
            n_exact += 1
    near_pairs_by_id: dict[int, int] = {}
    for a, b, _sim in groups.pairs:
        near_pairs_by_id.setdefault(b, a)
    for g in groups.near:
        train = [i for i in g if not is_eval[i]]
        evals = [i for i in g if is_eval[i]]
        for i in train[1:]:
            if i in exact_ids:
                continue
            report.add("warning", "near_duplicate", src[i], f"near duplicate of {src[near_pairs_by_id.get(i, train[0])]}", order[i])
            n_near += 1
        if train and evals:
            for i in evals:
                report.add("warning", "eval_overlap", src[i], f"eval example also in training data ({src[train[0]]})", order[i])
    report.stats["duplicates"] = {"exact": n_exact, "near": n_near,
                                  "eval_overlap": report.issue_counts.get("warning:eval_overlap", 0)}


def _eval_size(report: CheckReport, checker: _Checker, eval_path: Path, tolerance: float | None) -> None:
    from tunewise.compare.stats import DEFAULT_TOLERANCE, eval_size_check

    report.eval_examples = int(sum(checker.is_eval))
    report.eval_size = eval_size_check(report.eval_examples, DEFAULT_TOLERANCE if tolerance is None else tolerance)
    if report.eval_size["small"]:
        report.add("warning", "small_eval", eval_path.name, report.eval_size["message"], order=-1)


def _statistics(report: CheckReport, checker: _Checker) -> None:
    ex = checker.examples
    total = np.frombuffer(ex.total, dtype=np.int32) if len(ex.total) else np.zeros(0, np.int32)
    kept = np.frombuffer(ex.kept, dtype=np.int32) if len(ex.kept) else np.zeros(0, np.int32)
    trainable = np.frombuffer(ex.trainable, dtype=np.int32) if len(ex.trainable) else np.zeros(0, np.int32)
    cut = total > kept
    s = report.stats
    s["tokens_per_example"] = _dist(total)
    s["trainable_tokens_per_example"] = _dist(trainable)
    s["tokens_per_role"] = {role: _dist(v) for role, v in sorted(checker.role_tokens.items())}
    s["tokens_per_epoch"] = int(kept.sum(dtype=np.int64)) - checker.skipped_tokens  # what training sees
    s["trainable_tokens_per_epoch"] = int(trainable.sum(dtype=np.int64))
    s["over_sequence_len"] = {"examples": int(cut.sum()), "tokens_lost": int((total - kept).sum())}
    s["skipped_by_training"] = checker.skipped
    s["never_stop"] = ex.never_stops
    s["short_responses"] = report.issue_counts.get("warning:short_response", 0)


def assess_size(n: int, goal: str) -> dict[str, Any]:
    """Where a dataset of n examples stands against the guide's minimum for the goal."""
    lo, hi, label = GOALS[goal]
    if n < lo:
        verdict, message = "below", f"{n:,} examples is below the {lo:,}–{hi:,} the guide asks for {label}; collect {lo - n:,} more"
    elif n <= hi:
        verdict, message = "within", f"{n:,} examples is within the guide's {lo:,}–{hi:,} for {label}"
    else:
        verdict, message = "above", f"{n:,} examples is above the guide's {lo:,}–{hi:,} for {label} (enough; more mainly costs time)"
    return {"goal": goal, "label": label, "min": lo, "max": hi, "examples": n, "verdict": verdict, "message": message}


def _openai_summary(checker: _Checker, report: CheckReport, price: float, limit: int) -> dict[str, Any]:
    o = checker.openai_rows
    n = len(o["tokens"])
    epochs = openai_epochs(n)
    billed_per_epoch = int(sum(min(limit, t) for t in o["tokens"]))
    charged = epochs * billed_per_epoch
    return {
        "format_errors": dict(o["format_errors"]),
        "examples": n,
        "n_missing_system": o["n_missing_system"],
        "n_missing_user": o["n_missing_user"],
        "messages_per_example": _dist(o["n_messages"]),
        "tokens_per_example": _dist(o["tokens"]),
        "assistant_tokens_per_example": _dist(o["assistant_tokens"]),
        "n_over_token_limit": o["n_too_long"],
        "token_limit": limit,
        "epochs": epochs,
        "billable_tokens_per_epoch": billed_per_epoch,
        "charged_tokens": charged,
        "price_per_mtok_usd": price,
        "estimated_cost_usd": round(charged / 1e6 * price, 4),
        "tokenizer": f"{report.model} tokenizer (tiktoken's encodings need a download, so OpenAI's own counts may differ by a few percent)",
    }
