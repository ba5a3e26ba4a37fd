"""Arms of a comparison: each turns an eval example into the messages a model sees (zero-shot,
with demonstrations, with retrieved context); an engine (tunewise.infer) answers them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.evaluate import EvalExample
from tunewise.train.run_dir import result_dir


@dataclass
class Demo:
    """A training example used as a demonstration: the prompt turns and the answer."""

    messages: list[dict]  # user (and earlier) turns, without system
    answer: str

    @property
    def question(self) -> str:
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


def demos_from_examples(examples: list[EvalExample]) -> list[Demo]:
    return [Demo([m for m in e.messages if m["role"] != "system"], e.reference)
            for e in examples if e.reference is not None]


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Add ``system`` unless the example brings its own system turn (which then gets it appended)."""
    if not system:
        return list(messages)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + system}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def demo_turns(demos: list[Demo]) -> list[dict]:
    turns: list[dict] = []
    for d in demos:
        turns.extend(d.messages)
        turns.append({"role": "assistant", "content": d.answer})
    return turns


def context_block(chunks: list[Any]) -> str:
    """Retrieved chunks as numbered, sourced passages for the system prompt."""
    parts = []
    for i, c in enumerate(chunks, 1):
        where = c.source + (f" › {c.heading}" if getattr(c, "heading", None) else "")
        parts.append(f"[{i}] ({where})\n{c.text.strip()}")
    return "Answer using only the context below. If it does not contain the answer, say so.\n\n" + "\n\n".join(parts)


@dataclass
class Arm:
    """One arm ready to answer: ``build`` makes the messages an engine answers."""

    name: str
    kind: str
    model_ref: str
    system_prompt: str | None = None
    demos: list[Demo] = field(default_factory=list)
    index: Any = None
    k: int = 4
    mode: str = "hybrid"
    examples_k: int = 0
    pool: list[Demo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def build(self, ex: EvalExample) -> tuple[list[dict], dict[str, Any]]:
        """The messages for ``ex`` and what retrieval found (shown in outputs.jsonl)."""
        extra: dict[str, Any] = {}
        msgs = [m for m in ex.messages]
        system = self.system_prompt
        if self.kind == "few_shot":
            msgs = [*demo_turns(self.demos), *[m for m in msgs if m["role"] != "system"]]
            own = [m for m in ex.messages if m["role"] == "system"]
            msgs = own + msgs
        elif self.kind == "rag":
            if self.index is not None:
                chunks = self.index.query(ex.question, k=self.k, mode=self.mode)
                extra["retrieved"] = [f"{c.source}" + (f" › {c.heading}" if c.heading else "") for c in chunks]
                ctx = context_block(chunks)
                system = f"{system}\n\n{ctx}" if system else ctx
            if self.examples_k and self.pool:
                from tunewise.rag import retrieve_examples

                idx = retrieve_examples(ex.question, [d.question for d in self.pool], self.examples_k)
                extra["demonstrations"] = [int(i) for i in idx]
                own = [m for m in msgs if m["role"] == "system"]
                msgs = own + demo_turns([self.pool[i] for i in idx]) + [m for m in msgs if m["role"] != "system"]
        return with_system(msgs, system), extra


@dataclass
class ApiArm(Arm):
    """An arm answered by an OpenAI-compatible endpoint (through tunewise.infer.OpenAIEngine)."""

    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0


def check_run_dir(path: str, where: str) -> Path:
    """A fine-tuned arm's run directory must hold an adapter (or a full model)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise TunewiseError(f"{where}: run directory {p} does not exist",
                            "train it first (`tunewise train CONFIG`) or give the arm a train: section")
    if result_dir(p) is None:
        raise TunewiseError(f"{where}: {p} is not a finished tunewise run (no adapter/ or model/ inside)",
                            "point run: at the output_dir of a completed `tunewise train`")
    return p
