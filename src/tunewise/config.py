"""One validated schema for run configs (YAML, ``--set`` overrides and Python alike).

Keys follow the names users know from Axolotl and LLaMA-Factory. Every problem in a config is
reported at once with its key and the fix (:func:`validate_config`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunewise.errors import TunewiseError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DatasetFormat = Literal["auto", "alpaca", "sharegpt", "openai", "messages", "text", "csv", "parquet"]


class DatasetSpec(Strict):
    """One training (or evaluation) data file."""

    path: str = Field(description="Path to the data file (JSON, JSONL, CSV, Parquet or .txt).")
    format: DatasetFormat = Field("auto", description="Dataset format; 'auto' detects it.")
    mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping for CSV/Parquet or renamed fields, e.g. {instruction: question}.",
    )


class RunConfig(Strict):
    """A tunewise run: what to train, on what, how, and where the results go."""

    kind: Literal["train"] = Field("train", description="Config kind (train configs may omit it).")
    # --- model -------------------------------------------------------------------------------
    base_model: str = Field("smollm2-135m", description="Embedded name, local HF dir or .gguf file.")
    chat_template: str | None = Field(
        None, description="Jinja chat template; default: the base model's own template."
    )

    # --- data --------------------------------------------------------------------------------
    datasets: list[DatasetSpec] = Field(default_factory=list, description="Training data files.")
    test_datasets: list[DatasetSpec] = Field(
        default_factory=list, description="Held-out evaluation files (instead of val_set_size)."
    )
    val_set_size: float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of the training data held out for evaluation."
    )
    sequence_len: int = Field(2048, ge=16, le=1_048_576, description="Maximum tokens per example.")
    packing: bool = Field(True, description="Padding-free packing of several examples per row.")
    train_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant",
        description="Which tokens carry loss: every assistant turn, the last one, or all tokens.",
    )
    train_on_inputs: bool = Field(False, description="Axolotl's name for train_on: all.")

    # --- method ------------------------------------------------------------------------------
    method: Literal["lora", "qlora", "full"] = Field("lora", description="Fine-tuning method.")
    lora_r: int = Field(16, ge=1, le=4096, description="LoRA rank.")
    lora_alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt; 'all-linear' = every linear projection."
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")

    # --- optimisation ------------------------------------------------------------------------
    micro_batch_size: int = Field(2, ge=1, description="Examples (or packed rows) per device step.")
    micro_batch_tokens: int | None = Field(
        None, ge=64,
        description="Most tokens per forward/backward pass: a larger micro-batch runs in pieces of whole "
        "examples (same gradients). Bounds activation memory when example lengths vary.",
    )
    gradient_accumulation_steps: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    num_epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps for warm-up.")
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up steps (overrides warmup_ratio).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "sgd", "adafactor"] = "adamw_torch"
    seed: int = Field(42, description="Random seed for data order, initialisation and dropout.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 where the hardware supports it, else fp32."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    lean_activations: bool = Field(
        True, description="Keep less for backward in SwiGLU MLPs and RMSNorms (same gradients, no recompute of matmuls)."
    )

    # --- bookkeeping -------------------------------------------------------------------------
    output_dir: str = Field("runs/latest", description="Run directory (never silently overwritten).")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: per epoch).")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (default: per epoch).")
    logging_steps: int = Field(1, ge=1, description="Log metrics every N steps.")
    report_to: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"
    backend: Literal["auto", "peft", "unsloth"] = Field(
        "auto", description="auto = Unsloth when installed and a CUDA GPU is present, else PEFT."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        if self.train_on_inputs and self.train_on != "all":
            object.__setattr__(self, "train_on", "all")
        if self.method == "full" and (self.use_dora or self.use_rslora):
            raise ValueError("use_dora / use_rslora apply to lora and qlora only; set method: lora")
        return self


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where, what, and how to fix it."""

    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message} — {self.fix}"


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: tuple, root: type[BaseModel] = RunConfig) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for 'did you mean' hints)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or [])]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _problems_from(err: ValidationError, root: type[BaseModel]) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        etype = e["type"]
        if etype == "extra_forbidden":
            owner = _model_at(loc, root)
            names = _field_names(owner) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            fix = f"did you mean '{close[0]}'?" if close else "remove it; see `tunewise config schema`"
            problems.append(Problem(key, "unknown key", fix))
        elif etype == "missing":
            problems.append(Problem(key, "required key is missing", "add it"))
        elif etype == "literal_error":
            allowed = e.get("ctx", {}).get("expected", "")
            problems.append(Problem(key, f"{e['input']!r} is not allowed", f"use one of {allowed}"))
        elif etype == "value_error":
            msg = str(e["msg"]).removeprefix("Value error, ")
            problems.append(Problem(key or "(config)", msg, "change the keys named"))
        else:
            problems.append(
                Problem(key, f"{e['msg'].lower()} (got {e.get('input')!r})", "correct the value")
            )
    return problems


# Config kinds other than train, by the top-level `kind:` key: module path and class name.
CONFIG_KINDS: dict[str, str] = {
    "train": "tunewise.config:RunConfig",
    "compare": "tunewise.compare.config:CompareConfig",
    "advise": "tunewise.advise:Answers",
    "eval": "tunewise.evaluate:EvalConfig",
}


def schema_for(data: dict[str, Any]) -> type[BaseModel]:
    """The schema a config mapping follows, chosen by its ``kind:`` key (default: train)."""
    import importlib

    kind = data.get("kind", "train") if isinstance(data, dict) else "train"
    if kind not in CONFIG_KINDS:
        raise TunewiseError(f"kind: unknown config kind {kind!r}", f"use one of {', '.join(CONFIG_KINDS)}")
    module, name = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the line."""
    p = Path(path)
    if not p.is_file():
        raise TunewiseError(f"config file {p} does not exist", "check the path")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TunewiseError(f"{p} is not UTF-8 text", "save the config as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise TunewiseError(f"{where}: {problem}", "fix the YAML syntax at that line") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TunewiseError(f"{p} must be a YAML mapping of keys to values", "see examples/ for a config")
    return data


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lora_r=8", "datasets.0.path=x.json"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise TunewiseError(f"--set {pair!r} is not key=value", "write it as --set key=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``a.b.0.c``) in a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        cur: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(cur, list):
                if not part.isdigit() or int(part) >= len(cur):
                    raise TunewiseError(f"--set {dotted}: '{part}' is not an index of the list", "check the key")
                idx = int(part)
                if last:
                    cur[idx] = value
                else:
                    cur = cur[idx]
            else:
                if last:
                    cur[part] = value
                else:
                    cur = cur.setdefault(part, {})
                    if not isinstance(cur, (dict, list)):
                        raise TunewiseError(f"--set {dotted}: '{part}' holds a value, not a section", "check the key")
    return data


def validate_config(
    data: dict[str, Any], schema: type[BaseModel] = RunConfig
) -> tuple[BaseModel | None, list[Problem]]:
    """Validate a config mapping: (the config, []) or (None, every problem found)."""
    try:
        return schema.model_validate(data), []
    except ValidationError as err:
        return None, _problems_from(err, schema)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    schema: type[BaseModel] = RunConfig,
):
    """Load, override and validate a config; raise one error listing every problem."""
    data = read_yaml(path) if path else {}
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = apply_overrides(data, ov)
    cfg, problems = validate_config(data, schema)
    if problems:
        where = str(path) if path else "config"
        lines = "\n".join(f"  - {p}" for p in problems)
        raise TunewiseError(f"{where} has {len(problems)} problem(s):\n{lines}", "fix the keys above")
    return cfg


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what is saved beside every run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
