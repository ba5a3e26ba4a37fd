"""Evaluate a model on held-out conversations: loss/perplexity on the response tokens, generation
metrics against references (exact match, ROUGE-L, chrF), task checks declared in a config, an
optional LLM judge, latency and token counts. Every output is saved per example as readable JSONL.

The same scoring code serves `tunewise eval` and every arm of `tunewise compare`, so numbers from
the two are comparable.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from tunewise.config import Strict
from tunewise.errors import TunewiseError
from tunewise.paths import atomic_write_text

MetricName = Literal["loss", "exact_match", "rouge_l", "chrf", "checks", "judge"]
ALL_METRICS: tuple[str, ...] = ("loss", "exact_match", "rouge_l", "chrf", "checks", "judge")
# Metrics that score a generated answer in 0..1 (higher is better) and can be a compare's quality.
QUALITY_METRICS: tuple[str, ...] = ("exact_match", "rouge_l", "chrf", "checks", "checks_all", "judge")


# ---------------------------------------------------------------------------------------------
# Config schemas (shared with compare)
# ---------------------------------------------------------------------------------------------


class TaskChecks(Strict):
    """Properties every answer must have, each reported as a pass rate."""

    must_match: list[str] = Field(default_factory=list, description="Regexes that must match the answer.")
    must_not_match: list[str] = Field(default_factory=list, description="Regexes that must not match.")
    required_phrases: list[str] = Field(default_factory=list, description="Phrases the answer must contain.")
    forbidden_phrases: list[str] = Field(default_factory=list, description="Phrases it must not contain.")
    case_sensitive: bool = Field(False, description="Compare phrases with case (regexes: use (?i) yourself).")
    keep_from_input: list[str] = Field(
        default_factory=list,
        description="Regexes: every match in the user's prompt must reappear in the answer "
        "(e.g. amounts, dates, names that must be copied over); with a group, only the group's text.",
    )
    valid_json: bool = Field(False, description="The answer must parse as JSON.")
    json_schema: dict[str, Any] | str | None = Field(
        None, description="A JSON schema (inline mapping or path to a .json file) the answer must satisfy."
    )
    max_chars: int | None = Field(None, ge=1, description="Longest allowed answer in characters.")
    max_words: int | None = Field(None, ge=1, description="Longest allowed answer in words.")

    @field_validator("must_match", "must_not_match", "keep_from_input")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"regular expression {p!r} does not compile: {e}") from None
        return patterns

    def is_empty(self) -> bool:
        return not (
            self.must_match or self.must_not_match or self.required_phrases or self.forbidden_phrases
            or self.keep_from_input or self.valid_json or self.json_schema is not None
            or self.max_chars or self.max_words
        )


class JudgeConfig(Strict):
    """An LLM judge behind any OpenAI-compatible endpoint; the key comes from an environment variable."""

    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible API base URL.")
    model: str = Field(..., description="Judge model name, e.g. gpt-4o-mini.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    rubric: str = Field(..., description="What a good answer looks like; the judge scores 1..max_score.")
    max_score: int = Field(5, ge=2, le=100, description="Top of the judge's scale.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")


class EvalConfig(Strict):
    """A `tunewise eval --config` file (``kind: eval``)."""

    kind: Literal["eval"] = "eval"
    model: str | None = Field(None, description="Model or run directory (the --model option wins).")
    eval_file: str | None = Field(None, description="Held-out conversations (the --data option wins).")
    eval_format: str = Field("auto", description="Format of eval_file (as for training datasets).")
    mapping: dict[str, str] = Field(default_factory=dict, description="Column mapping for eval_file.")
    metrics: list[MetricName] | None = Field(None, description="Metrics to compute (default: all that apply).")
    checks: TaskChecks = Field(default_factory=TaskChecks, description="Task checks on every answer.")
    judge: JudgeConfig | None = Field(None, description="Optional LLM-as-judge.")
    system_prompt: str | None = Field(None, description="System prompt added when the example has none.")
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Longest generated answer.")
    sequence_len: int = Field(2048, ge=16, description="Truncation length for the loss computation.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")
    engine: Literal["auto", "hf", "hf-batch", "llama.cpp"] = Field(
        "auto", description="Inference engine: auto (llama.cpp when installed, else hf), hf (the reference), hf-batch (padded batches; fastest in bulk with native bf16) or llama.cpp.")
    precision: str = Field("auto", description="llama.cpp: GGUF type (auto = f16, f32, bf16, q8_0); hf: auto/fp32/bf16.")
    n_parallel: int | None = Field(None, ge=1, le=256, description="llama.cpp: requests decoded together (default 8).")
    latency_samples: int = Field(5, ge=0, le=1000, description=(
        "Requests answered alone first, for latency at concurrency 1; the rest go at once (throughput)."))
    parity_prompts: int = Field(4, ge=1, le=64, description="Eval prompts the fast engine is checked on against the reference.")
    on_parity_failure: Literal["fallback", "stop"] = Field(
        "fallback", description="When the fast engine fails the parity check: answer with the reference, or stop.")


# ---------------------------------------------------------------------------------------------
# Eval data
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalExample:
    """One held-out conversation split into the prompt and the reference answer (its last turn)."""

    id: str
    messages: list[dict]  # everything before the final assistant turn
    reference: str | None  # the final assistant turn, if the data has one
    conversation: Any = None  # the tunewise.data Conversation (used for loss)
    must_include: list[str] = field(default_factory=list)  # per-example facts the answer must contain

    @property
    def question(self) -> str:
        """The last user message (what retrieval and the report show)."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                return m["content"]
        return self.messages[-1]["content"] if self.messages else ""


