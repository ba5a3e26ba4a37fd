"""The in-memory shape every dataset format is read into, and what tokenization produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool", "text")


@dataclass
class Message:
    """One turn. ``role`` is system|user|assistant|tool, or ``text`` for raw text (continued pre-training).

    ``train`` is the per-message weight from the file (OpenAI ``weight``, LLaMA-Factory ``loss_weight``);
    ``None`` means "decided by train_on". ``tool_calls`` holds OpenAI-style calls
    ``[{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}]``.
    """

    role: str
    content: str
    train: bool | None = None
    tool_calls: list | None = None


@dataclass
class Conversation:
    """One training example. ``tools`` is the JSON list of function definitions (a string), as ShareGPT
    keeps it. ``source`` ("file.jsonl:LINE", "file.json: row N (line L)", "file.parquet[ROW]") is what
    error messages point at.

    ``meta`` keeps format details needed to write the example back losslessly (for example the
    Alpaca instruction/input split, as ``{"parts": {message_index: [instruction, input]}}``, and
    keys the reader did not understand, under ``"extra"``).
    """

    messages: list[Message]
    tools: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_text(self) -> bool:
        msgs = self.messages  # (checked first on the first message: called per example, often)
        return bool(msgs) and msgs[0].role == "text" and all(m.role == "text" for m in msgs)


@dataclass
class TokenizedExample:
    """Token ids as training sees them; ``labels`` is -100 wherever the loss is masked.
    ``n_trainable_cut`` counts the trained tokens that ``sequence_len`` cut away."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    n_trainable: int
    source: str = ""
    n_trainable_cut: int = 0
