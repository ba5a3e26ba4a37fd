"""What a synth run costs: per-token prices from genai-prices' bundled snapshot (as `tunewise
advise` and `compare` price API models), or given by hand, or per hour for a local endpoint; the
dry-run estimate; and the hard budget, which reserves each request's worst case (its prompt plus
``max_tokens``) before sending it, so the token cost can never pass ``--max-cost``. Running time
(``--usd-per-hour``) is checked the same way, with the longest request so far as the time the
requests in flight may still take: it stays under the budget unless a request takes longer than
every one before it."""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from tunewise.errors import TunewiseError



def check_budget(pricing: Pricing, max_usd: float | None) -> None:
    """A ``--max-cost`` needs a price to count against: an hourly one, or a token price that is not 0."""
    if max_usd is not None and not pricing.usd_per_hour and not (pricing.input_usd_per_mtok or pricing.output_usd_per_mtok):
        what = "there is none" if not pricing.known else "every token is free"
        raise TunewiseError(f"--max-cost needs a price, and {what} ({pricing.source})",
                            "give --usd-per-hour (what the endpoint's machine costs an hour; for a local endpoint) "
                            "or --price-per-mtok INPUT,OUTPUT (USD per million tokens)")


class BudgetReached(Exception):
    """Sending the next request could pass the budget."""


def is_local_endpoint(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname or ""
    if host in ("localhost",) or host.endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


@dataclass
class Pricing:
    """USD per million input/output tokens and/or per hour of running; ``source`` says where from."""

    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    usd_per_hour: float = 0.0
    source: str = ""

    @property
    def known(self) -> bool:
        return self.input_usd_per_mtok is not None

    def tokens_usd(self, input_tokens: int, output_tokens: int) -> float:
        if not self.known:
            return 0.0
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6

    def to_dict(self) -> dict:
        return {"input_usd_per_mtok": self.input_usd_per_mtok, "output_usd_per_mtok": self.output_usd_per_mtok,
                "usd_per_hour": self.usd_per_hour, "source": self.source}


def parse_price(text: str) -> tuple[float, float]:
    """``--price-per-mtok 0.15,0.60`` → (input, output) USD per million tokens."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(v < 0 for v in values):
        raise TunewiseError(f"--price-per-mtok {text!r} is not INPUT,OUTPUT in USD per million tokens",
                            "e.g. --price-per-mtok 0.15,0.60")
    return values[0], values[1]


def resolve_pricing(model: str, endpoint: str, price_per_mtok: str | None, usd_per_hour: float) -> Pricing:
    """The price of a run: ``--price-per-mtok`` if given; else genai-prices for a hosted endpoint's
    model; a local endpoint costs nothing per token (its cost is ``--usd-per-hour``)."""
    if price_per_mtok:
        i, o = parse_price(price_per_mtok)
        return Pricing(i, o, usd_per_hour, "--price-per-mtok")
    if is_local_endpoint(endpoint):
        return Pricing(0.0, 0.0, usd_per_hour, "local endpoint" + (f", ${usd_per_hour}/h" if usd_per_hour else ", no per-token price"))
    from tunewise.costs import api_price, genai_prices_version

    try:
        p = api_price(model, 1, 1)
    except TunewiseError:
        return Pricing(None, None, usd_per_hour, f"no genai-prices entry for {model!r}")
    return Pricing(p.input_usd_per_mtok, p.output_usd_per_mtok, usd_per_hour,
                   f"genai-prices {genai_prices_version()} ({p.provider}/{p.model})")


class Budget:
    """Spent and reserved USD under a hard limit (``None`` = no limit)."""

    def __init__(self, pricing: Pricing, max_usd: float | None, clock=time.monotonic):
        self.pricing = pricing
        self.max_usd = max_usd
        self.spent_tokens_usd = 0.0
        self.reserved_usd = 0.0
        self.clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self.reached = False
        self.longest_s = 0.0  # the longest request so far (seconds)
        check_budget(pricing, max_usd)

    def hours_usd(self) -> float:
        return (self.clock() - self._t0) / 3600 * self.pricing.usd_per_hour

    def spent_usd(self) -> float:
        return self.spent_tokens_usd + self.hours_usd()

    def ahead_usd(self) -> float:
        """What the running time may still cost before the requests in flight are done: the longest
        request so far, at ``usd_per_hour`` (requests run side by side, so once, not per request)."""
        return self.longest_s / 3600 * self.pricing.usd_per_hour

    def reserve(self, input_tokens: int, max_output_tokens: int) -> float:
        """Reserve the worst case of one request (its prompt plus ``max_tokens``, and the longest
        request so far in running time), or raise :class:`BudgetReached`."""
        worst = self.pricing.tokens_usd(input_tokens, max_output_tokens)
        with self._lock:
            used = self.spent_usd() + self.reserved_usd
            if self.max_usd is not None and used + worst + self.ahead_usd() > self.max_usd:
                self.reached = True
                raise BudgetReached(f"the next request could cost ${worst + self.ahead_usd():.4f} and "
                                    f"${used:.4f} of ${self.max_usd:.4f} is used")
            self.reserved_usd += worst
        return worst

    def settle(self, reserved: float, input_tokens: int, output_tokens: int, seconds: float = 0.0) -> None:
        """Replace a reservation by what the request cost; ``seconds``: how long it took."""
        with self._lock:
            self.reserved_usd -= reserved
            self.spent_tokens_usd += self.pricing.tokens_usd(input_tokens, output_tokens)
            self.longest_s = max(self.longest_s, seconds)

    def release(self, reserved: float) -> None:
        with self._lock:
            self.reserved_usd -= reserved


@dataclass
class Estimate:
    requests: int
    input_tokens: int
    output_tokens_expected: int
    output_tokens_max: int
    usd_expected: float | None
    usd_max: float | None
    pricing: Pricing

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["pricing"] = self.pricing.to_dict()
        return d
