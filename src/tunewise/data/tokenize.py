"""Tokenization with exact loss masks, using the model's own chat template.

How the mask is found: the conversation is rendered to text once with the chat template. For each
trained assistant turn the template is rendered again on the prefix ending just before the turn
(with the generation prompt, i.e. up to ``<|im_start|>assistant\\n``) and on the prefix ending with
the turn; the characters in between are the turn's content and its end-of-turn token(s), which
are trained (whitespace the template puts after the end-of-turn token is not). The full text is
tokenized once (fast tokenizer, with offsets) and character spans become token spans. When a
template renders prefixes inconsistently (e.g. it rewrites earlier turns), the turn's content is
located in the full text instead, followed by the end-of-turn token if present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from tunewise.data.types import Conversation, Message, TokenizedExample
from tunewise.errors import TunewiseError

TRAIN_ON = ("assistant", "last_assistant", "all")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE}
# ChatML templates simple enough to render in plain Python (about 20x faster than the compiled Jinja
# template, which matters when `data check` renders every example twice): each message is
# "<|im_start|>ROLE\nCONTENT<|im_end|>\n", optionally after a fixed system turn when the first message
# is not a system message (SmolLM2's template), then "<|im_start|>assistant\n" as the generation
# prompt. tests/test_data_fast_paths.py proves the renderer equal to Jinja on these templates.
_NL = r"(?:\\n|\n)"  # a newline in a Jinja string literal, escaped or not
_PLAIN_CHATML = re.compile(
    r"\{% for message in messages %\}"
    r"(?P<default>\{% if loop\.first and messages\[0\]\['role'\] != 'system' %\}\{\{ '(?:[^'\\]|\\.)*' \}\}\{% endif %\})?"
    r"\{\{ ?'<\|im_start\|>' \+ message\['role'\] \+ '" + _NL + r"' \+ message\['content'\] \+ '<\|im_end\|>' \+ '"
    + _NL + r"' ?\}\}\{% endfor %\}\{% if add_generation_prompt %\}\{\{ ?'<\|im_start\|>assistant" + _NL + r"' ?\}\}\{% endif %\}"
)
_KNOWN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>", "<|end_of_text|>")


@dataclass
class Rendered:
    """A conversation as text plus the character spans that are trained."""

    text: str
    spans: list[tuple[int, int]]
    add_special_tokens: bool = False  # raw text: let the tokenizer add BOS, and append EOS
    source: str = ""


class _Template:
    """The chat template in use and what it can express (tools, tool calls)."""

    def __init__(self, tokenizer, chat_template: str | None):
        tpl = _NAMED_TEMPLATES.get(chat_template, chat_template) if chat_template else None
        if tpl is None:
            tpl = getattr(tokenizer, "chat_template", None)
            if isinstance(tpl, dict):
                tpl = tpl.get("default") or next(iter(tpl.values()))
        if not tpl:
            raise TunewiseError(
                "the tokenizer has no chat template, so conversations cannot be rendered",
                "pass chat_template='chatml' (or a Jinja template), or use an instruct model's tokenizer",
            )
        self.template = tpl
        self.tokenizer = tokenizer
        self.supports_tools = "tools" in tpl
        self.supports_tool_calls = "tool_calls" in tpl
        ends = [t for t in _KNOWN_END_TOKENS if t in tpl]
        eos = getattr(tokenizer, "eos_token", None)
        if eos:
            ends.append(eos)
        specials = set(ends)
        for tok in getattr(tokenizer, "all_special_tokens", []) or []:
            specials.add(tok)
        try:
            for added in tokenizer.added_tokens_decoder.values():
                if getattr(added, "special", False):
                    specials.add(added.content)
        except Exception:
            pass
        self.end_tokens = tuple(dict.fromkeys(ends))
        self.specials = tuple(s for s in specials if s)
        self._fast = self._fast_renderer()
        self._plain = self._plain_renderer() if self._fast is not None else None

    def _fast_renderer(self):
        """The compiled Jinja template called directly (3x faster than apply_chat_template on plain
        dicts), used only if it renders a probe conversation exactly as apply_chat_template does."""
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            compiled = _compile_jinja_template(self.template)
            extra = dict(getattr(self.tokenizer, "special_tokens_map", {}) or {})
            probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]

            def fast(messages, tools, add_generation_prompt):
                return compiled.render(messages=messages, tools=tools, documents=None,
                                       add_generation_prompt=add_generation_prompt, **extra)

            for msgs in (probe, probe[1:], probe[:3]):
                for gen in (False, True):
                    if fast(msgs, None, gen) != self._slow(msgs, None, gen):
                        return None
            return fast
        except Exception:
            return None

    def _plain_renderer(self):
        """A plain-Python renderer for the templates :data:`_PLAIN_CHATML` matches, used only if it
        renders the probe conversations exactly as Jinja does."""
        m = _PLAIN_CHATML.fullmatch(self.template)
        if m is None:
            return None
        default = ""
        if m.group("default"):
            shown = self._fast([{"role": "user", "content": ""}], None, False)
            turn = "<|im_start|>user\n<|im_end|>\n"
            if not shown.endswith(turn):
                return None
            default = shown[: -len(turn)]

        def plain(messages, add_generation_prompt):
            parts = [default] if default and messages and messages[0]["role"] != "system" else []
            for msg in messages:
                parts.append("<|im_start|>" + msg["role"] + "\n" + msg["content"] + "<|im_end|>\n")
            if add_generation_prompt:
                parts.append("<|im_start|>assistant\n")
            return "".join(parts)

        probes = [
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u {{ x }} {% raw %}"},
             {"role": "assistant", "content": "a\n\n"}, {"role": "user", "content": ""}],
            [{"role": "user", "content": "ü ß 東京 '\"\\n"}, {"role": "assistant", "content": "<|im_end|>"}],
            [{"role": "tool", "content": "t"}], [],
        ]
        for msgs in probes:
            for gen in (False, True):
                if plain(msgs, gen) != self._fast(msgs, None, gen):
                    return None
        return plain

    def _slow(self, messages, tools, add_generation_prompt):
        kwargs: dict[str, Any] = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  chat_template=self.template, **kwargs)

    def render(self, messages: list[dict], tools: list | None, add_generation_prompt: bool = False) -> str:
        tools = tools if tools and self.supports_tools else None
        try:
            if self._plain is not None and not tools:
                try:
                    return self._plain(messages, add_generation_prompt)
                except (TypeError, KeyError):  # not plain strings: let Jinja decide
                    pass
            if self._fast is not None and not tools:
                return self._fast(messages, None, add_generation_prompt)
            return self._slow(messages, tools, add_generation_prompt)
        except TunewiseError:
            raise
        except Exception as e:  # jinja raise_exception() in strict templates
            raise _RenderError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


class _RenderError(Exception):
    pass


def _call_text(calls: list[dict]) -> str:
    """A tool call as plain text, for templates without tool-call support: the ShareGPT form
    ``{"name": ..., "arguments": {...}}`` (byte-identical to a ShareGPT function_call value)."""
    texts = []
    for c in calls:
        fn = c.get("function", c)
        args = fn.get("arguments", "{}")
        args_text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        texts.append('{"name": ' + json.dumps(fn.get("name", ""), ensure_ascii=False) + ', "arguments": ' + args_text + "}")
    return texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"


def message_dicts(conv: Conversation, tpl: _Template) -> tuple[list[dict], list | None]:
    """The messages as the chat template receives them, and the tools list (if any)."""
    tools = None
    if conv.tools:
        try:
            tools = json.loads(conv.tools)
        except json.JSONDecodeError:
            raise TunewiseError(f"{conv.source}: 'tools' is not valid JSON", "fix the tools definition") from None
        if not isinstance(tools, list):
            tools = [tools]
        tools = tools or None
    out: list[dict] = []
    for m in conv.messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            if tpl.supports_tool_calls:
                d["tool_calls"] = [
                    {"type": "function", "id": c.get("id"),
                     "function": {"name": c["function"]["name"], "arguments": _json_or_text(c["function"].get("arguments", "{}"))}}
                    for c in m.tool_calls
                ]
            else:
                d["content"] = (m.content + "\n" if m.content else "") + _call_text(m.tool_calls)
        out.append(d)
    if tools and not tpl.supports_tools:
        # The template cannot show tool definitions: put them in the system prompt so the model
        # sees what it may call (as LLaMA-Factory does for such templates).
        note = "You have access to the following functions. To call one, reply with JSON " \
               '{"name": ..., "arguments": {...}}.\n' + json.dumps(tools, ensure_ascii=False)
        if out and out[0]["role"] == "system":
            out[0] = dict(out[0], content=out[0]["content"] + "\n\n" + note)
        else:
            out.insert(0, {"role": "system", "content": note})
    return out, tools


def _json_or_text(s: Any) -> Any:
    if isinstance(s, str):
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return s
    return s


def _trained_indices(messages: Sequence[Message], train_on: str) -> list[int]:
    if train_on == "assistant":
        return [i for i, m in enumerate(messages)
                if (m.role == "assistant" and m.train is not False) or (m.role != "assistant" and m.train is True)]
    if train_on == "last_assistant":
        last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
        return [] if last is None or messages[last].train is False else [last]
    raise ValueError(train_on)


def render_conversation(conv: Conversation, tokenizer, train_on: str = "assistant", chat_template: str | None = None,
                        _tpl: _Template | None = None) -> Rendered:
    """The text training sees and the character spans whose tokens are trained."""
    if train_on not in TRAIN_ON:
        raise TunewiseError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    if conv.is_text:
        text = "\n".join(m.content for m in conv.messages)
        return Rendered(text, [(0, len(text))], add_special_tokens=True, source=conv.source)
    tpl = _tpl or _Template(tokenizer, chat_template)
    msgs, tools = message_dicts(conv, tpl)
    shift = len(msgs) - len(conv.messages)  # a system message added to hold tool definitions
    try:
        full = tpl.render(msgs, tools)
    except _RenderError as e:
        raise TunewiseError(f"{conv.source}: the chat template refused this conversation: {e}",
                            "check the role order (tunewise data check)") from None
    if train_on == "all":
        return Rendered(full, [(0, len(full))], source=conv.source)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i in _trained_indices(conv.messages, train_on):
        j = i + shift
        span = _span_by_prefix(tpl, msgs, tools, j, full)
        if span is None or span[0] < cursor:
            span = _span_by_search(tpl, msgs[j], full, cursor, conv.source)
        spans.append(span)
        cursor = span[1]
    return Rendered(full, spans, source=conv.source)


def _strip_after_end(tpl: _Template, text: str, start: int, end: int) -> int:
    """Leave the whitespace a template puts after the end-of-turn token out of the trained span."""
    stripped = text[start:end].rstrip()
    if len(stripped) < end - start and stripped.endswith(tpl.specials):
        return start + len(stripped)
    return end


def _span_by_prefix(tpl: _Template, msgs: list[dict], tools, j: int, full: str) -> tuple[int, int] | None:
    try:
        if msgs[j]["role"] == "assistant":
            before = tpl.render(msgs[:j], tools, add_generation_prompt=True) if j else ""
        else:
            before = tpl.render(msgs[:j], tools) if j else ""
        through = full if j == len(msgs) - 1 else tpl.render(msgs[: j + 1], tools)
    except _RenderError:
        return None
    if not (full.startswith(through) and through.startswith(before)) or len(through) <= len(before):
        return None
    start, end = len(before), len(through)
    return start, _strip_after_end(tpl, full, start, end)


def _span_by_search(tpl: _Template, msg: dict, full: str, cursor: int, source: str) -> tuple[int, int]:
    content = msg.get("content") or ""
    needle = content if content.strip() else None
    pos = full.find(needle, cursor) if needle else -1
    if pos < 0 and needle:
        needle = content.strip()
        pos = full.find(needle, cursor)
    if pos < 0:
        raise TunewiseError(f"{source}: cannot find the {msg['role']} turn in the text the chat template renders",
                            "the template rewrites message content; use train_on='all' or another chat_template")
    end = pos + len(needle)
    rest = full[end:]
    for tok in tpl.end_tokens:
        if rest.lstrip(" ").startswith(tok):
            end += len(rest) - len(rest.lstrip(" ")) + len(tok)
            break
    return pos, end


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------


def _encode_batch(tokenizer, texts: list[str], add_special_tokens: bool):
    """Rust-side encodings (ids + char->token lookups) from a fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TunewiseError("exact loss masks need a fast (Rust) tokenizer", "use a model with a tokenizer.json")
    return backend.encode_batch(texts, add_special_tokens=add_special_tokens)


