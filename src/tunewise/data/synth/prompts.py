"""The teacher's prompts. Templates hold ``{{name}}`` slots that :func:`render` fills in one pass:
a value is inserted as it is and never scanned again, so braces, ``{{`` or ``%s`` in a document are
harmless (``str.format`` on user text is what breaks other tools on JSON-looking documents)."""

from __future__ import annotations

import hashlib
import json
import re

KINDS = ("qa", "instruction")

QUESTIONS_SYSTEM = (
    "You write training data for a model that must answer questions about a company's documents. "
    "You only use facts stated in the passage you are given."
)

QUESTIONS_USER = {
    "qa": (
        "Passage (from {{source}}{{heading}}):\n<<<\n{{chunk}}\n>>>\n\n"
        "Write {{n}} different questions that a reader could ask and that this passage alone answers. "
        "Each question must make sense on its own, without seeing the passage (name the subject; never "
        "say \"the passage\" or \"the document\"). Do not write the answers.\n"
        "Reply with JSON only, exactly this shape: {\"questions\": [\"...\", \"...\"]}"
    ),
    "instruction": (
        "Passage (from {{source}}{{heading}}):\n<<<\n{{chunk}}\n>>>\n\n"
        "Write {{n}} different instructions a user could give an assistant that this passage alone lets "
        "it carry out: for example to explain, summarise, list the steps or conditions, or compare "
        "options it describes. Each instruction must make sense on its own, without seeing the passage "
        "(name the subject; never say \"the passage\"). Do not carry them out.\n"
        "Reply with JSON only, exactly this shape: {\"instructions\": [\"...\", \"...\"]}"
    ),
}

ANSWER_SYSTEM = (
    "You answer using only the passage you are given. Do not add facts, numbers or advice that the "
    "passage does not state. If the passage does not contain the answer, say so."
)

ANSWER_USER = (
    "Passage (from {{source}}{{heading}}):\n<<<\n{{chunk}}\n>>>\n\n"
    "{{label}}: {{question}}\n\n"
    "Write the reply a helpful assistant would give, in plain sentences, stating only what the passage "
    "says and not mentioning the passage itself. If the passage does not answer it, reply with answer "
    "null.\n"
    "Reply with JSON only, exactly this shape: {\"answer\": \"...\"}"
)

JUDGE_SYSTEM = "You check training examples against their source passage. You are strict."

JUDGE_USER = (
    "Passage (from {{source}}{{heading}}):\n<<<\n{{chunk}}\n>>>\n\n"
    "{{label}}: {{question}}\n\nReply: {{answer}}\n\n"
    "Is every statement in the reply supported by the passage, and does the reply do what was asked? "
    "Reply with JSON only, exactly this shape: {\"verdict\": \"pass\" or \"fail\", \"reason\": \"...\"}"
)

REASK = (
    "Your last reply could not be read: {{problem}}. Reply again with the JSON object only, exactly in "
    "the shape asked for, with no other text."
)

_SLOT = re.compile(r"\{\{(\w+)\}\}")


def render(template: str, **values: object) -> str:
    """``template`` with every ``{{name}}`` replaced by ``str(values[name])`` in a single pass."""

    def slot(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"template slot {{{{{name}}}}} has no value")
        return str(values[name])

    return _SLOT.sub(slot, template)


def template_hash() -> str:
    """SHA-256 (first 16 hex digits) of every template, recorded with each pair: a changed prompt
    is visible in the data, and changes every cache key."""
    blob = json.dumps([QUESTIONS_SYSTEM, QUESTIONS_USER, ANSWER_SYSTEM, ANSWER_USER, JUDGE_SYSTEM, JUDGE_USER, REASK],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def label_of(kind: str) -> str:
    return "Question" if kind == "qa" else "Instruction"


def passage_values(chunk_text: str, source: str, heading: str) -> dict[str, str]:
    return {"chunk": chunk_text, "source": source, "heading": f", section \"{heading}\"" if heading else ""}


def questions_messages(kind: str, n: int, chunk_text: str, source: str, heading: str) -> list[dict]:
    return [
        {"role": "system", "content": QUESTIONS_SYSTEM},
        {"role": "user", "content": render(QUESTIONS_USER[kind], n=n, **passage_values(chunk_text, source, heading))},
    ]


def answer_messages(kind: str, question: str, chunk_text: str, source: str, heading: str) -> list[dict]:
    return [
        {"role": "system", "content": ANSWER_SYSTEM},
        {"role": "user", "content": render(ANSWER_USER, label=label_of(kind), question=question,
                                           **passage_values(chunk_text, source, heading))},
    ]


def judge_messages(kind: str, question: str, answer: str, chunk_text: str, source: str, heading: str) -> list[dict]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": render(JUDGE_USER, label=label_of(kind), question=question, answer=answer,
                                           **passage_values(chunk_text, source, heading))},
    ]


def reask_messages(messages: list[dict], bad_reply: str, problem: str) -> list[dict]:
    """The one re-ask: the conversation so far, the unreadable reply, and what was wrong with it."""
    return [*messages, {"role": "assistant", "content": bad_reply},
            {"role": "user", "content": render(REASK, problem=problem)}]
