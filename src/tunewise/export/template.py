"""The chat template outside Hugging Face: its pieces, the end-of-turn strings, and an Ollama
``TEMPLATE`` that renders the same text.

A Jinja chat template cannot be translated to Ollama's Go templates in general. Most chat templates
are, however, "role prefix + content + role suffix" per message, an optional default system prompt
and a generation prompt. :func:`template_parts` recovers those pieces by rendering probe
conversations with the real template; :func:`ollama_template` writes them as a Go template that uses
only ``range``/``if eq``/``.Role``/``.Content``; :func:`render_ollama` renders that subset with Go
template semantics, so a test (and every export) can check that Ollama would show the model exactly
the text the Hugging Face template shows it. A template that is not of that shape is refused with a
clear error rather than exported wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunewise.errors import TunewiseError

_S, _U, _A, _V = "\x10SYS\x11", "\x10USR\x11", "\x10AST\x11", "\x10USR2\x11"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TemplateParts:
    """What the template writes around each message."""

    start: str  # before the first message, whatever it is (e.g. "<|begin_of_text|>")
    prefix: dict[str, str]  # role -> text before the content
    suffix: dict[str, str]  # role -> text after the content
    generation_prompt: str  # what opens the assistant's turn
    default_system: str | None  # the system prompt the template inserts when none is given


def _render(tokenizer, messages: list[dict], gen: bool, template: str | None = None) -> str:
    kw = {"chat_template": template} if template else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kw)


def _between(text: str, a: str, b: str) -> str:
    i, j = text.index(a) + len(a), text.index(b)
    return text[i:j]


def template_parts(tokenizer, template: str | None = None) -> TemplateParts:
    """Recover the per-role pieces of the tokenizer's chat template (or ``template``)."""
    try:
        one = _render(tokenizer, [{"role": "user", "content": _U}], False, template)
        one_gen = _render(tokenizer, [{"role": "user", "content": _U}], True, template)
        two = _render(tokenizer, [{"role": "user", "content": _U}, {"role": "assistant", "content": _A}], False, template)
        three = _render(tokenizer, [{"role": "user", "content": _U}, {"role": "assistant", "content": _A},
                                    {"role": "user", "content": _V}], False, template)
        sys = _render(tokenizer, [{"role": "system", "content": _S}, {"role": "user", "content": _U}], False, template)
    except Exception as e:  # jinja raises many kinds (e.g. "roles must alternate")
        raise TunewiseError(f"the chat template cannot render a plain conversation: {e}",
                            "export needs a template that renders system/user/assistant messages") from None
    if not one_gen.startswith(one):
        raise _unsupported("the generation prompt is not appended after the conversation")
    user_suffix = one.split(_U, 1)[1]
    gen_prompt = one_gen[len(one):]
    asst_suffix = two.split(_A, 1)[1]
    after_u = _between(two, _U, _A)
    if not after_u.startswith(user_suffix):
        raise _unsupported("the user turn does not end the same way in every conversation")
    asst_prefix = after_u[len(user_suffix):]
    user_prefix = _between(three, _A, _V)
    if not user_prefix.startswith(asst_suffix):
        raise _unsupported("the assistant turn does not end the same way in every conversation")
    user_prefix = user_prefix[len(asst_suffix):]
    before_u = one.split(_U, 1)[0]
    if not before_u.endswith(user_prefix):
        raise _unsupported("the first user turn is written differently from later ones")
    lead_nosys = before_u[: len(before_u) - len(user_prefix)]
    before_s = sys.split(_S, 1)[0]
    sys_rest = _between(sys, _S, _U)
    if not sys_rest.endswith(user_prefix):
        raise _unsupported("the system message is not followed by an ordinary user turn")
    sys_suffix = sys_rest[: len(sys_rest) - len(user_prefix)]
    # Without a system message the template writes either just its start (BOS text) or a default
    # system message: start + system prefix + DEFAULT + system suffix.
    start, sys_prefix, default = lead_nosys, before_s, None
    common = _common_prefix(lead_nosys, before_s)
    if lead_nosys != common and lead_nosys.endswith(sys_suffix) and lead_nosys.startswith(before_s):
        default = lead_nosys[len(before_s): len(lead_nosys) - len(sys_suffix)]
        start, sys_prefix = "", before_s
    elif lead_nosys == common:
        start, sys_prefix = lead_nosys, before_s[len(lead_nosys):]
    else:
        raise _unsupported("the text before the first message depends on the conversation")
    parts = TemplateParts(start=start, prefix={"system": sys_prefix, "user": user_prefix, "assistant": asst_prefix},
                          suffix={"system": sys_suffix, "user": user_suffix, "assistant": asst_suffix},
                          generation_prompt=gen_prompt, default_system=default)
    check_parts(tokenizer, parts, template)
    return parts


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _unsupported(why: str) -> TunewiseError:
    return TunewiseError(f"the chat template is not a simple per-message template ({why})",
                         "export --to gguf or merged works; for Ollama write the Modelfile TEMPLATE by hand")


SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is LoRA?"},
    {"role": "assistant", "content": "A low-rank update to frozen weights."},
    {"role": "user", "content": "And QLoRA, with {braces} and a \"quote\"?"},
    {"role": "assistant", "content": "LoRA on a 4-bit base model."},
    {"role": "user", "content": "Thanks!\nBye."},
]


def render_parts(parts: TemplateParts, messages: list[dict], gen: bool = True) -> str:
    """The text the pieces give for ``messages`` (the default system prompt inserted when none)."""
    msgs = list(messages)
    if parts.default_system is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": parts.default_system})
    out = parts.start + "".join(parts.prefix[m["role"]] + m["content"] + parts.suffix[m["role"]] for m in msgs)
    return out + (parts.generation_prompt if gen else "")


