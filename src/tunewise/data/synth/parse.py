"""Reading a teacher's reply: reasoning blocks (``<think>…</think>`` and kin) and Markdown code
fences are removed, then the first JSON value in what is left is decoded and checked for the shape
the prompt asked for. A reply that cannot be read raises :class:`ParseError` with the problem in
words (sent back to the teacher in the one re-ask)."""

from __future__ import annotations

import json
import re

_REASONING_TAGS = ("think", "thinking", "reasoning", "thought")
_BLOCK = re.compile(r"<(" + "|".join(_REASONING_TAGS) + r")\b[^>]*>.*?</\1\s*>", re.S | re.I)
_OPEN = re.compile(r"<(" + "|".join(_REASONING_TAGS) + r")\b[^>]*>", re.I)
_CLOSE = re.compile(r"</(" + "|".join(_REASONING_TAGS) + r")\s*>", re.I)
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)```", re.S)


class ParseError(ValueError):
    """The reply has no usable content; ``problem`` says why."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def strip_reasoning(text: str) -> str:
    """``text`` without reasoning blocks. A closing tag with no opening one (servers that strip the
    opening tag) drops everything before it; an opening tag never closed means the reply is all
    reasoning (it was cut off) and leaves nothing."""
    text = _BLOCK.sub("", text)
    closes = list(_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    m = _OPEN.search(text)
    if m:
        text = text[: m.start()]
    return text.strip()


def strip_fences(text: str) -> str:
    """The inside of the first fenced code block holding a JSON value, else ``text`` unchanged."""
    for m in _FENCE.finditer(text):
        inner = m.group(1).strip()
        if inner[:1] in "{[":
            return inner
    return text


def first_json(text: str):
    """The first JSON object or array in ``text`` (after reasoning and fences are removed)."""
    cleaned = strip_fences(strip_reasoning(text))
    if not cleaned:
        raise ParseError("the reply is empty (or only reasoning)")
    try:
        return json.loads(cleaned)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    first_error = None
    for m in re.finditer(r"[\[{]", cleaned):
        try:
            value, _ = decoder.raw_decode(cleaned, m.start())
            return value
        except ValueError as e:
            first_error = first_error or e
    if first_error is None:
        raise ParseError("the reply holds no JSON object")
    raise ParseError(f"the JSON is malformed ({first_error.msg} at character {first_error.pos})")


def _clean(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


_LIST_ITEM = re.compile(r"^\s*(?:\*\*)?(?:(?:question|instruction|q)\s*\d*\s*[:.)]|\d+\s*[.):]|[-*•])(?:\*\*)?\s+(.+?)\s*$",
                        re.I | re.M)


def listed_items(text: str) -> list[str]:
    """The items of a plain list in a reply (``Question 1: …``, ``1. …``, ``2) …``, ``- …``), one a
    line, reasoning removed: what small teachers write when they do not manage JSON."""
    return [_clean(m.group(1).strip("\"'*")) for m in _LIST_ITEM.finditer(strip_reasoning(text)) if _clean(m.group(1).strip("\"'*"))]


def parse_questions(text: str, kind: str, n: int) -> list[str]:
    """Up to ``n`` distinct non-empty questions (or instructions) from a reply: the JSON list asked
    for, or else a plain list, one item a line (:func:`listed_items`)."""
    try:
        return _json_questions(text, kind, n)
    except ParseError:
        items = list(dict.fromkeys(listed_items(text)))
        if not items:
            raise
        return items[:n]


def _json_questions(text: str, kind: str, n: int) -> list[str]:
    value = first_json(text)
    key = "questions" if kind == "qa" else "instructions"
    if isinstance(value, dict):
        items = value.get(key)
        if items is None:  # a teacher that used the other kind's key is still understood
            items = next((v for k, v in value.items() if isinstance(v, list)), None)
        if items is None:
            raise ParseError(f'the JSON object has no "{key}" list')
    elif isinstance(value, list):
        items = value
    else:
        raise ParseError(f'expected {{"{key}": [...]}}, got a JSON {type(value).__name__}')
    out: list[str] = []
    for item in items:
        if isinstance(item, dict):  # [{"question": "..."}] is a common variation
            item = next((v for v in item.values() if isinstance(v, str)), None)
        if isinstance(item, str) and _clean(item) and _clean(item) not in out:
            out.append(_clean(item))
    if not out:
        raise ParseError(f'the "{key}" list holds no non-empty strings')
    return out[:n]


def parse_answer(text: str) -> str | None:
    """The answer text, or ``None`` when the teacher says the passage does not answer. A reply in
    plain prose (no braces at all: small teachers rarely manage JSON) is the answer as it is; the
    grounding check then judges every sentence of it. Broken JSON is an error (re-asked)."""
    try:
        value = first_json(text)
    except ParseError:
        plain = strip_reasoning(text).strip()
        if plain and not re.search(r"[{}]", plain):
            return plain
        raise
    if not isinstance(value, dict) or "answer" not in value:
        raise ParseError('expected {"answer": "..."}')
    answer = value["answer"]
    if answer is None:
        return None
    if not isinstance(answer, str):
        raise ParseError(f'"answer" must be a string or null, got {type(answer).__name__}')
    answer = answer.strip()
    return answer or None


def parse_verdict(text: str) -> tuple[bool, str]:
    """(passed, reason) from a judge's reply."""
    value = first_json(text)
    if not isinstance(value, dict) or not isinstance(value.get("verdict"), str):
        raise ParseError('expected {"verdict": "pass" or "fail", "reason": "..."}')
    verdict = value["verdict"].strip().lower()
    if verdict not in ("pass", "fail"):
        raise ParseError(f'"verdict" must be "pass" or "fail", got {value["verdict"]!r}')
    return verdict == "pass", str(value.get("reason") or "").strip()