def examples_from_conversations(convs: list, source: str = "eval") -> list[EvalExample]:
    out: list[EvalExample] = []
    for i, conv in enumerate(convs):
        msgs = [{"role": m.role, "content": m.content or ""} for m in conv.messages]
        reference = None
        if msgs and msgs[-1]["role"] == "assistant":
            reference = msgs[-1]["content"]
            msgs = msgs[:-1]
        if not any(m["role"] == "user" for m in msgs):
            where = getattr(conv, "source", None) or f"{source} example {i + 1}"
            raise TunewiseError(
                f"{where}: has no user message to answer",
                "each eval example needs a user turn (and ideally the reference assistant answer)",
            )
        extra = (getattr(conv, "meta", None) or {}).get("extra") or {}
        facts = extra.get("must_include") or []
        if isinstance(facts, str):
            facts = [facts]
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            where = getattr(conv, "source", None) or f"{source} example {i + 1}"
            raise TunewiseError(f"{where}: must_include must be a list of phrases", 'write it as "must_include": ["9 days"]')
        ident = str(extra.get("id", i + 1))
        out.append(EvalExample(id=ident, messages=msgs, reference=reference, conversation=conv, must_include=facts))
    return out


def load_eval_set(path: str | Path, format: str = "auto", mapping: dict | None = None,
                  limit: int | None = None, what: str = "eval file") -> list[EvalExample]:
    """Read held-out conversations in any format tunewise trains on (clear errors on bad files).

    ``what`` names the file's role in error messages ("eval file", "train_file").
    """
    from tunewise.data import load_conversations

    p = Path(path)
    if not p.exists():
        key = "eval_file / --data" if what == "eval file" else what
        raise TunewiseError(f"{what} {p} does not exist", f"check the path ({key})")
    try:
        convs = load_conversations(p, format=format, mapping=mapping or None)
    except TunewiseError as e:
        raise TunewiseError(f"{what}: {e.message}", e.hint) from None
    if not convs:
        raise TunewiseError(f"{what} {p} holds no examples", "add held-out conversations to it")
    if limit:
        convs = convs[:limit]
    return examples_from_conversations(convs, source=str(p))


# ---------------------------------------------------------------------------------------------
# Metrics on one answer
# ---------------------------------------------------------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(text.strip().split()).casefold()


def exact_match(output: str, reference: str) -> float:
    """1.0 when the answer equals the reference ignoring case and runs of whitespace."""
    return float(_normalize(output) == _normalize(reference))


