"""The server's counters, written in Prometheus' text format for ``GET /metrics``.

Touched only from the event loop (one thread), so plain integers are enough.
"""

from __future__ import annotations

import bisect
from collections import Counter

# Request latency on CPU spans from a cached short answer to minutes of decoding.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS_S):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.buckets + (float("inf"),), self.counts):
            cumulative += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        out += [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    def __init__(self):
        self.requests = Counter()  # (path, status) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.latency = Histogram()
        self.ttft = Histogram()

    def count_request(self, path: str, status: int) -> None:
        self.requests[(path, status)] += 1

    def count_completion(self, prompt_tokens: int, generated_tokens: int, seconds: float,
                         ttft_s: float | None) -> None:
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        self.latency.observe(seconds)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)

    def render(self, running: int, waiting: int, slots: int, ready: bool) -> str:
        lines = ["# HELP tunewise_requests_total HTTP requests answered, by path and status code.",
                 "# TYPE tunewise_requests_total counter"]
        for (path, status), n in sorted(self.requests.items()):
            lines.append(f'tunewise_requests_total{{path="{path}",status="{status}"}} {n}')

        def one(name: str, kind: str, help_: str, value) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"])

        one("tunewise_prompt_tokens_total", "counter", "Prompt tokens of completed requests.", self.prompt_tokens)
        one("tunewise_generated_tokens_total", "counter", "Tokens generated for completed requests.",
            self.generated_tokens)
        one("tunewise_requests_running", "gauge", "Requests holding a slot (generating).", running)
        one("tunewise_requests_waiting", "gauge", "Requests queued for a slot.", waiting)
        one("tunewise_slots", "gauge", "Requests the engine runs at once.", slots)
        one("tunewise_ready", "gauge", "1 once the model is loaded.", int(ready))
        for name, hist, help_ in (
            ("tunewise_request_duration_seconds", self.latency, "Time from a slot to the last token."),
            ("tunewise_time_to_first_token_seconds", self.ttft, "Time from a slot to the first token."),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"] + hist.lines(name)
        return "\n".join(lines) + "\n"
