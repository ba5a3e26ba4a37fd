"""Should this team prompt, retrieve (RAG), fine-tune, or do RAG + fine-tuning?

Rules follow the project guide's five cases where fine-tuning makes sense, each a named criterion
that every reason cites:

* **C1** a consistent style or voice;
* **C2** specialised vocabulary;
* **C3** 10,000+ labelled examples;
* **C4** low latency or low inference cost at volume;
* **C5** privacy that requires running on premise.

Data minimums per goal (the guide): style 500-1,000 examples, task 1,000-5,000, domain vocabulary
5,000-20,000. Costs come from :mod:`tunewise.costs` at the user's volume, the fine-tuning "how"
(method, memory, tool, backend) from :mod:`tunewise.estimate`. A compare ``report.json`` given as
evidence takes precedence over the rules with compare's own recommendation (one decision rule,
:func:`tunewise.compare.recommend`); an unresolved comparison is never taken as a case for
fine-tuning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunewise.config import Strict
from tunewise.errors import TunewiseError
from tunewise.formatting import money

Goal = Literal["style", "vocabulary", "task", "knowledge", "general"]
GOALS: dict[str, str] = {
    "style": "a consistent style or voice",
    "vocabulary": "specialised (domain) vocabulary",
    "task": "a task with labelled examples",
    "knowledge": "knowledge Q&A from documents",
    "general": "general / one-off tasks",
}
CRITERIA: dict[str, str] = {
    "C1": "consistent style or voice",
    "C2": "specialised vocabulary",
    "C3": "10,000+ labelled examples",
    "C4": "low latency / inference cost at volume",
    "C5": "privacy requiring on-premise",
}
# The guide's minimum labelled examples per goal: (minimum, comfortable).
DATA_MINIMUMS: dict[str, tuple[int, int]] = {
    "style": (500, 1_000),
    "task": (1_000, 5_000),
    "vocabulary": (5_000, 20_000),
}
OPTIONS: dict[str, str] = {
    "prompting": "Prompting",
    "rag": "RAG",
    "finetune": "Fine-tuning",
    "rag_finetune": "RAG + fine-tuning",
}
KIND_TO_OPTION = {"prompt": "prompting", "few_shot": "prompting", "api": "prompting", "rag": "rag", "finetuned": "finetune"}


class Answers(Strict):
    """The questionnaire's answers (the same keys in an --answers YAML file)."""

    kind: Literal["advise"] = Field("advise", description="Config kind (answer files may omit it).")
    goal: Goal = Field(description="style | vocabulary | task | knowledge | general")
    labelled_examples: int = Field(0, ge=0, description="Labelled examples you have (input -> ideal output).")
    queries_per_month: int = Field(10_000, ge=0, description="Expected queries per month.")
    latency_target_ms: int | None = Field(None, gt=0, description="Median latency target in ms (none = no target).")
    on_premise: bool = Field(False, description="Data may not leave your infrastructure.")
    gpu: str = Field("none", description="GPU you have (tables/gpus.yaml name) or 'none'.")
    gpu_count: int = Field(1, ge=1, le=64, description="How many of that GPU.")
    gpu_vram_gb: float | None = Field(None, gt=0, description="VRAM per GPU, if your GPU is not in the table.")
    budget_per_month: float | None = Field(None, ge=0, description="Monthly budget in `currency` (none = no limit).")
    currency: Literal["USD", "INR"] = Field("USD", description="USD or INR.")
    base_model: str = Field("8b", description="Open model to fine-tune: a size (1b, 3b, 8b, 70b) or a model dir.")

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v


METHOD_LABELS = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}


def method_label(method: str) -> str:
    """How a training method is written in prose: LoRA, QLoRA, full fine-tuning."""
    return METHOD_LABELS.get(method, method)