def check_parts(tokenizer, parts: TemplateParts, template: str | None = None) -> None:
    """The pieces must reproduce the real template on a multi-turn conversation, with and without
    a system message; otherwise the template is refused rather than exported wrong."""
    for msgs in (SAMPLE_CONVERSATION, SAMPLE_CONVERSATION[1:]):
        if render_parts(parts, msgs) != _render(tokenizer, msgs, True, template):
            raise _unsupported("its pieces do not reproduce a multi-turn conversation")


# ---------------------------------------------------------------------------------------------
# End-of-turn tokens
# ---------------------------------------------------------------------------------------------


def end_of_turn_ids(tokenizer, generation_config=None, parts: TemplateParts | None = None) -> list[int]:
    """Every id that ends the assistant's turn: the tokenizer's eos, the generation config's eos
    list, and any special token the template writes right after an assistant message."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(i) for i in eos)
    if parts is not None and parts.suffix["assistant"].strip():
        specials = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
        first = tokenizer.encode(parts.suffix["assistant"].strip(), add_special_tokens=False)[:1]
        if first and tokenizer.convert_ids_to_tokens(first[0]) in specials:
            ids.add(int(first[0]))
    return sorted(ids)


def stop_strings(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# Ollama: write and render the Go template
# ---------------------------------------------------------------------------------------------


def _go_text(s: str) -> str:
    if "{{" in s or "}}" in s:
        raise _unsupported("its role markers contain '{{' or '}}'")
    return s


def ollama_template(parts: TemplateParts) -> str:
    """A Go template (Ollama's TEMPLATE) equivalent to ``parts``. The default system prompt is not
    in the template: the Modelfile's SYSTEM line gives it, and Ollama then adds it as the first
    message whenever a request has no system message of its own."""
    branches = "".join(
        ("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}'
        + _go_text(parts.prefix[role]) + "{{ .Content }}" + _go_text(parts.suffix[role])
        for i, role in enumerate(ROLES))
    return (_go_text(parts.start) + "{{ range .Messages }}" + branches + "{{ end }}{{ end }}"
            + _go_text(parts.generation_prompt))


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_ollama(template: str, messages: list[dict], system: str | None = None) -> str:
    """Render ``template`` with Ollama's semantics, for the subset :func:`ollama_template` writes
    (``range .Messages``, ``if/else if eq .Role "x"``, ``.Content``, ``end``, ``{{-``/``-}}`` trims).
    Like Ollama, a Modelfile ``system`` prompt becomes the first message when none is given."""
    msgs = list(messages)
    if system is not None and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    # Tokenise into text and actions, applying Go's trim markers.
    items: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(("text", text))
        items.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip(" \t\r\n"))
    items.append(("text", template[pos:]))
    out, _ = _exec(items, 0, msgs, None)
    return out


def _exec(items, i, msgs, msg) -> tuple[str, int]:
    """Run items from ``i`` until an unmatched ``end``/``else``; return (text, index of that item)."""
    out = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            out.append(body)
            i += 1
            continue
        if body == "end" or body.startswith("else"):
            return "".join(out), i
        if body == "range .Messages":
            start = i + 1
            end = _skip_block(items, start)
            for m in msgs:
                text, _ = _exec(items, start, msgs, m)
                out.append(text)
            i = end + 1
        elif body.startswith("if "):
            text, i = _exec_if(items, i, msgs, msg)
            out.append(text)
        elif body == ".Content":
            out.append(_field(msg, "content"))
            i += 1
        elif body == ".Role":
            out.append(_field(msg, "role"))
            i += 1
        else:
            raise TunewiseError(f"Ollama template action {{{{ {body} }}}} is not supported here",
                                "keep the TEMPLATE to range/if eq .Role/.Content")
    return "".join(out), i


def _field(msg, key: str) -> str:
    if msg is None:
        raise TunewiseError(f".{key.title()} used outside range .Messages", "fix the TEMPLATE")
    return str(msg[key])


def _cond(expr: str, msg) -> bool:
    m = re.fullmatch(r'eq \.Role "([a-z]+)"', expr)
    if not m:
        raise TunewiseError(f"Ollama template condition {expr!r} is not supported here", "use eq .Role \"...\"")
    return _field(msg, "role") == m.group(1)


def _exec_if(items, i, msgs, msg) -> tuple[str, int]:
    """Evaluate an if / else if / else chain starting at ``items[i]``; return (text, index after end)."""
    taken, result = False, ""
    expr = items[i][1][3:]
    i += 1
    while True:
        if not taken and _cond(expr, msg):
            result, i = _exec(items, i, msgs, msg)
            taken = True
        else:
            i = _skip_block(items, i)
        body = items[i][1]
        if body == "end":
            return result, i + 1
        if body == "else":
            if not taken:
                result, i = _exec(items, i + 1, msgs, msg)
                taken = True
            else:
                i = _skip_block(items, i + 1)
            return result, i + 1
        expr = body[len("else if "):]
        i += 1


def _skip_block(items, i) -> int:
    """Index of the ``end``/``else`` that closes the block starting at ``i`` (nested blocks skipped)."""
    depth = 0
    while i < len(items):
        kind, body = items[i]
        if kind == "action":
            if body.startswith(("if ", "range ")):
                depth += 1
            elif body == "end":
                if depth == 0:
                    return i
                depth -= 1
            elif body.startswith("else") and depth == 0:
                return i
        i += 1
    raise TunewiseError("unbalanced Ollama template: a block has no {{ end }}", "fix the TEMPLATE")