def _char_to_token(enc, pos: int, forward: bool) -> int | None:
    """The token holding character ``pos``, or the nearest one after (``forward``) or before it
    (characters the tokenizer drops map to no token); past the ends: ``len`` or -1."""
    step = 1 if forward else -1
    for _ in range(64):
        if pos < 0:
            break
        t = enc.char_to_token(pos)
        if t is not None:
            return t
        pos += step
    n = len(enc)  # (not len(enc.ids), which copies every id into a new list)
    return None if n == 0 else (n if forward else -1)


def trained_token_spans(enc, char_spans) -> list[tuple[int, int]]:
    """Character spans of trained text -> inclusive token spans, in order and not overlapping."""
    out: list[tuple[int, int]] = []
    for start, end in char_spans:
        if end <= start:
            continue
        a = _char_to_token(enc, start, forward=True)
        b = _char_to_token(enc, end - 1, forward=False)
        if a is None or b is None or b < a:
            continue
        if out and a <= out[-1][1]:
            a = out[-1][1] + 1
            if b < a:
                continue
        out.append((a, b))
    return out


def _example(enc, rendered: Rendered, tokenizer, sequence_len: int) -> TokenizedExample:
    ids = list(enc.ids)
    labels = [-100] * len(ids)
    for a, b in trained_token_spans(enc, rendered.spans):
        labels[a:b + 1] = ids[a:b + 1]
    if rendered.add_special_tokens:
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
            labels.append(eos)
    truncated = len(ids) > sequence_len
    cut = 0
    if truncated:
        cut = sum(1 for x in labels[sequence_len:] if x != -100)
        ids, labels = ids[:sequence_len], labels[:sequence_len]
    n_trainable = sum(1 for x in labels if x != -100)
    return TokenizedExample(ids, labels, truncated, n_trainable, rendered.source, cut)


