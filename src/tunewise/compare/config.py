"""The `tunewise compare` config (``kind: compare``): which arms to run on which eval set, how to
score them, and what hardware and volume to price them at."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from tunewise.compare.stats import DEFAULT_TOLERANCE
from tunewise.config import RunConfig, Strict
from tunewise.costs import DEFAULT_LOCAL_UTILISATION, DEFAULT_REVIEW_MINUTES
from tunewise.evaluate import JudgeConfig, MetricName, TaskChecks
from tunewise.infer.llamacpp import GGUF_TYPES
from tunewise.models import DTYPE_NAMES

ARM_TYPES = ("prompt", "few_shot", "rag", "finetuned", "api")


class ArmBase(Strict):
    name: str | None = Field(None, description="Label in the report (default: the arm type).")
    system_prompt: str | None = Field(None, description="Overrides the top-level system_prompt for this arm.")


class PromptArm(ArmBase):
    """The base model with a system prompt, zero-shot."""

    type: Literal["prompt"]


class FewShotArm(ArmBase):
    """The base model with k fixed training examples as demonstrations in the prompt."""

    type: Literal["few_shot"]
    k: int = Field(3, ge=1, le=64, description="Number of demonstrations.")
    examples_file: str | None = Field(None, description="Where the demonstrations come from (default: train_file).")


class RagArm(ArmBase):
    """Retrieval-augmented: top-k document chunks and/or the k most similar training examples."""

    type: Literal["rag"]
    docs: str | None = Field(None, description="Documents folder to retrieve chunks from.")
    index_dir: str | None = Field(None, description="Where to keep the index (default: inside output_dir).")
    k: int = Field(4, ge=1, le=64, description="Chunks put into the prompt.")
    mode: Literal["hybrid", "bm25", "dense"] = Field("hybrid", description="Retrieval mode.")
    examples_k: int = Field(0, ge=0, le=64, description="Most similar training examples shown as demonstrations.")
    examples_file: str | None = Field(None, description="Where those examples come from (default: train_file).")

    @model_validator(mode="after")
    def _something(self) -> "RagArm":
        if not self.docs and not self.examples_k:
            raise ValueError("a rag arm needs docs (a documents folder) and/or examples_k > 0")
        return self


class FinetunedArm(ArmBase):
    """A model fine-tuned by `tunewise train` (run directory), or trained here from a train section."""

    type: Literal["finetuned"]
    run: str | None = Field(None, description="Run directory written by `tunewise train`.")
    train: RunConfig | None = Field(None, description="Run config to train first (datasets default to train_file).")

    @model_validator(mode="after")
    def _one_source(self) -> "FinetunedArm":
        if (self.run is None) == (self.train is None):
            raise ValueError("a finetuned arm needs exactly one of run (a run directory) or train (a run config)")
        return self


class ApiArm(ArmBase):
    """Any OpenAI-compatible chat model; skipped with a note when its key is not set."""

    type: Literal["api"]
    model: str = Field(..., description="Model name sent to the API, e.g. gpt-4o-mini.")
    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible base URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the key.")
    provider: str | None = Field(None, description="genai-prices provider id (default: guessed from the model).")
    price_input_per_mtok_usd: float | None = Field(None, ge=0, description="Override: USD per 1M input tokens.")
    price_output_per_mtok_usd: float | None = Field(None, ge=0, description="Override: USD per 1M output tokens.")
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _both_prices_or_neither(self) -> "ApiArm":
        # the config's prices replace genai-prices' only as a pair; one alone would be silently ignored
        given = {k: getattr(self, k) for k in ("price_input_per_mtok_usd", "price_output_per_mtok_usd")}
        missing = [k for k, v in given.items() if v is None]
        if len(missing) == 1:
            other = next(k for k in given if k not in missing)
            raise ValueError(f"{other} is set but {missing[0]} is not: set both (USD per 1M tokens) to price "
                             f"this arm from the config, or neither to use genai-prices")
        return self


Arm = Annotated[Union[PromptArm, FewShotArm, RagArm, FinetunedArm, ApiArm], Field(discriminator="type")]


class Hardware(Strict):
    """What the local arms run on, priced per hour in the config's currency."""

    name: str = Field("CPU box (2 vCPU)", description="Shown in the report.")
    price_per_hour: float = Field(4.0, ge=0, description="Hourly price in `currency` (rented GPU, or a CPU box).")
    always_on: bool = Field(True, description=(
        "Machines rented for the whole month (a server kept up), as many as `monthly_queries` needs; false: "
        "billed only for the hours the load needs (autoscaled or shared hardware)."))
    utilisation: float = Field(DEFAULT_LOCAL_UTILISATION, gt=0, le=1, description=(
        "Average share of the measured throughput a deployment uses (load varies over the day; a server keeps "
        "headroom for its latency). 1 = priced as if always saturated."))
    min_machines: int = Field(1, ge=1, description="Machines kept on all month whatever the volume (always_on).")


#: every local arm's precision: llama.cpp's GGUF types and the HF dtype names
KNOWN_PRECISIONS = tuple(dict.fromkeys(("auto", *GGUF_TYPES, *DTYPE_NAMES)))


