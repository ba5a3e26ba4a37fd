"""What each way of shipping an LLM feature costs per month at a given query volume.

Options (the guide's comparison, plus prompting alone and RAG on a local model for on-premise):

* ``rag_cheap_api`` / ``rag_frontier_api``: retrieval + an API model; per-query price of
  (prompt + retrieved context) input tokens and output tokens, plus one embedding call;
* ``finetune_local``: LoRA fine-tune an open model, serve it on your own GPU(s) that are on all month
  (as many as the load needs at the assumed utilisation, at least ``local_min_gpus``);
* ``finetune_hosted``: the same adapter on a serverless host billed per token (default: Fireworks'
  Llama 3.1 8B price; LoRA adapters are billed at the base model's rate there);
* ``openai_finetune``: OpenAI fine-tuning: training tokens x the training price, then the tuned
  model's per-token prices;
* ``prompt_cheap_api`` (no retrieval) and ``rag_local`` (retrieval + an open model on your GPU).

Every API price comes from the ``genai-prices`` package's bundled snapshot (never fetched at run
time); GPU prices from the shipped, dated ``tables/gpus.yaml``. Setup cost = engineering hours x rate
+ training compute; the monthly figure used for break-even adds setup / ``amortise_months``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from tunewise.config import Strict
from tunewise.errors import TunewiseError
from tunewise.formatting import money, short
from tunewise.tables import check_currency, find_gpu, gpu_table_source, load_fx, load_gpus, load_table, usd_rate

OPTION_LABELS = {
    "prompt_cheap_api": "Prompting + cheap API model",
    "rag_cheap_api": "RAG + cheap API model",
    "rag_frontier_api": "RAG + frontier API model",
    "prompt_local": "Prompting + open model run locally",
    "rag_local": "RAG + open model run locally",
    "finetune_local": "Fine-tune + run locally",
    "finetune_hosted": "Fine-tune + hosted deployment",
    "openai_finetune": "OpenAI fine-tuning",
}
GUIDE_OPTIONS = ("rag_cheap_api", "rag_frontier_api", "finetune_local", "finetune_hosted", "openai_finetune")
Currency = Literal["USD", "INR"]


# ---------------------------------------------------------------------------------------------
# API prices (genai-prices, offline)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiPrice:
    model: str
    provider: str
    usd_per_query: float
    input_usd_per_mtok: float
    output_usd_per_mtok: float


def api_price(model: str, input_tokens: int, output_tokens: int, provider: str | None = None,
              cached_input_tokens: int = 0) -> ApiPrice:
    """Per-query price of an API model from genai-prices' bundled snapshot (no network).

    ``cached_input_tokens`` of the ``input_tokens`` are billed at the provider's cached-input price
    (genai-prices bills them at the full input price when it has none for the model).
    """
    from genai_prices import Usage, calc_price

    try:
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                      cache_read_tokens=min(cached_input_tokens, input_tokens) or None)
        calc = calc_price(usage, model, provider_id=provider)
        unit = calc_price(Usage(input_tokens=1_000_000, output_tokens=1_000_000), model, provider_id=provider)
    except LookupError as e:
        raise TunewiseError(
            f"no price for model '{model}'" + (f" at provider '{provider}'" if provider else "") + f" ({e})",
            "use a model id genai-prices knows, e.g. gpt-4o-mini, gpt-5, claude-sonnet-4-5, gemini-2.5-flash",
        ) from None
    return ApiPrice(
        model=calc.model.id,
        provider=calc.provider.id,
        usd_per_query=float(calc.total_price),
        input_usd_per_mtok=float(unit.input_price),
        output_usd_per_mtok=float(unit.output_price),
    )


# Providers cache a prompt's prefix only from this length on (OpenAI and Anthropic: 1,024 tokens).
API_MIN_CACHED_PREFIX_TOKENS = 1024


def api_cost_per_1k_usd(model: str, provider: str | None, input_tokens: float, output_tokens: float,
                        price_in: float | None = None, price_out: float | None = None,
                        shared_prefix_tokens: float = 0.0) -> tuple[float | None, str]:
    """USD for 1,000 queries of the given mean token counts, and where the price came from.

    Prices given in the config (USD per 1M tokens) win (every input token at that price);
    otherwise genai-prices' snapshot through :func:`api_price`. ``shared_prefix_tokens`` (the
    system prompt and demonstrations every query starts with) are billed at the provider's
    cached-input price when genai-prices has one and the prefix reaches the providers' caching
    minimum (:data:`API_MIN_CACHED_PREFIX_TOKENS`), else at the full price; the basis says which.
    A model it does not know gives ``None`` and a note saying what to set.
    """
    prefix = min(max(shared_prefix_tokens, 0.0), input_tokens)
    if price_in is not None and price_out is not None:
        how = f"; shared prefix ≈{prefix:,.0f} tokens at the full input price" if prefix >= 1 else ""
        return (input_tokens * price_in + output_tokens * price_out) * 1000.0 / 1e6, "prices from the config" + how
    cached = prefix >= API_MIN_CACHED_PREFIX_TOKENS
    args = (model, int(round(input_tokens * 1000)), int(round(output_tokens * 1000)), provider)
    try:
        p = api_price(*args, cached_input_tokens=int(round(prefix * 1000)) if cached else 0)
        full = api_price(*args) if cached else p
    except TunewiseError as e:
        return None, f"{e.message}; set price_input_per_mtok_usd/price_output_per_mtok_usd"
    basis = f"genai-prices ({p.provider} {p.model})"
    if prefix < 1:
        return p.usd_per_query, basis
    if not cached:
        how = (f"shared prefix ≈{prefix:,.0f} tokens at the full input price (under the "
               f"{API_MIN_CACHED_PREFIX_TOKENS:,}-token minimum providers cache)")
    elif p.usd_per_query < full.usd_per_query:
        how = f"shared prefix ≈{prefix:,.0f} tokens at the cached-input price"
    else:
        how = f"shared prefix ≈{prefix:,.0f} tokens at the full input price (genai-prices has no cached-input price)"
    return p.usd_per_query, f"{basis}; {how}"


def local_cost_per_1k(seconds_per_query: float, price_per_hour: float) -> float:
    """Cost of 1,000 × ``seconds_per_query`` of hardware rented by the hour (also: training time / 1000)."""
    return seconds_per_query * 1000.0 / 3600.0 * price_per_hour


# ---------------------------------------------------------------------------------------------
# Measured arms (tunewise compare): serving from throughput, shared prefixes, one-off costs
# ---------------------------------------------------------------------------------------------

HOURS_PER_MONTH = 730.0
#: Average share of a machine's measured capacity a deployment keeps busy, for ``tunewise cost``'s GPUs
#: and compare's hardware alike: load varies over the day and a server keeps headroom for its latency
#: (bench/serve_rate.py: even a steady random load held only ~0.8 of the closed-loop rate within a
#: 30 s p95 on a 2-core CPU).
DEFAULT_LOCAL_UTILISATION = 0.5


def machines_needed(queries_per_month: float, capacity_per_machine_month: float, min_machines: int = 1) -> int:
    """Machines (GPUs, CPU boxes) kept on all month to serve ``queries_per_month`` when each serves
    ``capacity_per_machine_month`` at the assumed utilisation; never fewer than ``min_machines``."""
    if capacity_per_machine_month <= 0 or math.isinf(capacity_per_machine_month):
        return min_machines
    # a volume at exactly one machine's capacity needs that machine, not a float rounding's second one
    return max(min_machines, math.ceil(queries_per_month / capacity_per_machine_month - 1e-9))


# What a reviewer costs per hour when the config does not say (a domain expert checking examples),
# in the report's currency: labour is not priced by exchange rate.
DEFAULT_REVIEWER_RATE = {"INR": 600.0, "USD": 30.0}
DEFAULT_REVIEW_MINUTES = 2.0  # to read, check and correct one labelled example


@dataclass(frozen=True)
class LocalPricing:
    """How a local arm's serving cost was worked out (cost in the hourly price's currency)."""

    cost_per_1k: float
    method: Literal["throughput", "sequential"]
    queries_per_hour: float | None  # None: unbounded (an arm timed at 0 s a query)
    concurrency: int
    shared_prefix_tokens: float
    prefix_seconds_saved: float  # per query, by not prefilling the shared prefix again
    basis: str
    note: str | None = None
    utilisation: float = 1.0  # share of queries_per_hour a deployment uses on average
    always_on: bool = False  # machines rented all month (else billed for the hours the load needs)
    min_machines: int = 1
    machine_month: float = 0.0  # price of one machine for a month
    queries_per_machine_month: float | None = None  # what one machine serves a month at ``utilisation``
    machines: int | None = None  # kept on at ``monthly_queries`` (always_on)
    running_monthly: float | None = None  # at ``monthly_queries``

    def running_at(self, queries_per_month: float) -> float:
        """Running cost of a month at ``queries_per_month`` (the price's currency)."""
        return running_monthly_at(self.as_dict(), queries_per_month)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_serving_price(price_per_hour: float, seconds_per_query: float, *, throughput_qph: float | None = None,
                        concurrency: int | None = None, shared_prefix_tokens: float = 0.0,
                        uncached_prefix_tokens: float | None = None, prefill_s_per_token: float | None = None,
                        queries_per_cache: float = 1.0, hardware: str = "", currency: str = "",
                        utilisation: float = 1.0, always_on: bool = False, min_machines: int = 1,
                        monthly_queries: float | None = None,
                        hours_per_month: float = HOURS_PER_MONTH) -> LocalPricing:
    """Serving cost of 1,000 queries on hardware rented at ``price_per_hour``.

    * ``queries_per_hour`` is ``throughput_qph``, what the hardware sustained with ``concurrency``
      requests decoded together; without it (fallback, with a note) ``3600 / seconds_per_query``,
      queries answered one after another.
    * Shared prompt prefix: a serving engine's prompt cache prefills the prefix every query starts
      with (system prompt, fixed demonstrations) once per cache lifetime (``queries_per_cache``
      queries), not once per query. The part the measuring engine prefilled again for every query
      (``uncached_prefix_tokens``; default the whole prefix) × ``prefill_s_per_token`` is taken off
      each query's share of the hour (prefill is compute-bound: batching does not make it cheaper).
    * A deployment uses ``utilisation`` of that rate on average, so one machine serves
      ``queries_per_hour × utilisation × hours_per_month`` queries a month.
    * ``always_on``: machines are rented for the whole month, as many as ``monthly_queries`` needs and
      at least ``min_machines`` (:func:`machines_needed`, as ``tunewise cost`` prices local GPUs); the
      cost per 1,000 is that month's bill ÷ ``monthly_queries`` × 1000, so at low volume every local
      arm costs the same machine. Otherwise billed for the hours the load needs:
      ``price_per_hour ÷ (queries_per_hour × utilisation) × 1000``.
    """
    if always_on and monthly_queries is None:
        raise ValueError("always_on pricing needs monthly_queries")
    where = f" on {hardware}" if hardware else ""
    hourly = f"{price_per_hour:g}{' ' + currency if currency else ''}/hour"
    measured = throughput_qph is not None and throughput_qph > 0
    n = int(concurrency or 1) if measured else 1
    qph = throughput_qph if measured else (3600.0 / seconds_per_query if seconds_per_query > 0 else float("inf"))
    if measured:
        basis = f"{qph:,.0f} queries/hour measured with {n} concurrent request{'s' if n != 1 else ''}{where} at {hourly}"
    else:
        basis = f"{seconds_per_query:.2f} s/query one at a time{where} at {hourly}"
    uncached = shared_prefix_tokens if uncached_prefix_tokens is None else min(uncached_prefix_tokens,
                                                                               shared_prefix_tokens)
    per_query = 3600.0 / qph if qph != float("inf") else 0.0
    saved = 0.0
    if uncached >= 1 and prefill_s_per_token and per_query > 0:
        # never more than most of the query's own share of the hour
        saved = min(uncached * prefill_s_per_token * (1.0 - 1.0 / max(queries_per_cache, 1.0)), 0.9 * per_query)
    if saved > 0:
        qph = 3600.0 / (per_query - saved)
        basis += (f", less {saved:.3g} s/query prefilling the ≈{uncached:,.0f}-token shared prompt prefix again "
                  f"(a serving engine caches it: once per {queries_per_cache:,.0f} queries)")
    elif shared_prefix_tokens >= 1 and uncached < 1:
        basis += f"; the ≈{shared_prefix_tokens:,.0f}-token shared prompt prefix came from the engine's prompt cache"
    elif shared_prefix_tokens >= 1:
        basis += f"; the ≈{shared_prefix_tokens:,.0f}-token shared prompt prefix priced per query (no prefill time measured)"
    note = None if measured else (
        "priced from sequential latency (no throughput measured for this arm): queries answered one after another, "
        "so this is an upper bound on what a server that batches concurrent requests pays")
    usable = qph * utilisation
    capacity = usable * hours_per_month if usable != float("inf") else None
    machine_month = price_per_hour * hours_per_month
    hourly_cost = price_per_hour / usable * 1000.0 if usable != float("inf") else 0.0
    machines = running = None
    if always_on:
        machines = machines_needed(monthly_queries, capacity or float("inf"), min_machines)
        running = machines * machine_month
        serves = f"one machine serves {capacity:,.0f} queries/month" if capacity else "one machine serves any volume"
        month = f"{machine_month:,.0f}" if machine_month >= 1000 else f"{machine_month:,.2f}"
        basis += (f"; at {utilisation:.0%} utilisation {serves}: {machines} on all month "
                  f"({machines} × {month}{' ' + currency if currency else ''})")
        if monthly_queries > 0:
            cost = running / monthly_queries * 1000.0
            basis += f" for {monthly_queries:,.0f} queries"
        else:  # no volume to spread the machines over: the per-query figure is the hours' worth
            cost = hourly_cost
            basis += " with no queries a month; the cost per 1,000 is billed by the hour at that utilisation"
    else:
        cost = hourly_cost
        if monthly_queries is not None:
            running = cost * monthly_queries / 1000.0
        if utilisation < 1:
            basis += f"; billed for the hours used at {utilisation:.0%} utilisation"
    # report.json must stay valid JSON: an unbounded rate (an arm measured at 0 s a query) is stored as None
    return LocalPricing(cost, "throughput" if measured else "sequential", qph if qph != float("inf") else None, n,
                        shared_prefix_tokens, saved, basis, note, utilisation, always_on, min_machines, machine_month,
                        capacity, machines, running)


def running_monthly_at(pricing: dict[str, Any], queries_per_month: float) -> float:
    """A local arm's running cost for a month at ``queries_per_month``, from its ``pricing`` dict
    (:meth:`LocalPricing.as_dict`, as report.json keeps it): machines on all month, stepping up with the
    volume, or the hours the load needs."""
    if pricing.get("always_on"):
        cap = pricing.get("queries_per_machine_month") or float("inf")
        return machines_needed(queries_per_month, cap, int(pricing.get("min_machines") or 1)) * pricing["machine_month"]
    return pricing["cost_per_1k"] * queries_per_month / 1000.0


def shared_prefix_tokens(prompts: list[list[dict]], mean_input_tokens: float) -> float:
    """Tokens of the prefix every prompt starts with (system prompt, fixed demonstrations).

    Measured in characters of the messages in order (role and content), as the longest prefix
    common to all prompts, and converted to tokens at the prompts' own mean tokens per character.
    With one prompt nothing is known to be shared: 0.
    """
    if len(prompts) < 2 or mean_input_tokens <= 0:
        return 0.0
    texts = ["".join(f"\x1e{m.get('role', '')}\x1f{m.get('content') or ''}" for m in msgs) for msgs in prompts]
    first, common = texts[0], len(texts[0])
    for t in texts[1:]:
        n = min(common, len(t))
        i = 0
        while i < n and t[i] == first[i]:
            i += 1
        common = i
    mean_chars = sum(len(t) for t in texts) / len(texts)
    return mean_input_tokens * common / mean_chars if mean_chars else 0.0


@dataclass(frozen=True)
class OneOffCosts:
    """What an approach costs once (training, labelling its examples), spread over ``months``."""

    training: float
    labelled_examples: int | None
    review_minutes_per_example: float
    reviewer_hourly_rate: float
    months: float

    @property
    def review_hours(self) -> float:
        return (self.labelled_examples or 0) * self.review_minutes_per_example / 60.0

    @property
    def data_prep(self) -> float:
        return self.review_hours * self.reviewer_hourly_rate

    @property
    def total(self) -> float:
        return self.training + self.data_prep

    @property
    def monthly(self) -> float:
        return self.total / self.months

    def as_dict(self) -> dict[str, Any]:
        return {"training": self.training, "labelled_examples": self.labelled_examples,
                "review_minutes_per_example": self.review_minutes_per_example, "review_hours": self.review_hours,
                "reviewer_hourly_rate": self.reviewer_hourly_rate, "data_prep": self.data_prep, "total": self.total,
                "months": self.months, "monthly": self.monthly}


def genai_prices_version() -> str:
    from importlib.metadata import version

    return version("genai-prices")


# ---------------------------------------------------------------------------------------------
# Assumptions
# ---------------------------------------------------------------------------------------------


class CostAssumptions(Strict):
    """Every number the cost model uses; all overridable (YAML file or --set key=value)."""

    queries_per_month: float = Field(100_000, ge=0, description="Queries per month.")
    prompt_tokens: int = Field(300, ge=1, description="Input tokens per query without retrieval (system + question).")
    few_shot_tokens: int = Field(1200, ge=0, description="Extra prompt tokens of examples for prompting alone.")
    retrieved_context_tokens: int = Field(1500, ge=0, description="Retrieved context tokens added per RAG query.")
    output_tokens: int = Field(300, ge=1, description="Output tokens per query.")
    cheap_model: str = Field("gpt-4o-mini", description="Cheap API model (genai-prices id).")
    frontier_model: str = Field("gpt-5", description="Frontier API model (genai-prices id).")
    embedding_model: str = Field("text-embedding-3-small", description="Embedding model for RAG queries.")
    embedding_provider: str = Field("openai", description="genai-prices provider id of the embedding model.")
    vector_db_usd_per_month: float = Field(0.0, ge=0, description="Vector store hosting (0 = self-hosted pgvector/FAISS).")
    hosted_model: str = Field(
        "accounts/fireworks/models/llama-v3p1-8b-instruct", description="Serverless host's base model id."
    )
    hosted_provider: str = Field("fireworks", description="genai-prices provider id of the host.")
    openai_ft_model: str = Field("gpt-4o-mini-2024-07-18", description="OpenAI model to fine-tune.")
    openai_ft_training_usd_per_mtok: float | None = Field(
        None, gt=0, description="Training price per 1M tokens (default: tables/openai_finetuning.yaml)."
    )
    model_size_b: float = Field(8.0, gt=0, description="Open model size in billions for local serving / training.")
    local_gpu: str = Field("l4", description="GPU that serves the fine-tuned model locally (tables/gpus.yaml).")
    local_tokens_per_s: float | None = Field(
        None, gt=0, description="Aggregate output tokens/s per local GPU (default: the table's 8B figure x 8 / size)."
    )
    local_utilisation: float = Field(DEFAULT_LOCAL_UTILISATION, gt=0, le=1,
                                     description="Average fraction of local GPU capacity used.")
    local_min_gpus: int = Field(1, ge=1, description="GPUs kept on all month (availability, latency).")
    hours_per_month: float = Field(730, gt=0, description="Hours a month.")
    train_gpu: str = Field("a100-80gb", description="GPU rented for fine-tuning.")
    train_examples: int = Field(5000, ge=1, description="Training examples.")
    tokens_per_example: int = Field(600, ge=1, description="Tokens per training example.")
    epochs: float = Field(3, gt=0, description="Training epochs.")
    engineering_usd_per_hour: float = Field(50.0, ge=0, description="Engineering cost per hour.")
    prompt_setup_hours: float = Field(8, ge=0, description="Hours to build a prompt-only feature.")
    rag_setup_hours: float = Field(40, ge=0, description="Hours to build the retrieval pipeline.")
    finetune_setup_hours: float = Field(80, ge=0, description="Hours for data, training, evaluation and serving.")
    amortise_months: float = Field(12, gt=0, description="Months over which setup cost is spread for break-even.")
    currency: Currency = Field("USD", description="USD or INR.")
    inr_per_usd: float | None = Field(None, gt=0, description="USD->INR rate (default: tables/fx.yaml).")


def load_assumptions(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> CostAssumptions:
    from tunewise.config import load_config

    try:
        return load_config(path, overrides, schema=CostAssumptions)
    except TunewiseError as e:
        if path is None and e.message.startswith("config has"):
            raise TunewiseError("cost assumptions have" + e.message[len("config has"):],
                                "fix the values named above (see docs/advise.md for every assumption)") from None
        raise


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclass
class CostOption:
    key: str
    label: str
    setup_usd: float
    per_query_usd: float  # marginal, at the assumed load
    fixed_monthly_usd: float  # paid whatever the volume (GPUs kept on, vector DB)
    gpu: str  # "none" or what is needed
    notes: list[str] = field(default_factory=list)
    capacity_queries_per_gpu_month: float | None = None  # local options: step function in GPUs
    gpu_usd_per_month: float | None = None
    min_gpus: int = 1

    def running_monthly_usd(self, queries: float) -> float:
        if self.capacity_queries_per_gpu_month:
            return self.gpus_at(queries) * (self.gpu_usd_per_month or 0.0) + self.fixed_monthly_usd
        return self.fixed_monthly_usd + self.per_query_usd * queries

    def total_monthly_usd(self, queries: float, amortise_months: float) -> float:
        return self.running_monthly_usd(queries) + self.setup_usd / amortise_months

    def gpus_at(self, queries: float) -> int:
        if not self.capacity_queries_per_gpu_month:
            return 0
        return machines_needed(queries, self.capacity_queries_per_gpu_month, self.min_gpus)


def _training_cost_usd(a: CostAssumptions, gpus: dict[str, Any]) -> tuple[float, str]:
    """Rented-GPU LoRA training compute for the open model (from estimate.py)."""
    from tunewise.estimate import LLAMA_SIZES, estimate, training_hours

    size = min(LLAMA_SIZES, key=lambda k: abs(float(k[:-1]) - a.model_size_b))
    key = find_gpu(a.train_gpu, gpus)
    g = gpus[key]
    tokens = a.train_examples * a.tokens_per_example * a.epochs
    est = estimate(size, training_tokens=tokens, gpus={key: g}, methods=("lora",)).method("lora")
    hours = training_hours(est.flops_per_token, tokens, g["bf16_tflops"], 0.35)
    fit = est.fits[0] if est.fits else None
    gpus_n = fit.gpus_needed if fit and fit.gpus_needed else 1
    hours /= gpus_n
    return hours * g["usd_per_hour"] * gpus_n, f"LoRA training ≈ {hours:.2f} h on {gpus_n}× {g['name']}"


def _usd(amount: float) -> str:
    return money(amount, "USD")


def cost_options(a: CostAssumptions, gpus: dict[str, Any] | None = None,
                 fmt: Callable[[float], str] = _usd) -> list[CostOption]:
    """Every option with its setup, per-query and fixed monthly cost (USD) under ``a``; ``fmt``
    writes a USD amount in the notes (in the report's currency)."""
    gpus = gpus if gpus is not None else load_gpus()
    eng = a.engineering_usd_per_hour
    emb = api_price(a.embedding_model, a.prompt_tokens, 0, a.embedding_provider).usd_per_query if a.retrieved_context_tokens else 0.0
    rag_in = a.prompt_tokens + a.retrieved_context_tokens
    opts: list[CostOption] = []

    cheap_plain = api_price(a.cheap_model, a.prompt_tokens + a.few_shot_tokens, a.output_tokens)
    opts.append(CostOption(
        "prompt_cheap_api", OPTION_LABELS["prompt_cheap_api"], a.prompt_setup_hours * eng,
        cheap_plain.usd_per_query, 0.0, "none",
        [f"{cheap_plain.model} @ {cheap_plain.provider}: {a.prompt_tokens + a.few_shot_tokens} in / {a.output_tokens} out tokens"],
    ))
    for key, model in (("rag_cheap_api", a.cheap_model), ("rag_frontier_api", a.frontier_model)):
        p = api_price(model, rag_in, a.output_tokens)
        opts.append(CostOption(
            key, OPTION_LABELS[key], a.rag_setup_hours * eng, p.usd_per_query + emb, a.vector_db_usd_per_month, "none",
            [f"{p.model} @ {p.provider}: {rag_in} in / {a.output_tokens} out tokens + embedding"],
        ))

    # Local serving: GPUs on all month, each serving tokens/s x utilisation.
    local_key = find_gpu(a.local_gpu, gpus)
    lg = gpus[local_key]
    tps = a.local_tokens_per_s or lg["decode_tokens_per_s_8b"] * 8.0 / a.model_size_b
    gpu_month = lg["usd_per_hour"] * a.hours_per_month
    train_usd, train_note = _training_cost_usd(a, gpus)

    def local(key: str, in_tokens: int, setup_hours: float, extra_fixed: float, per_query_extra: float) -> CostOption:
        # Prefill is ~10x cheaper than decode per token on GPUs; count it as a tenth of an output token.
        cost_tokens = a.output_tokens + in_tokens / 10
        capacity = tps * a.local_utilisation * a.hours_per_month * 3600 / cost_tokens
        return CostOption(
            key, OPTION_LABELS[key], setup_hours * eng + (train_usd if key == "finetune_local" else 0.0),
            gpu_month / capacity + per_query_extra, extra_fixed, f"{lg['name']} ({lg['vram_gb']:g} GB)",
            [f"{a.model_size_b:g}B model, {tps:.0f} tokens/s per GPU at {a.local_utilisation:.0%} utilisation; "
             f"one GPU serves {capacity:,.0f} queries/month at {fmt(gpu_month)}/month"]
            + ([train_note] if key == "finetune_local" else []),
            capacity_queries_per_gpu_month=capacity, gpu_usd_per_month=gpu_month, min_gpus=a.local_min_gpus,
        )

    opts.append(local("prompt_local", a.prompt_tokens + a.few_shot_tokens, a.prompt_setup_hours, 0.0, 0.0))
    opts.append(local("rag_local", rag_in, a.rag_setup_hours, a.vector_db_usd_per_month, emb))
    opts.append(local("finetune_local", a.prompt_tokens, a.finetune_setup_hours, 0.0, 0.0))

    hosted = api_price(a.hosted_model, a.prompt_tokens, a.output_tokens, a.hosted_provider)
    opts.append(CostOption(
        "finetune_hosted", OPTION_LABELS["finetune_hosted"], a.finetune_setup_hours * eng + train_usd,
        hosted.usd_per_query, 0.0, "none to serve (rented GPU to train)",
        [f"{hosted.model} @ {hosted.provider}: {a.prompt_tokens} in / {a.output_tokens} out tokens", train_note],
    ))

    ft_table = load_table("openai_finetuning.yaml")
    train_price = a.openai_ft_training_usd_per_mtok or ft_table["training_usd_per_mtok"].get(a.openai_ft_model)
    if train_price is None:
        raise TunewiseError(
            f"no OpenAI training price for '{a.openai_ft_model}'",
            f"use one of {', '.join(ft_table['training_usd_per_mtok'])} or --set openai_ft_training_usd_per_mtok=X",
        )
    ft = api_price(f"ft:{a.openai_ft_model}", a.prompt_tokens, a.output_tokens, "openai")
    train_tokens = a.train_examples * a.tokens_per_example * a.epochs
    openai_train = train_tokens / 1e6 * train_price
    opts.append(CostOption(
        "openai_finetune", OPTION_LABELS["openai_finetune"], a.finetune_setup_hours * 0.5 * eng + openai_train,
        ft.usd_per_query, 0.0, "none",
        [f"training {train_tokens / 1e6:.1f}M tokens x {fmt(train_price)}/M ({ft_table['date']}, {ft_table['source']})",
         f"{ft.model} @ openai: {a.prompt_tokens} in / {a.output_tokens} out tokens; half the setup hours (no serving)"],
    ))
    return opts


# ---------------------------------------------------------------------------------------------
# Comparison, break-even and rules of thumb
# ---------------------------------------------------------------------------------------------


@dataclass
class BreakEven:
    a: str
    b: str
    queries_per_month: float
    cheaper_above: str


@dataclass
class RuleCheck:
    rule: str
    verdict: Literal["reproduced", "refuted"]
    evidence: str


@dataclass
class CostComparison:
    assumptions: CostAssumptions
    options: list[CostOption]
    break_evens: list[BreakEven]
    rules: list[RuleCheck]
    rate: float  # currency units per USD
    currency: str
    sources: dict[str, str]

    def money(self, usd: float) -> float:
        return usd * self.rate

    def as_dict(self) -> dict[str, Any]:
        q = self.assumptions.queries_per_month
        am = self.assumptions.amortise_months
        return {
            "currency": self.currency,
            "rate_per_usd": self.rate,
            "queries_per_month": q,
            "assumptions": self.assumptions.model_dump(mode="json"),
            "options": [
                {
                    "key": o.key,
                    "label": o.label,
                    "setup": self.money(o.setup_usd),
                    "per_query": self.money(o.total_monthly_usd(q, am) - o.setup_usd / am) / q if q else self.money(o.per_query_usd),
                    "monthly_running": self.money(o.running_monthly_usd(q)),
                    "monthly_with_setup": self.money(o.total_monthly_usd(q, am)),
                    "gpu": o.gpu,
                    "gpus_at_volume": o.gpus_at(q),
                    "notes": o.notes,
                }
                for o in self.options
            ],
            "break_evens": [asdict(b) for b in self.break_evens],
            "rules_of_thumb": [asdict(r) for r in self.rules],
            "sources": self.sources,
        }


def _crossings(a: CostOption, b: CostOption, am: float, lo: float = 1e2, hi: float = 1e9) -> list[float]:
    """Volumes where the monthly cost (with amortised setup) of a and b cross, on a log grid + bisection."""
    def diff(q: float) -> float:
        return a.total_monthly_usd(q, am) - b.total_monthly_usd(q, am)

    out = []
    n = 400
    grid = [lo * (hi / lo) ** (i / n) for i in range(n + 1)]
    for q0, q1 in zip(grid, grid[1:]):
        d0, d1 = diff(q0), diff(q1)
        if d0 == 0 or (d0 < 0) == (d1 < 0):
            continue
        x0, x1 = q0, q1
        for _ in range(60):
            mid = math.sqrt(x0 * x1)
            if (diff(mid) < 0) == (d0 < 0):
                x0 = mid
            else:
                x1 = mid
        out.append(x1)
    return out


def break_evens(options: list[CostOption], am: float, pairs: list[tuple[str, str]] | None = None) -> list[BreakEven]:
    by = {o.key: o for o in options}
    if pairs is None:
        keys = [k for k in GUIDE_OPTIONS if k in by]
        pairs = [(x, y) for i, x in enumerate(keys) for y in keys[i + 1:]]
    out = []
    for x, y in pairs:
        for q in _crossings(by[x], by[y], am):
            above = x if by[x].total_monthly_usd(q * 1.05, am) < by[y].total_monthly_usd(q * 1.05, am) else y
            out.append(BreakEven(x, y, q, above))
    return out


def check_rules_of_thumb(options: list[CostOption], am: float, fmt: Callable[[float], str] = _usd) -> list[RuleCheck]:
    """The guide's two rules, tested against this model's own numbers (``fmt`` writes a USD amount)."""
    by = {o.key: o for o in options}
    rag = [by["rag_cheap_api"], by["rag_frontier_api"]]
    ft = [by["finetune_local"], by["finetune_hosted"], by["openai_finetune"]]
    out = []
    q = 100_000
    cheapest_rag = min(rag, key=lambda o: o.total_monthly_usd(q, am))
    cheapest_ft = min(ft, key=lambda o: o.total_monthly_usd(q, am))
    r, f = cheapest_rag.total_monthly_usd(q, am), cheapest_ft.total_monthly_usd(q, am)
    below = [10_000, 30_000, 100_000]
    all_below = all(
        min(o.total_monthly_usd(v, am) for o in rag) < min(o.total_monthly_usd(v, am) for o in ft) for v in below
    )
    out.append(RuleCheck(
        "Under 100K queries/month, RAG is almost always cheaper than fine-tuning",
        "reproduced" if all_below else "refuted",
        f"at 100K/month: cheapest RAG ({cheapest_rag.label}) {fmt(r)}/month vs cheapest fine-tune "
        f"({cheapest_ft.label}) {fmt(f)}/month (setup spread over {am:g} months); checked at 10K, 30K, 100K",
    ))
    q = 1_000_000
    local = by["finetune_local"].total_monthly_usd(q, am)
    cheapest_rag = min(rag, key=lambda o: o.total_monthly_usd(q, am))
    r = cheapest_rag.total_monthly_usd(q, am)
    competitive = local <= 1.1 * r
    out.append(RuleCheck(
        "Over 1M queries/month, fine-tune + local inference is competitive",
        "reproduced" if competitive else "refuted",
        f"at 1M/month: fine-tune + local {fmt(local)}/month vs cheapest RAG ({cheapest_rag.label}) {fmt(r)}/month "
        f"(competitive = within 10%)",
    ))
    return out


def compare_costs(
    assumptions: CostAssumptions | None = None,
    gpus: dict[str, Any] | None = None,
    fx: dict[str, Any] | None = None,
) -> CostComparison:
    """Cost of every option at ``assumptions.queries_per_month``, break-evens and the rule checks."""
    a = assumptions or CostAssumptions()
    gpus = gpus if gpus is not None else load_gpus()
    fx = fx or load_fx()
    currency = check_currency(a.currency)
    rate = usd_rate(currency, a.inr_per_usd, fx)
    def fmt(usd: float) -> str:  # a USD amount in the report's currency
        return money(usd * rate, currency)

    options = cost_options(a, gpus, fmt)
    am = a.amortise_months
    date, src = gpu_table_source()
    sources = {
        "api_prices": f"genai-prices {genai_prices_version()} (bundled snapshot, offline)",
        "gpu_prices": f"tunewise tables/gpus.yaml dated {date}: {src}",
        "fx": "amounts in USD" if currency == "USD" else f"{rate:g} INR per USD"
        + ("" if a.inr_per_usd else f" ({fx['date']}, {fx['source']})"),
    }
    return CostComparison(a, options, break_evens(options, am), check_rules_of_thumb(options, am, fmt), rate, currency, sources)


def volume_axes(ax, queries: float, label: str, ylabel: str) -> None:
    """Log-log monthly cost against queries per month, the user's volume marked (``tunewise cost``'s
    chart and compare's cost-by-volume chart)."""
    if queries > 0:
        ax.axvline(queries, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (queries, 1), xycoords=("data", "axes fraction"), xytext=(4, -14),
                    textcoords="offset points", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("queries per month")
    ax.set_ylabel(ylabel)


def plot_costs(comp: CostComparison, path: str | Path, keys: tuple[str, ...] | None = None) -> Path:
    """PNG of monthly cost (amortised setup included) vs queries/month, log-log, break-evens marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunewise.paths import atomic_write_bytes

    am = comp.assumptions.amortise_months
    keys = keys or GUIDE_OPTIONS
    opts = [o for o in comp.options if o.key in keys]
    qs = [10 ** (2 + 7 * i / 300) for i in range(301)]
    fig, ax = plt.subplots(figsize=(10, 6.2), dpi=110)
    styles = ["-", "--", "-", "-.", ":", "--", "-."]
    for o, ls in zip(opts, styles):
        ax.plot(qs, [comp.money(o.total_monthly_usd(q, am)) for q in qs], label=o.label, linewidth=2, linestyle=ls)
    by = {o.key: o for o in opts}
    labelled: list[tuple[float, float]] = []
    for be in comp.break_evens:
        if be.a in by and be.b in by:
            y = comp.money(by[be.a].total_monthly_usd(be.queries_per_month, am))
            ax.scatter([be.queries_per_month], [y], color="black", zorder=5, s=28)
            if any(abs(math.log10(be.queries_per_month / x)) < 0.08 and abs(math.log10(y / yy)) < 0.15 for x, yy in labelled):
                continue  # a neighbour's label already covers this point
            labelled.append((be.queries_per_month, y))
            ax.annotate(f"{short(be.queries_per_month)}", (be.queries_per_month, y), textcoords="offset points",
                        xytext=(4, -12), fontsize=7)
    volume_axes(ax, comp.assumptions.queries_per_month, f"your volume: {short(comp.assumptions.queries_per_month)}/month",
                f"monthly cost ({comp.currency}, setup spread over {am:g} months)")
    ax.set_title("Monthly cost vs volume (dots: break-even points)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.text(0.01, 0.005, f"API prices: {comp.sources['api_prices']}; GPU prices: tunewise tables/gpus.yaml",
             fontsize=6, color="grey")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