# ---------------------------------------------------------------------------------------------
# Which examples training uses
# ---------------------------------------------------------------------------------------------

#: Why training skips an example (see :func:`skip_reason`).
SKIP_CUT = "cut_by_sequence_len"
SKIP_MASKED = "no_trained_tokens"


def learnable(example: TokenizedExample) -> bool:
    """An example training can learn from: at least two tokens and a trained label after the first
    token (the first token has nothing before it to be predicted from)."""
    return len(example.input_ids) >= 2 and any(label != -100 for label in example.labels[1:])


def skip_reason(example: TokenizedExample) -> str | None:
    """The one rule for what training does with an example: ``None`` when it is trained on, else
    why it is skipped (not trained on, counted and named in the run summary):

    - ``SKIP_CUT``: ``sequence_len`` cuts away every trained token (a prompt longer than
      ``sequence_len``); ``tunewise data check`` warns about it;
    - ``SKIP_MASKED``: no turn is trained at all (every response has weight 0); ``data check``
      reports that as an error.
    """
    if learnable(example):
        return None
    return SKIP_CUT if example.n_trainable_cut > 0 else SKIP_MASKED


def tokenize_rendered(rendered: list[Rendered], tokenizer, sequence_len: int) -> list[TokenizedExample]:
    """Tokenize many rendered conversations in one fast batch call."""
    out: list[TokenizedExample | None] = [None] * len(rendered)
    for special in (False, True):
        idx = [i for i, r in enumerate(rendered) if r.add_special_tokens == special]
        if not idx:
            continue
        encs = _encode_batch(tokenizer, [rendered[i].text for i in idx], add_special_tokens=special)
        for i, enc in zip(idx, encs):
            out[i] = _example(enc, rendered[i], tokenizer, sequence_len)
    return out  # type: ignore[return-value]