class CompareConfig(Strict):
    """Run several arms on the same eval set with the same metrics, then recommend one."""

    kind: Literal["compare"]
    name: str = Field("comparison", description="Title of the report.")
    base_model: str = Field("smollm2-135m", description="Model for the prompt, few_shot and rag arms.")
    eval_file: str = Field(..., description="Held-out conversations with reference answers.")
    eval_format: str = Field("auto", description="Format of eval_file.")
    eval_mapping: dict[str, str] = Field(default_factory=dict, description="Column mapping for eval_file.")
    train_file: str | None = Field(None, description="Training examples (few-shot, RAG demonstrations, training).")
    train_format: str = Field("auto", description="Format of train_file.")
    system_prompt: str | None = Field(None, description="System prompt of the prompt/few_shot/rag/api arms.")
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Longest generated answer.")
    limit: int | None = Field(None, ge=1, description="Use only the first N eval examples.")
    metrics: list[MetricName] | None = Field(None, description="Metrics (default: all that apply).")
    primary_metric: Literal["auto", "exact_match", "rouge_l", "chrf", "checks", "checks_all", "judge"] = Field(
        "auto", description="The quality number the recommendation uses (auto: checks if declared, else rouge_l)."
    )
    checks: TaskChecks = Field(default_factory=TaskChecks, description="Task checks on every answer.")
    judge: JudgeConfig | None = Field(None, description="Optional LLM-as-judge.")
    hardware: Hardware = Field(default_factory=Hardware, description="Where local arms run and its hourly price.")
    engine: Literal["auto", "hf", "hf-batch", "llama.cpp"] = Field("auto", description=(
        "Engine of every local arm: auto (llama.cpp when installed, else hf), hf (the reference), hf-batch (padded batches; fastest in bulk with native bf16) or llama.cpp."))
    precision: str = Field("auto", description=(
        "Precision of every local arm: llama.cpp GGUF type (auto = f16, f32, bf16, q8_0) or hf (auto, fp32, bf16)."))
    n_parallel: int | None = Field(None, ge=1, le=256, description="llama.cpp: requests decoded together (default 8).")
    latency_samples: int = Field(5, ge=0, le=1000, description=(
        "Per local arm, eval inputs answered alone first (latency at concurrency 1); the rest go at once (throughput)."))
    parity_prompts: int = Field(4, ge=1, le=64, description=(
        "Eval prompts each local model is checked on against the HF reference before the fast engine is trusted."))
    on_parity_failure: Literal["fallback", "stop"] = Field("fallback", description=(
        "When a model fails the parity check: every local arm answers with the reference engine (fallback), or stop."))
    currency: Literal["INR", "USD"] = Field("INR", description="Currency of hardware.price_per_hour and the report.")
    usd_rate: float | None = Field(None, gt=0, description="Units of `currency` per USD (default: the shipped fx table).")
    monthly_queries: int = Field(100_000, ge=0, description="Queries per month, for the monthly cost.")
    amortise_months: float = Field(12, gt=0, description=(
        "Months over which one-off costs (training, preparing labelled examples) are spread in the monthly cost."))
    review_minutes_per_example: float = Field(DEFAULT_REVIEW_MINUTES, ge=0, description=(
        "Minutes of review each labelled example an arm needs costs (data preparation)."))
    reviewer_hourly_rate: float | None = Field(None, ge=0, description=(
        "Reviewer's hourly rate in `currency` (default: 600 INR or 30 USD)."))
    prefix_cache_hours: float = Field(1.0, gt=0, description=(
        "How long a serving engine keeps a shared prompt prefix cached: local arms pay its prefill once per "
        "this many hours of queries."))
    quality_tolerance: float = Field(DEFAULT_TOLERANCE, ge=0, le=1, description=(
        "Smallest quality difference that counts: one arm beat another only when the 95% paired interval of "
        "their difference excludes 0 and the difference is larger than this."))
    min_quality: float | None = Field(None, ge=0, le=1, description="Below this quality no arm is fit for use.")
    sample_outputs: int = Field(6, ge=0, le=100, description="Examples shown side by side in the report.")
    output_dir: str = Field("reports/compare", description="Where report.json, report.html and outputs go.")
    arms: list[Arm] = Field(..., min_length=1, description="The arms to compare.")

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        # checked here, not when the first local arm opens its engine (after a training run)
        if value.lower() not in KNOWN_PRECISIONS:
            raise ValueError(f"{value!r} is not known; use one of: {', '.join(KNOWN_PRECISIONS)} "
                             f"(llama.cpp: {', '.join(GGUF_TYPES)}; hf: fp32, bf16, fp16)")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> "CompareConfig":
        seen: dict[str, int] = {}
        for arm in self.arms:
            if arm.name is None:
                n = seen.get(arm.type, 0)
                object.__setattr__(arm, "name", arm.type if n == 0 else f"{arm.type}-{n + 1}")
            seen[arm.type] = seen.get(arm.type, 0) + 1
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(dup)} (set name: on each arm)")
        return self
