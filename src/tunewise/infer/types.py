"""What goes into an inference engine and what comes out: the one shape every door to a model uses
(the Hugging Face reference, llama.cpp, an OpenAI-compatible endpoint, `tunewise serve`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence, Callable, runtime_checkable


@dataclass(frozen=True)
class Request:
    """One chat turn to generate. temperature 0 means greedy (deterministic)."""

    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    """One generated assistant turn.

    finish_reason is "stop" when the model ended its turn itself (an end-of-turn token or a stop
    string) and "length" when ``max_tokens`` cut it.
    """

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    seconds: float  # wall time of this request, queueing excluded where the engine can tell
    ttft_s: float | None = None  # time to the first new token (prefill + one step)
    engine: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second after the first one: the decoding speed, without the prompt's prefill."""
        if self.ttft_s is None or self.output_tokens < 2 or self.seconds <= self.ttft_s:
            return None
        return (self.output_tokens - 1) / (self.seconds - self.ttft_s)


@runtime_checkable
class Engine(Protocol):
    """A loaded model that answers chat requests.

    ``generate`` takes every request at once so an engine with continuous batching can run them
    concurrently; ``on_result(index, completion)`` is called as each one finishes (for progress).
    ``stream`` yields text pieces and ends with the Completion.
    """

    name: str  # "hf", "llama.cpp", "openai"
    model: str  # what is loaded (a path or a model name)
    precision: str  # "fp32", "bf16", "f16", "q8_0", "api", ...

    def generate(self, requests: Sequence[Request],
                 on_result: Callable[[int, Completion], None] | None = None) -> list[Completion]: ...

    def stream(self, request: Request) -> Iterator[str | Completion]: ...

    def close(self) -> None: ...