def tokenize_conversation(conv: Conversation, tokenizer, sequence_len: int, train_on: str = "assistant",
                          chat_template: str | None = None) -> TokenizedExample:
    """One conversation as token ids and labels (-100 where masked), cut to ``sequence_len``."""
    rendered = render_conversation(conv, tokenizer, train_on, chat_template)
    return tokenize_rendered([rendered], tokenizer, sequence_len)[0]


def iter_rendered(convs: Iterable[Conversation], tokenizer, train_on: str = "assistant",
                  chat_template: str | None = None) -> Iterable[Rendered]:
    tpl = None
    for conv in convs:
        if tpl is None and not conv.is_text:
            tpl = _Template(tokenizer, chat_template)
        yield render_conversation(conv, tokenizer, train_on, chat_template, _tpl=tpl)


def tokenize_dataset(convs: Iterable[Conversation], tokenizer, sequence_len: int, train_on: str = "assistant",
                     chat_template: str | None = None, on_empty: str = "warn",
                     batch_size: int = 1024) -> list[TokenizedExample]:
    """Tokenize a dataset in fast batches.

    Examples left with zero trainable tokens (the response was cut off by ``sequence_len``, or every
    turn is masked) are never passed on silently: ``on_empty="warn"`` (default) keeps them and issues
    a ``UserWarning`` naming them (their ``n_trainable`` is 0: callers filter and count them),
    ``"error"`` raises TunewiseError listing them, ``"drop"`` removes them (the caller should report
    ``len(convs) - len(result)``), ``"keep"`` returns them without a warning (``train`` keeps them,
    then skips and names them by :func:`skip_reason`).
    """
    if on_empty not in ("warn", "error", "drop", "keep"):
        raise ValueError(f"on_empty must be warn, error, drop or keep, not {on_empty!r}")
    if sequence_len < 1:
        raise TunewiseError(f"sequence_len must be at least 1, got {sequence_len}")
    out: list[TokenizedExample] = []
    batch: list[Rendered] = []
    for r in iter_rendered(convs, tokenizer, train_on, chat_template):
        batch.append(r)
        if len(batch) >= batch_size:
            out += tokenize_rendered(batch, tokenizer, sequence_len)
            batch = []
    if batch:
        out += tokenize_rendered(batch, tokenizer, sequence_len)
    empty = [ex for ex in out if ex.n_trainable == 0]
    if empty and on_empty in ("error", "warn"):
        where = ", ".join(ex.source or "?" for ex in empty[:5]) + (" …" if len(empty) > 5 else "")
        cut = sum(1 for ex in empty if ex.truncated)
        why = f" ({cut} cut off by sequence_len={sequence_len})" if cut else ""
        message = f"{len(empty)} example(s) have no trainable tokens after masking{why}: {where}"
        hint = "raise sequence_len, fix or drop those examples (tunewise data check lists them)"
        if on_empty == "error":
            raise TunewiseError(message, hint)
        import warnings

        warnings.warn(f"{message} — {hint}", UserWarning, stacklevel=2)
    if on_empty == "drop":
        out = [ex for ex in out if ex.n_trainable > 0]
    return out