_ROUGE = None
_CHRF = None


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F1 (Google's rouge-score package, Porter stemming)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_ROUGE.score(reference, output)["rougeL"].fmeasure)


def chrf(output: str, reference: str) -> float:
    """chrF (sacrebleu's implementation), scaled to 0..1."""
    global _CHRF
    if _CHRF is None:
        from sacrebleu.metrics import CHRF

        _CHRF = CHRF()
    return float(_CHRF.sentence_score(output, [reference]).score) / 100.0


def _load_schema(spec: dict | str) -> dict:
    if isinstance(spec, dict):
        return spec
    p = Path(spec)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError:
        raise TunewiseError(f"checks.json_schema: file {p} cannot be read", "check the path") from None
    except json.JSONDecodeError as e:
        raise TunewiseError(f"checks.json_schema: {p}:{e.lineno} is not valid JSON: {e.msg}",
                            "fix the schema file") from None


def _strip_fence(text: str) -> str:
    """Models often wrap JSON in a ``` fence; the content inside is what is checked."""
    m = re.fullmatch(r"\s*```[a-zA-Z]*\s*\n(.*?)\n?```\s*", text, flags=re.S)
    return m.group(1) if m else text


FACTS_CHECK = "includes the expected facts"


def run_checks(output: str, checks: TaskChecks, prompt: str = "", must_include: list[str] | None = None) -> dict[str, bool]:
    """Each declared check -> passed? Keys are readable names such as ``contains 'NOTICE'``.

    ``must_include`` are the example's own expected facts (an eval row's ``must_include`` key),
    matched ignoring case and runs of whitespace.
    """
    res: dict[str, bool] = {}
    if must_include:
        res[FACTS_CHECK] = all(_normalize(f) in _normalize(output) for f in must_include)
    fold = (lambda s: s) if checks.case_sensitive else str.casefold
    for p in checks.must_match:
        res[f"matches /{p}/"] = re.search(p, output) is not None
    for p in checks.must_not_match:
        res[f"does not match /{p}/"] = re.search(p, output) is None
    for ph in checks.required_phrases:
        res[f"contains '{ph}'"] = fold(ph) in fold(output)
    for ph in checks.forbidden_phrases:
        res[f"lacks '{ph}'"] = fold(ph) not in fold(output)
    for p in checks.keep_from_input:
        wanted = [(m.group(1) if m.re.groups else m.group(0)).strip() for m in re.finditer(p, prompt)]
        res[f"keeps /{p}/ from input"] = all(w in output for w in wanted)
    parsed: Any = None
    ok_json = False
    if checks.valid_json or checks.json_schema is not None:
        try:
            parsed = json.loads(_strip_fence(output))
            ok_json = True
        except (json.JSONDecodeError, ValueError):
            ok_json = False
    if checks.valid_json:
        res["valid JSON"] = ok_json
    if checks.json_schema is not None:
        import jsonschema

        schema = _load_schema(checks.json_schema)
        ok = False
        if ok_json:
            try:
                jsonschema.validate(parsed, schema)
                ok = True
            except jsonschema.ValidationError:
                ok = False
            except jsonschema.SchemaError as e:
                raise TunewiseError(f"checks.json_schema is not a valid JSON schema: {e.message}",
                                    "fix the schema") from None
        res["matches JSON schema"] = ok
    if checks.max_chars:
        res[f"at most {checks.max_chars} chars"] = len(output) <= checks.max_chars
    if checks.max_words:
        res[f"at most {checks.max_words} words"] = len(output.split()) <= checks.max_words
    return res


# ---------------------------------------------------------------------------------------------
# LLM judge (any OpenAI-compatible endpoint, through tunewise.infer.OpenAIEngine)
# ---------------------------------------------------------------------------------------------


_JUDGE_SYSTEM = (
    "You are a strict evaluator. Score the ANSWER to the QUESTION against the RUBRIC on a scale "
    "of 1 to {max}. A REFERENCE answer may be given. Reply with one line: 'Score: N' then one short "
    "sentence of justification."
)


def judge_note(judge: JudgeConfig | None) -> str | None:
    """Why the judge will not run (None when it will)."""
    if judge is None:
        return "no judge configured"
    if not os.environ.get(judge.api_key_env):
        return f"LLM judge skipped: environment variable {judge.api_key_env} is not set"
    return None


def judge_request(judge: JudgeConfig, question: str, answer: str, reference: str | None):
    """The judge's conversation for one answer (greedy, short)."""
    from tunewise.infer.types import Request

    user = f"RUBRIC:\n{judge.rubric}\n\nQUESTION:\n{question}\n\n"
    if reference:
        user += f"REFERENCE:\n{reference}\n\n"
    user += f"ANSWER:\n{answer}"
    return Request([{"role": "system", "content": _JUDGE_SYSTEM.format(max=judge.max_score)},
                    {"role": "user", "content": user}], max_tokens=100)


def judge_score(judge: JudgeConfig, reply: str) -> float:
    """The judge's reply as a score in 0..1."""
    m = re.search(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", reply, flags=re.I) or re.search(r"\d+(?:\.\d+)?", reply)
    if not m:
        raise TunewiseError(f"the judge's reply has no score: {reply[:120]!r}",
                            "use a judge model that follows instructions")
    raw = float(m.group(1) if m.lastindex else m.group(0))
    raw = min(max(raw, 1.0), float(judge.max_score))
    return (raw - 1.0) / (judge.max_score - 1.0)


def judge_answers(judge: JudgeConfig, items: list[tuple[str, str, str | None]]) -> list[tuple[float, str]]:
    """Ask the judge about every (question, answer, reference); returns (score in 0..1, the judge's
    reply) for each. The first request goes alone, so a wrong key or URL costs one request; the
    rest go at once (a few in flight; 429/5xx retried with backoff). Any error raises."""
    from tunewise.infer.openai import OpenAIEngine

    eng = OpenAIEngine(judge.model, base_url=judge.base_url, api_key_env=judge.api_key_env,
                       timeout_s=judge.timeout_s)
    try:
        reqs = [judge_request(judge, q, a, r) for q, a, r in items]
        replies = eng.generate(reqs[:1]) + eng.generate(reqs[1:]) if reqs else []
    finally:
        eng.close()
    return [(judge_score(judge, c.text), c.text) for c in replies]


# ---------------------------------------------------------------------------------------------
# Loss / perplexity on the response tokens
# ---------------------------------------------------------------------------------------------


def response_loss(model, tokenizer, examples: list[EvalExample], sequence_len: int = 2048) -> dict[str, float] | None:
    """Mean cross-entropy over the trained (assistant) tokens of every example, and its perplexity."""
    import torch

    from tunewise.data import tokenize_dataset

    convs = [e.conversation for e in examples if e.reference is not None and e.conversation is not None]
    if not convs:
        return None
    tokenized = tokenize_dataset(convs, tokenizer, sequence_len, train_on="assistant")
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for ex in tokenized:
            if not ex.n_trainable:
                continue
            ids = torch.tensor([ex.input_ids], device=device)
            labels = torch.tensor(ex.labels, device=device)
            # only the positions that predict a trained token go through the output layer (the
            # prompt's positions are most of a short answer's sequence, and the vocabulary is large)
            keep = (labels[1:] != -100).nonzero().squeeze(1)
            target = labels[keep + 1]
            try:
                logits = model(input_ids=ids, logits_to_keep=keep).logits[0].float()
            except TypeError:  # a model class without logits_to_keep
                logits = model(input_ids=ids).logits[0, keep].float()
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            total_nll += float(nll)
            total_tokens += int(target.numel())
    if not total_tokens:
        return None
    loss = total_nll / total_tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "loss_tokens": total_tokens}


# ---------------------------------------------------------------------------------------------
# Generation and scoring
# ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class ExampleResult:
    """One answer with everything measured about it (a line of outputs.jsonl)."""

    id: str
    question: str
    reference: str | None
    output: str
    latency_s: float
    input_tokens: int
    output_tokens: int
    stopped: bool
    scores: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    judge_reply: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Summary metrics plus every per-example result."""

    model: str
    n_examples: int
    metrics: dict[str, float]  # averaged quality metrics (0..1) and loss/perplexity
    check_rates: dict[str, float]  # pass rate of each declared check
    latency_p50_s: float
    latency_p95_s: float
    mean_latency_s: float
    mean_input_tokens: float
    mean_output_tokens: float
    stopped_rate: float
    notes: list[str]
    examples: list[ExampleResult]
    outputs_path: str | None = None
    engine: str = ""  # "llama.cpp f16", "hf fp32", ...
    parity: dict[str, Any] | None = None  # the parity gate's report (None: the reference engine ran)
    throughput: dict[str, Any] = field(default_factory=dict)  # RunStats.to_dict()

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("examples")
        return d


def default_metrics(examples: list[EvalExample], checks: TaskChecks | None, judge: JudgeConfig | None) -> list[str]:
    have_refs = any(e.reference is not None for e in examples)
    out = ["loss", "exact_match", "rouge_l", "chrf"] if have_refs else []
    if (checks is not None and not checks.is_empty()) or any(e.must_include for e in examples):
        out.append("checks")
    if judge is not None:
        out.append("judge")
    return out




def score_answers(examples: list[EvalExample], answers: list[Any], metrics: list[str],
                  checks: TaskChecks | None = None, judge: JudgeConfig | None = None,
                  extra_latency: list[float] | None = None) -> tuple[list[ExampleResult], dict[str, float], dict[str, float], list[str]]:
    """Score generated answers: (per-example results, averaged metrics, check pass rates, notes).

    ``answers`` are :class:`tunewise.infer.Completion` s (text, input_tokens, output_tokens,
    stopped, seconds); ``extra_latency`` adds per-query seconds spent outside generation
    (retrieval) to the latency.
    """
    notes: list[str] = []
    want = set(metrics)
    judge_on = "judge" in want and judge_note(judge) is None
    if "judge" in want and not judge_on:
        notes.append(judge_note(judge) or "")
    have_refs = any(e.reference is not None for e in examples)
    ref_metrics = [m for m in ("exact_match", "rouge_l", "chrf") if m in want]
    if ref_metrics and not have_refs:
        notes.append("reference metrics skipped: the eval file has no reference (assistant) answers")
    checks = checks or TaskChecks()
    has_facts = any(e.must_include for e in examples)
    use_checks = "checks" in want and (not checks.is_empty() or has_facts)
    if "checks" in want and not use_checks:
        notes.append("task checks skipped: none declared in the config")
    fns = {"exact_match": exact_match, "rouge_l": rouge_l, "chrf": chrf}
    results: list[ExampleResult] = []
    for i, (ex, ans) in enumerate(zip(examples, answers)):
        lat = ans.seconds + (extra_latency[i] if extra_latency else 0.0)
        r = ExampleResult(id=ex.id, question=ex.question, reference=ex.reference, output=ans.text,
                          latency_s=lat, input_tokens=ans.input_tokens, output_tokens=ans.output_tokens,
                          stopped=bool(ans.stopped))
        if ex.reference is not None:
            for m in ref_metrics:
                r.scores[m] = fns[m](ans.text, ex.reference)
        if use_checks:
            prompt_text = "\n".join(m["content"] for m in ex.messages if m["role"] == "user")
            r.checks = run_checks(ans.text, checks, prompt_text, ex.must_include)
            if r.checks:
                r.scores["checks"] = sum(r.checks.values()) / len(r.checks)
                r.scores["checks_all"] = float(all(r.checks.values()))
        results.append(r)
    if judge_on and results:
        try:
            verdicts = judge_answers(judge, [(r.question, r.output, r.reference) for r in results])
        except TunewiseError as e:
            notes.append(f"LLM judge stopped after an error: {e.message}")
        else:
            for r, (score, reply) in zip(results, verdicts):
                r.scores["judge"], r.judge_reply = score, reply
    summary: dict[str, float] = {}
    keys = sorted({k for r in results for k in r.scores})
    for k in keys:
        vals = [r.scores[k] for r in results if k in r.scores]
        summary[k] = sum(vals) / len(vals)
    rates: dict[str, float] = {}
    if use_checks:
        names: list[str] = []
        for r in results:
            names.extend(n for n in r.checks if n not in names)
        for n in names:
            having = [r for r in results if n in r.checks]
            rates[n] = sum(r.checks[n] for r in having) / len(having)
    return results, summary, rates, [n for n in notes if n]


def build_report(model_name: str, results: list[ExampleResult], summary: dict[str, float],
                 rates: dict[str, float], notes: list[str], latency_of: list[int] | None = None) -> EvalReport:
    """``latency_of``: the results whose latency counts (those answered alone, at concurrency 1;
    default all)."""
    picked = results if latency_of is None else [results[i] for i in latency_of]
    lat = [r.latency_s for r in picked] or [0.0]
    n = max(len(results), 1)
    return EvalReport(
        model=model_name,
        n_examples=len(results),
        metrics=summary,
        check_rates=rates,
        latency_p50_s=percentile(lat, 50),
        latency_p95_s=percentile(lat, 95),
        mean_latency_s=sum(lat) / len(lat),
        mean_input_tokens=sum(r.input_tokens for r in results) / n,
        mean_output_tokens=sum(r.output_tokens for r in results) / n,
        stopped_rate=sum(r.stopped for r in results) / n,
        notes=notes,
        examples=results,
    )


def write_outputs(results: list[ExampleResult], path: str | Path) -> Path:
    """Per-example outputs as JSONL (one readable object per line, UTF-8, not ASCII-escaped)."""
    lines = [json.dumps(asdict(r), ensure_ascii=False) for r in results]
    atomic_write_text(Path(path), "\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def evaluate(
    model: str = "smollm2-135m",
    data: str | Path | list[EvalExample] | None = None,
    metrics: list[str] | None = None,
    checks: TaskChecks | dict | None = None,
    judge: JudgeConfig | dict | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 256,
    sequence_len: int = 2048,
    limit: int | None = None,
    outputs_path: str | Path | None = None,
    data_format: str = "auto",
    mapping: dict | None = None,
    progress: bool = True,
    engine: str = "auto",
    precision: str = "auto",
    n_parallel: int | None = None,
    latency_samples: int = 5,
    parity_prompts: int = 4,
    on_parity_failure: str = "fallback",
) -> EvalReport:
    """Evaluate ``model`` (embedded name, HF dir, .gguf or run directory) on held-out data.

    Every answer is generated by ``engine`` (see :mod:`tunewise.infer.run`): all requests at once
    after ``latency_samples`` answered alone; the fast engine first passes the parity gate against
    the HF reference on ``parity_prompts`` of the eval prompts. Loss is computed by the reference.
    """
    from tunewise.infer.hf import HFEngine
    from tunewise.infer.run import ctx_for, open_checked, progress_callback, resolve_engine, run_all
    from tunewise.infer.types import Request
    from tunewise.models import load_tokenizer

    if data is None:
        raise TunewiseError("no eval data given", "pass --data EVAL_FILE (or eval_file in the config)")
    if progress:
        from tunewise.progress import check_settings

        check_settings()
    examples = data if isinstance(data, list) else load_eval_set(data, data_format, mapping, limit)
    if isinstance(checks, dict):
        checks = TaskChecks.model_validate(checks)
    if isinstance(judge, dict):
        judge = JudgeConfig.model_validate(judge)
    chosen = list(metrics) if metrics else default_metrics(examples, checks, judge)
    bad = [m for m in chosen if m not in ALL_METRICS]
    if bad:
        raise TunewiseError(f"unknown metric(s): {', '.join(bad)}", f"use any of: {', '.join(ALL_METRICS)}")

    def build(ex: EvalExample) -> list[dict]:
        if system_prompt and not any(m["role"] == "system" for m in ex.messages):
            return [{"role": "system", "content": system_prompt}, *ex.messages]
        return ex.messages

    requests = [Request(build(ex), max_tokens=max_new_tokens) for ex in examples]
    name = resolve_engine(engine)
    refs: list[HFEngine] = []

    def reference() -> HFEngine:  # the exact reference: fp32 beside a fast engine, else as asked
        if not refs:
            refs.append(HFEngine(str(model), precision=precision if name == "hf" else "fp32"))
        return refs[0]

    ctx = ctx_for(load_tokenizer(str(model)), [r.messages for r in requests], max_new_tokens) if name != "hf" else None
    checked = open_checked(str(model), name, precision, reference, requests[:parity_prompts], on_parity_failure,
                           n_parallel=n_parallel, ctx_per_request=ctx)
    notes = list(checked.notes)
    loss = None
    if "loss" in chosen:
        ref = reference()
        loss = response_loss(ref.hf_model, ref.tokenizer, examples, sequence_len)
    if refs and checked.engine is not refs[0]:
        refs[0].close()  # answering runs on the fast engine: free the reference's memory
    eng = checked.engine
    try:
        from tunewise.progress import progress as progress_task

        with progress_task(f"generating ({eng.name} {eng.precision})", len(requests), unit="example",
                           enabled=progress, transient=True) as prog:
            answers, stats = run_all(eng, requests, latency_samples, on_result=progress_callback(prog))
    finally:
        eng.close()
    results, summary, rates, score_notes = score_answers(examples, answers, chosen, checks, judge)
    notes.extend(score_notes)
    if "loss" in chosen:
        if loss is None:
            notes.append("loss skipped: no reference answers to score")
        else:
            summary.update(loss)
    report = build_report(str(model), results, summary, rates, notes, latency_of=stats.sequential)
    report.engine = f"{eng.name} {eng.precision}"
    report.parity = checked.parity.to_dict() if checked.parity is not None else None
    report.throughput = stats.to_dict()
    if outputs_path:
        report.outputs_path = str(write_outputs(results, outputs_path))
    return report