def load_answers(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Answers:
    """Answers from a YAML file and/or a mapping of flags, validated (every problem at once)."""
    from tunewise.config import load_config

    try:
        return load_config(path, {k: v for k, v in (overrides or {}).items() if v is not None}, schema=Answers)
    except TunewiseError as e:
        if path is None and e.message.startswith("config has"):
            raise TunewiseError("answers have" + e.message[len("config has"):], "fix the answers named above") from None
        raise


# ---------------------------------------------------------------------------------------------
# Evidence: a compare report.json
# ---------------------------------------------------------------------------------------------


class EvidenceArm(BaseModel):
    """One arm of a `tunewise compare` report.json (fields read by advise; others ignored)."""

    model_config = ConfigDict(extra="allow")
    name: str
    kind: Literal["prompt", "few_shot", "rag", "finetuned", "api"]
    status: str = "ok"  # compare marks arms it could not run "skipped" (quality null)
    quality: float | None = Field(None, ge=0.0, le=1.0)
    cost_per_1k_queries_usd: float | None = Field(None, ge=0)
    latency_p50_s: float | None = Field(None, ge=0)


class EvidenceReport(BaseModel):
    model_config = ConfigDict(extra="allow")
    arms: list[EvidenceArm] = Field(min_length=1)
    recommendation: dict[str, Any] | None = None
    quality_tolerance: float = Field(0.02, ge=0, le=1)
    currency: str = "USD"
    primary_metric: str = "quality"


def load_evidence(path: str | Path) -> EvidenceReport:
    """Read a compare report.json; a missing, non-JSON or odd file is a clear error."""
    p = Path(path)
    if not p.is_file():
        raise TunewiseError(f"evidence file {p} does not exist", "pass the report.json written by `tunewise compare`")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TunewiseError(f"{p} is not UTF-8 text", "pass the report.json written by `tunewise compare`") from None
    except json.JSONDecodeError as e:
        raise TunewiseError(f"{p}:{e.lineno}: not valid JSON ({e.msg})", "pass the report.json written by `tunewise compare`") from None
    if not isinstance(data, dict):
        raise TunewiseError(f"{p} must be a JSON object with an 'arms' list", "see docs/advise.md for the fields read")
    try:
        report = EvidenceReport.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise TunewiseError(
            f"{p}: {key}: {first['msg'].lower()}",
            "advise reads arms[].name, kind (prompt|few_shot|rag|finetuned|api), quality (0..1), scores (per example), "
            "cost_per_1k_queries_usd, latency_p50_s; see docs/advise.md",
        ) from None
    if not any(a.status == "ok" and a.quality is not None for a in report.arms):
        raise TunewiseError(f"{p}: no arm has a measured quality (all skipped or null)",
                            "rerun `tunewise compare` so at least one arm runs, then pass its report.json")
    return report


@dataclass
class EvidenceSummary:
    path: str
    best_arm: str | None  # the measured arm advise acts on (None: the evidence does not decide)
    best_kind: str | None
    option: str | None  # the advice option it stands for; None leaves the decision to the rules
    ranking: list[dict[str, Any]]
    statement: str
    compare_arm: str | None = None  # what tunewise compare recommended
    resolved: bool = False  # compare's recommended arm beat every other arm
    finetuning_verdict: str | None = None  # paid_off | did_not_pay_off | unresolved | None


def decide_from_evidence(report: EvidenceReport, path: str, latency_target_ms: int | None) -> EvidenceSummary:
    """What a compare report.json says, by compare's own rule (:func:`tunewise.compare.recommend`).

    The report's recommendation is taken as written; the rule is applied again only to set aside
    arms slower than ``latency_target_ms`` (when some arm meets it) or for a report written before
    the rule recorded its decision. An unresolved comparison never becomes a case for fine-tuning:
    when compare picked a fine-tuned arm only as the cheapest of arms that tie, advise acts on the
    tied arm that needs no training (or, with none, leaves the decision to the rules).
    """
    from tunewise.compare.recommend import recommend

    arms = [a.model_dump() for a in report.arms]
    measured = [a for a in arms if a["status"] == "ok" and a["quality"] is not None]
    unscored = [a["name"] for a in measured if a.get("scores") is None]
    if unscored:
        raise TunewiseError(
            f"{path}: arm '{unscored[0]}' has no per-example scores (a report.json from an older tunewise compare)",
            "rerun `tunewise compare` and pass its new report.json: advise needs the per-example scores to tell "
            "a real difference from noise",
        )
    rec = report.recommendation or {}
    note = ""
    if latency_target_ms is not None:
        fast = [a for a in measured if a.get("latency_p50_s") is None or a["latency_p50_s"] * 1000 <= latency_target_ms]
        if fast and len(fast) < len(measured):
            note = f" (arms slower than your {latency_target_ms} ms target set aside, compare's rule applied to the rest)"
            rec = recommend(fast, report.quality_tolerance, report.currency, primary_metric=report.primary_metric)
    if rec.get("decision") not in ("clear", "tie"):
        rec = recommend(measured, report.quality_tolerance, report.currency, primary_metric=report.primary_metric)
    by = {a["name"]: a for a in arms}
    pick = by[rec["arm"]]
    tied = [by[n] for n in rec.get("tied_arms") or [pick["name"]]]
    # arms the pick did not beat itself (paired tests are not transitive): part of the tie as advise tells it
    tied += [by[n] for n in rec.get("unseparated_arms") or [] if n in by and by[n] not in tied]
    resolved = rec["decision"] == "clear"
    verdict = rec.get("finetuning_verdict")
    act: dict[str, Any] | None = pick
    if pick["kind"] == "finetuned" and verdict != "paid_off":
        act = next((a for a in tied if a["kind"] != "finetuned"), None)
    comparisons = rec.get("comparisons") or {}
    needs = [c["examples_needed"] for n, c in comparisons.items()
             if c.get("examples_needed") and n in {a["name"] for a in tied}]
    more = f"; about {max(needs):,} held-out examples would separate them" if needs else ""

    def describe(a: dict[str, Any]) -> str:
        iv = a.get("quality_interval")
        ci = f" [95% {iv['low']:.2f}–{iv['high']:.2f}]" if iv else ""
        return f"'{a['name']}' ({a['kind']}, {report.primary_metric} {a['quality']:.3f}{ci})"

    head = f"Measured evidence from {path}, by tunewise compare's rule{note}"
    if resolved:
        statement = f"{head}, takes precedence over the rules: {describe(pick)} beat every other arm."
    elif act is pick:
        others = ", ".join(describe(a) for a in tied[1:])
        statement = (f"{head}, takes precedence over the rules: unresolved — {describe(pick)} ties with {others} "
                     f"on this eval set{more}; compare's rule picks it among them (the cheapest, then the lower p50 "
                     "latency, then the simpler approach).")
    elif act is not None:
        statement = (f"{head}, takes precedence over the rules: unresolved — compare recommends {describe(pick)} "
                     f"only as the cheapest of arms that tie{more}, which is no evidence that fine-tuning pays "
                     f"off; {describe(act)} ties with it and needs no training.")
    else:
        statement = (f"{head}, does not decide: {describe(pick)} was recommended but no arm without training "
                     "could be compared with it, so it cannot show that fine-tuning pays off; the rules decide.")
    order = tied + sorted([a for a in measured if a not in tied], key=lambda a: -a["quality"])
    ranking = [{"name": a["name"], "kind": a["kind"], "quality": a["quality"],
                "quality_interval": a.get("quality_interval"), "cost_per_1k_queries_usd": a.get("cost_per_1k_queries_usd"),
                "latency_p50_s": a.get("latency_p50_s"),
                "vs_recommended": "recommended" if a is pick else (comparisons.get(a["name"]) or {}).get("status")}
               for a in order]
    return EvidenceSummary(
        path=path, best_arm=act["name"] if act else None, best_kind=act["kind"] if act else None,
        option=KIND_TO_OPTION[act["kind"]] if act else None, ranking=ranking, statement=statement,
        compare_arm=pick["name"], resolved=resolved, finetuning_verdict=verdict,
    )


# ---------------------------------------------------------------------------------------------
# Advice
# ---------------------------------------------------------------------------------------------


@dataclass
class Reason:
    criterion: str  # C1..C5, "data", "cost", "budget", "goal", "evidence"
    text: str
    points: int

    def __str__(self) -> str:
        tag = f"[{self.criterion}: {CRITERIA[self.criterion]}]" if self.criterion in CRITERIA else f"[{self.criterion}]"
        return f"{tag} {self.text}"


@dataclass
class OptionAdvice:
    key: str
    label: str
    score: int
    reasons: list[Reason]
    cost_option: str  # which costs.py option priced it
    setup: float
    monthly: float  # running cost at the user's volume
    per_query: float


@dataclass
class FinetunePlan:
    method: str
    base_model: str
    memory_gb: float
    hardware: str
    tool: str
    backend: str
    training_hours: float | None
    training_cost: float | None
    why: list[str]
    fits: dict[str, float]  # method -> GB
    parameters: int = 0


@dataclass
class Advice:
    answers: Answers
    recommendation: str
    ranked: list[OptionAdvice]
    plan: FinetunePlan | None
    next_commands: list[str]
    evidence: EvidenceSummary | None
    currency: str
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return OPTIONS[self.recommendation]

    def as_dict(self) -> dict[str, Any]:
        return {
            "recommendation": self.recommendation,
            "recommendation_label": self.label,
            "decided_by": "evidence" if self.evidence and self.evidence.option else "rules",
            "currency": self.currency,
            "answers": self.answers.model_dump(mode="json"),
            "ranked": [
                {**{k: v for k, v in asdict(o).items() if k != "reasons"},
                 "reasons": [{"criterion": r.criterion, "text": r.text, "points": r.points} for r in o.reasons]}
                for o in self.ranked
            ],
            "finetune_plan": asdict(self.plan) if self.plan else None,
            "next_commands": self.next_commands,
            "evidence": asdict(self.evidence) if self.evidence else None,
            "criteria": CRITERIA,
            "notes": self.notes,
        }


def _vram(answers: Answers, gpus: dict[str, Any]) -> tuple[str | None, float | None, str]:
    """(table key or None, VRAM GB or None, kind) of the user's GPU."""
    from tunewise.tables import find_gpu

    if answers.gpu.strip().lower() in ("none", "no", "", "0"):
        if answers.gpu_vram_gb:
            return None, answers.gpu_vram_gb, "consumer"
        return None, None, "none"
    key = find_gpu(answers.gpu, gpus)
    g = gpus[key]
    return key, answers.gpu_vram_gb or float(g["vram_gb"]), g["kind"]


def plan_finetune(answers: Answers, gpus: dict[str, Any], rate: float) -> FinetunePlan:
    """Method (LoRA / QLoRA / full), tool and backend that fit the user's hardware."""
    from tunewise.estimate import GB, TrainingSetup, cheapest_fit, estimate

    key, vram, kind = _vram(answers, gpus)
    tokens = max(answers.labelled_examples, 1) * 512 * 3
    est = estimate(answers.base_model, TrainingSetup(), training_tokens=tokens, gpus={k: v for k, v in gpus.items()})
    mem = {m.method: m.memory.total / GB for m in est.methods}
    why: list[str] = []
    base = est.model
    hours = cost = None
    if vram is not None and kind != "cpu":
        total_vram = vram * answers.gpu_count
        gpu_name = gpus[key]["name"] if key else f"{vram:g} GB GPU"
        hw = f"{answers.gpu_count}× {gpu_name}" if answers.gpu_count > 1 else gpu_name
        if answers.labelled_examples >= 20_000 and mem["full"] <= vram:
            method = "full"
            why.append(f"full fine-tuning fits ({mem['full']:.1f} GB ≤ {vram:g} GB) and 20,000+ examples can use it")
        elif mem["lora"] <= vram:
            method = "lora"
            why.append(f"LoRA fits on one GPU: {mem['lora']:.1f} GB ≤ {vram:g} GB")
        elif mem["qlora"] <= vram:
            method = "qlora"
            why.append(f"LoRA needs {mem['lora']:.1f} GB > {vram:g} GB; QLoRA (4-bit base) needs {mem['qlora']:.1f} GB and fits")
        elif answers.gpu_count > 1 and mem["lora"] <= total_vram * 0.9:
            method = "lora"
            why.append(f"LoRA needs {mem['lora']:.1f} GB: shard it over {answers.gpu_count} GPUs ({total_vram:g} GB)")
        else:
            method = "qlora"
            why.append(
                f"{base} does not fit your {hw}: QLoRA needs {mem['qlora']:.1f} GB > {vram:g} GB; "
                "pick a smaller base model (tunewise estimate 3b) or rent a larger GPU"
            )
        if answers.gpu_count > 1:
            tool, backend = "Axolotl or accelerate (FSDP / DeepSpeed ZeRO) across the GPUs", "peft"
        elif kind == "consumer":
            tool, backend = "Unsloth on your single consumer NVIDIA GPU (tunewise train, backend: unsloth)", "unsloth"
        else:
            tool, backend = "tunewise train with PEFT + TRL (or Unsloth) on your GPU", "auto"
        if key:
            me = est.method(method)
            fit = next((f for f in me.fits if f.key == key), None)
            if fit and fit.hours is not None:
                hours = fit.hours / answers.gpu_count
                cost = None  # your own hardware
        hardware = hw
    else:
        # No GPU: rent the cheapest GPU that fits (LoRA preferred), or a managed service.
        lora_fit = cheapest_fit(est.method("lora"))
        qlora_fit = cheapest_fit(est.method("qlora"))
        choice = min([f for f in (lora_fit, qlora_fit) if f], key=lambda f: f.usd or 0, default=None)
        method = "lora" if choice is lora_fit else "qlora"
        if choice is None:
            hardware = "several rented datacenter GPUs"
            hours = cost = None
        else:
            hardware = f"a rented {choice.name} ({choice.vram_gb:g} GB, cloud)"
            hours, cost = choice.hours, (choice.usd or 0) * rate
            why.append(f"no GPU here: {method_label(method)} of {base} needs {mem[method]:.1f} GB; the cheapest GPU "
                       f"from the table that fits is the {choice.name}")
        if answers.on_premise:
            tool, backend = "buy or place a GPU on premise, then tunewise train (PEFT; Unsloth on one consumer GPU)", "auto"
            why.append("on-premise: renting a cloud GPU may be ruled out by your privacy requirement; train on your own GPU")
        else:
            tool = ("a cloud GPU service (rent the GPU above and run tunewise train there, backend auto), "
                    "or a managed fine-tuning service (OpenAI fine-tuning / a serverless LoRA host)")
            backend = "auto"
        why.append("on CPU only the embedded smollm2-135m is practical: use it to rehearse the pipeline")
    return FinetunePlan(method, base, mem[method], hardware, tool, backend, hours, cost, why,
                        {k: round(v, 1) for k, v in mem.items()}, est.parameters)


def advise(
    answers: Answers,
    evidence: str | Path | None = None,
    gpus: dict[str, Any] | None = None,
    inr_per_usd: float | None = None,
) -> Advice:
    """Recommend prompting, RAG, fine-tuning or RAG + fine-tuning, with reasons, costs and a plan."""
    from tunewise.costs import CostAssumptions, api_price, cost_options
    from tunewise.tables import load_gpus, usd_rate

    gpus = gpus if gpus is not None else load_gpus()
    key, vram, kind = _vram(answers, gpus)  # validates the GPU name early
    rate = usd_rate(answers.currency, inr_per_usd if answers.currency == "INR" else None)
    q = answers.queries_per_month
    g = answers.goal
    n = answers.labelled_examples
    reasons: dict[str, list[Reason]] = {k: [] for k in OPTIONS}

    def add(opt: str, crit: str, pts: int, text: str) -> None:
        reasons[opt].append(Reason(crit, text, pts))

    # --- the goal and the five criteria -------------------------------------------------------
    if g == "style":
        add("finetune", "C1", 3, "a consistent style/voice is what fine-tuning teaches best; prompts drift over long outputs")
        add("prompting", "goal", 1, "a few style examples in the prompt are the quick first try")
    elif g == "vocabulary":
        add("finetune", "C2", 3, "specialised vocabulary is learned into the weights; prompts and retrieval only show it")
        add("rag", "goal", 1, "retrieving glossary/definitions helps until enough examples exist")
    elif g == "task":
        add("prompting", "goal", 1, "a task can often be specified with instructions and a few examples")
    elif g == "knowledge":
        add("rag", "goal", 4, "knowledge from documents belongs in retrieval: it stays current and citable; "
            "fine-tuning is a poor way to add facts")
        add("finetune", "goal", -3, "fine-tuning alone cannot keep documents' facts current or cite them; "
            "if fine-tuning helps here, it is on top of retrieval (RAG + fine-tuning)")
    else:
        add("prompting", "goal", 4, "general or one-off tasks: a capable model with a good prompt needs no training")

    if g in DATA_MINIMUMS:
        lo, comfy = DATA_MINIMUMS[g]
        goal_name = "domain vocabulary" if g == "vocabulary" else g
        if n < lo:
            add("finetune", "data", -3, f"{n:,} examples is below the guide's minimum for {goal_name} "
                f"({lo:,}-{comfy:,}); collect more before fine-tuning")
            add("prompting", "data", 1, f"with {n:,} examples, use them as few-shot examples for now")
        elif n < comfy:
            add("finetune", "data", 1, f"{n:,} examples meets the guide's minimum for {goal_name} ({lo:,}-{comfy:,})")
        else:
            add("finetune", "data", 1, f"{n:,} examples is at or above the guide's range for {goal_name} ({lo:,}-{comfy:,})")
    if n >= 10_000 and g != "general":
        add("finetune", "C3", 3, f"{n:,} labelled examples (10,000+): enough to beat prompting on the task")
        if g == "knowledge":
            add("rag_finetune", "C3", 2, f"{n:,} labelled Q&A examples can teach answer format/reasoning over retrieved text")
    elif g == "task" and n >= 1_000:
        add("finetune", "C3", 1, f"{n:,} labelled examples (under 10,000): fine-tuning may win; measure it with tunewise compare")
    elif g == "task":
        add("prompting", "C3", 2, f"{n:,} labelled examples is far from 10,000+: few-shot prompting first")

    if q >= 1_000_000:
        add("finetune", "C4", 2, f"{q:,} queries/month: a small tuned model with short prompts is cheaper per query at volume")
        add("rag_finetune", "C4", 2 if g == "knowledge" else 1,
            f"{q:,} queries/month: a tuned small model keeps RAG's per-query cost down")
    elif q < 100_000:
        add("rag", "C4", 1, f"{q:,} queries/month is under 100K, where RAG/prompting is almost always cheaper than fine-tuning")
        add("prompting", "C4", 1, f"{q:,} queries/month: volume too low to pay back a fine-tune")
    if answers.latency_target_ms is not None and answers.latency_target_ms < 1000:
        add("finetune", "C4", 1, f"latency target {answers.latency_target_ms} ms: a tuned small model needs no long prompt or retrieval step")
        add("rag", "C4", -1, f"latency target {answers.latency_target_ms} ms: retrieval plus a long context adds latency")

    if answers.on_premise:
        add("finetune", "C5", 2, "on-premise: you must host an open model; fine-tuning makes a small one good enough")
        if g == "knowledge":
            add("rag_finetune", "C5", 2, "on-premise document Q&A: retrieval for facts + a tuned local model for answers")
        add("prompting", "C5", -1, "on-premise rules out API models; prompting a local open model is weaker")

    # --- costs at the user's volume -----------------------------------------------------------
    local_gpu = key if key and gpus[key]["kind"] != "cpu" else "l4"
    a = CostAssumptions(
        queries_per_month=q, currency=answers.currency, local_gpu=local_gpu,
        train_examples=max(n, 1), inr_per_usd=inr_per_usd,
    )
    opts = {o.key: o for o in cost_options(a, gpus)}
    am = a.amortise_months

    def priced(option: str) -> tuple[str, float, float]:
        """(cost option key, setup USD, running monthly USD) that prices an advice option."""
        if option == "prompting":
            k = "prompt_local" if answers.on_premise else "prompt_cheap_api"
            return k, opts[k].setup_usd, opts[k].running_monthly_usd(q)
        if option == "rag":
            k = "rag_local" if answers.on_premise else "rag_cheap_api"
            return k, opts[k].setup_usd, opts[k].running_monthly_usd(q)
        if option == "finetune":
            cands = ["finetune_local"] if (answers.on_premise or key) else ["finetune_local", "finetune_hosted", "openai_finetune"]
            k = min(cands, key=lambda c: opts[c].total_monthly_usd(q, am))
            return k, opts[k].setup_usd, opts[k].running_monthly_usd(q)
        # RAG + fine-tuning: the tuned model served with retrieved context.
        ft_setup = opts["finetune_local"].setup_usd + a.rag_setup_hours * a.engineering_usd_per_hour
        if answers.on_premise or key:
            return "rag_local + finetune training", ft_setup, opts["rag_local"].running_monthly_usd(q)
        hosted = api_price(a.hosted_model, a.prompt_tokens + a.retrieved_context_tokens, a.output_tokens, a.hosted_provider)
        return "finetune_hosted with retrieved context", ft_setup, hosted.usd_per_query * q

    advices: list[OptionAdvice] = []
    costs = {}
    for opt in OPTIONS:
        costs[opt] = priced(opt)
    cheapest = min(OPTIONS, key=lambda o: costs[o][2] + costs[o][1] / am)
    if q > 0:
        add(cheapest, "C4" if cheapest in ("finetune", "rag_finetune") else "cost", 1,
            f"cheapest at your volume including setup spread over {am:g} months")
    if answers.budget_per_month is not None:
        for opt in OPTIONS:
            monthly = (costs[opt][2] + costs[opt][1] / am) * rate
            if monthly > answers.budget_per_month:
                add(opt, "budget", -2, f"about {money(monthly, answers.currency)}/month with setup spread over "
                    f"{am:g} months, over your budget of {money(answers.budget_per_month, answers.currency)}")
    # RAG + fine-tuning only makes sense when both halves have support.
    if not reasons["rag_finetune"]:
        add("rag_finetune", "goal", -2, "nothing here needs both retrieval and a tuned model; it adds both costs")
    for opt, label in OPTIONS.items():
        k, setup, monthly = costs[opt]
        advices.append(OptionAdvice(opt, label, sum(r.points for r in reasons[opt]), reasons[opt], k,
                                    setup * rate, monthly * rate, (monthly / q * rate) if q else 0.0))
    order = ["prompting", "rag", "finetune", "rag_finetune"]  # ties go to the simpler option
    advices.sort(key=lambda o: (-o.score, order.index(o.key)))

    ev = None
    notes: list[str] = []
    if evidence is not None:
        report = load_evidence(evidence)
        ev = decide_from_evidence(report, str(evidence), answers.latency_target_ms)
        if ev.option is not None:
            best = next(o for o in advices if o.key == ev.option)
            best.reasons.insert(0, Reason("evidence", ev.statement, 0))
            advices.remove(best)
            advices.insert(0, best)
        notes.append(ev.statement)
    recommendation = advices[0].key

    plan = None
    if recommendation in ("finetune", "rag_finetune") or any(o.key == "finetune" and o.score > 0 for o in advices[:2]):
        plan = plan_finetune(answers, gpus, rate)
        four_bit_gb = plan.parameters * 0.5 / 1e9
        if four_bit_gb > 20:
            notes.append(
                f"QLoRA of {plan.base_model} ({plan.parameters / 1e9:.0f}B parameters) needs about "
                f"{plan.fits['qlora']:.0f} GB with this setup; its 4-bit weights alone are about {four_bit_gb:.0f} GB, "
                "so it does not fit on a single 24 GB GPU."
            )

    nxt = _next_commands(recommendation, answers, plan)
    return Advice(answers, recommendation, advices, plan, nxt, ev, answers.currency, notes)


def _next_commands(rec: str, answers: Answers, plan: FinetunePlan | None) -> list[str]:
    q = answers.queries_per_month
    cur = f" --currency {answers.currency}" if answers.currency != "USD" else ""
    cmds = []
    if rec in ("finetune", "rag_finetune"):
        cmds += [
            "tunewise data check train.jsonl      # formats, duplicates, lengths, leakage",
            f"tunewise estimate {answers.base_model}" + (f" --gpu {answers.gpu}" if answers.gpu != "none" else "")
            + "      # memory, time and cost per method",
            "tunewise compare compare.yaml        # prompting vs RAG vs fine-tuned on held-out data",
            "tunewise train run.yaml              # method: " + (plan.method if plan else "lora")
            + (f", backend: {plan.backend}" if plan else ""),
        ]
    elif rec == "rag":
        cmds += [
            "tunewise compare compare.yaml        # measure RAG against prompting (and a fine-tune) on your questions",
        ]
    else:
        cmds += ["tunewise compare compare.yaml        # check a prompt against few-shot on held-out examples"]
    cmds.append(f"tunewise cost --queries {q}{cur}      # full cost comparison and break-even chart")
    cmds.append("tunewise advise --answers answers.yaml --evidence runs/compare/report.json   # decide on measurements")
    return cmds
