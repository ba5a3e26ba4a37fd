"""Fine-tuning on the Hugging Face stack: PEFT (LoRA / QLoRA) or full weights, driven by a
``transformers.Trainer`` subclass that adds padding-free packing, a token-exact loss under gradient
accumulation, atomic checkpoints, NaN/OOM guards and the tunewise run directory."""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from tunewise.config import RunConfig, dump_config
from tunewise.errors import TunewiseError
from tunewise.models import resolve_precision
from tunewise.paths import atomic_dir, atomic_write_text
from tunewise.train.loss import IGNORE, summed_loss
from tunewise.train import attention, distributed, fused
from tunewise.train.arena import SavedActivationArena
from tunewise.train.packing import PaddingFreeCollator, RowDataset, split_eval, split_row, usable
from tunewise.train.run_dir import (
    CHECKPOINTS,
    checkpoint_step,
    clean_partial,
    latest_checkpoint,
    package_versions,
    prepare_output_dir,
    publish_checkpoint,
    read_metrics,
    rotate_checkpoints,
    sha256_file,
    truncate_metrics,
    write_json,
)


@dataclass
class TrainResult:
    """Where a finished run left its outputs, and how it went."""

    output_dir: Path
    adapter_dir: Path | None
    model_dir: Path | None
    steps: int
    final_loss: float
    eval_loss: float | None
    tokens_per_second: float
    trained_tokens: int
    seconds: float
    skipped_examples: int = 0  # training examples skipped (no token to learn from), see skipped_examples()
    skipped: dict[str, Any] | None = None  # their sources by reason (as in data_fingerprint.json)
    # most CUDA memory this process's tensors held, and torch's allocator reserved, while the run ran
    # (this process's GPU; None without CUDA). The CUDA context (~0.5 GB) comes on top of reserved.
    peak_gpu_allocated_bytes: int | None = None
    peak_gpu_reserved_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float, where: str = "loss"):
        super().__init__(f"{where} became {value} at step {step}")
        self.step, self.value, self.where = step, value, where


# Keys that may change between a run and its --resume (they do not change what is learned so far).
RESUMABLE_CHANGES = {"max_steps", "num_epochs", "save_steps", "eval_steps", "logging_steps", "report_to",
                     "output_dir", "backend"}


# ---------------------------------------------------------------------------------------------
# The Trainer subclass
# ---------------------------------------------------------------------------------------------


class TunewiseTrainer(Trainer):
    """Trainer with tunewise's loss, evaluation, throughput logging and crash-safe checkpoints."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the accumulated batch's trained tokens

    def __init__(self, *args, run_dir: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir)
        self._log_t0 = time.perf_counter()
        self._log_tokens0 = 0
        self.session_t0 = time.perf_counter()
        self.session_tokens0 = 0
        self.session_t1: float | None = None
        self.paused_s = 0.0  # time spent evaluating / checkpointing (not training throughput)
        self.last_eval: dict[str, float] | None = None
        self.arena: SavedActivationArena | None = None  # set by train() for CPU runs (see arena.py)
        self.micro_batch_tokens: int | None = None  # set by train() from the config
        self.add_callback(_SessionClock(self))

    # --- loss --------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Trained tokens in all micro-batches of one optimizer step (across processes)."""
        if not batch_samples:
            return None
        n = torch.tensor(sum(int(b["shift_labels"].ne(IGNORE).sum()) for b in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            n = self.accelerator.gather(n).sum()
        return n

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        saving = (self.arena.saving() if self.arena is not None and model.training and torch.is_grad_enabled()
                  else nullcontext())
        with saving:
            total, n = summed_loss(model, inputs)
        denom = num_items_in_batch if num_items_in_batch is not None else max(n, 1)
        loss = total / denom
        if (num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.args.world_size > 1):
            loss = loss * self.args.world_size  # DDP averages gradients over processes
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.state.num_input_tokens_seen += int(inputs["input_ids"].numel())
        pieces = split_row(inputs, self.micro_batch_tokens) if self.micro_batch_tokens else [inputs]
        if len(pieces) == 1:
            loss = super().training_step(model, inputs, num_items_in_batch)
        else:
            if num_items_in_batch is None:  # each piece is normalised by the whole micro-batch's tokens
                num_items_in_batch = int(inputs["shift_labels"].ne(IGNORE).sum())
            loss = 0.0
            for i, piece in enumerate(pieces):  # gradients are synchronised once, after the last piece
                sync = i == len(pieces) - 1
                with nullcontext() if sync else self.accelerator.no_sync(model):
                    loss = loss + super().training_step(model, piece, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(self.state.global_step + 1, float(loss.detach().float().mean()))
        return loss

    # --- evaluation: token-weighted mean loss over the whole eval set ------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None or len(dataset) == 0:
            return {}
        t0 = time.perf_counter()
        loader = self.get_eval_dataloader(dataset)
        model = self.model
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.args.device)
        count = torch.zeros((), dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                with self.compute_loss_context_manager():
                    s, n = summed_loss(model, batch)
                total += s.double()
                count += n
        if was_training:
            model.train()
        total = self.accelerator.reduce(total, "sum")
        count = self.accelerator.reduce(count, "sum")
        value = float(total / count.clamp(min=1))
        metrics = {f"{metric_key_prefix}_loss": value}
        self._pause(time.perf_counter() - t0)
        self.last_eval = {"step": self.state.global_step, **metrics}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # --- logging: throughput -----------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            tokens = self.state.num_input_tokens_seen
            dt = max(now - self._log_t0, 1e-9)
            logs["tokens_per_second"] = (tokens - self._log_tokens0) / dt * max(self.args.world_size, 1)
            logs["tokens"] = tokens
            logs["elapsed_s"] = now - self.session_t0
            self._log_t0, self._log_tokens0 = now, tokens
            if not math.isfinite(logs["loss"]):
                raise NonFiniteLoss(self.state.global_step, logs["loss"])
        super().log(logs, start_time)

    # --- atomic checkpoints --------------------------------------------------------------------
    def _pause(self, seconds: float) -> None:
        self.paused_s += seconds
        self._log_t0 += seconds  # keep logged tokens/s about training steps only

    def _save_checkpoint(self, model, trial) -> None:
        t0 = time.perf_counter()
        check_finite_parameters(self.model, self.state.global_step)
        root = Path(self.args.output_dir)
        step = self.state.global_step
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-checkpoint-{step}-", dir=root))
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = str(root)
        if self.args.should_save:
            publish_checkpoint(staging / f"checkpoint-{step}", root / f"checkpoint-{step}",
                               {"step": step, "tokens": self.state.num_input_tokens_seen,
                                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            rotate_checkpoints(self.run_dir)
        shutil.rmtree(staging, ignore_errors=True)  # other ranks' staging holds only their RNG state
        self._pause(time.perf_counter() - t0)


class _SessionClock(TrainerCallback):
    """Marks when this process started/stopped training (after a resume restored the state)."""

    def __init__(self, trainer: "TunewiseTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        t = self.trainer
        t.session_t0 = t._log_t0 = time.perf_counter()
        t.paused_s = 0.0
        t.session_tokens0 = t._log_tokens0 = state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.session_t1 = time.perf_counter()


def check_finite_parameters(model, step: int) -> None:
    """Refuse to save weights holding NaN/inf (the previous checkpoint stays the newest good one)."""
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p.detach()).all():
            raise NonFiniteLoss(step, float("nan"), where=f"parameter {name}")


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def resolve_backend(backend: str) -> str:
    """auto -> unsloth when installed and a CUDA GPU is present, else peft."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    cuda = torch.cuda.is_available()
    if backend == "unsloth":
        if not has_unsloth:
            raise TunewiseError("backend: unsloth, but Unsloth is not installed",
                                "pip install unsloth (needs a CUDA GPU), or set backend: auto")
        if not cuda:
            raise TunewiseError("backend: unsloth needs a CUDA GPU and none is available",
                                "set backend: auto (or peft) to train with PEFT on this machine")
        return "unsloth"
    if backend == "auto" and has_unsloth and cuda:
        return "unsloth"
    return "peft"


_REPORTERS = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


def check_report_to(report_to: str) -> None:
    if report_to == "none":
        return
    if not any(importlib.util.find_spec(m) for m in _REPORTERS[report_to]):
        raise TunewiseError(f"report_to: {report_to}, but the {report_to} package is not installed",
                            f"pip install {report_to}, or set report_to: none")


def _torch_dtype(precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_chat_template(value: str | None) -> str | None:
    """``chat_template`` is inline Jinja or a path to a .jinja file."""
    if not value:
        return None
    if "{" not in value and Path(value).expanduser().is_file():
        return Path(value).expanduser().read_text(encoding="utf-8")
    if "{" not in value:
        raise TunewiseError(f"chat_template: {value} is neither a Jinja template nor an existing file",
                            "give the template text or the path of a .jinja file")
    return value


@dataclass
class PreparedData:
    train: RowDataset
    eval: RowDataset | None
    fingerprint: dict[str, Any]


def prepare_data(cfg: RunConfig, tokenizer, chat_template: str | None) -> PreparedData:
    """Read, split, tokenize and pack the datasets; record a fingerprint of what was used."""
    from tunewise.data import load_conversations, tokenize_dataset

    if not cfg.datasets:
        raise TunewiseError("datasets is empty: nothing to train on",
                            "add datasets: [{path: your_data.jsonl}] to the config or --set datasets.0.path=...")
    files = []

    def read(specs, key):
        convs = []
        for i, spec in enumerate(specs):
            path = Path(spec.path).expanduser()
            if not path.is_file():
                raise TunewiseError(f"{key}.{i}.path: {spec.path} does not exist (relative paths are read "
                                    f"from the current directory {Path.cwd()})", "fix the path")
            got = load_conversations(path, format=spec.format, mapping=spec.mapping or None)
            files.append({"role": key, "path": str(path.resolve()), "bytes": path.stat().st_size,
                          "sha256": sha256_file(path), "conversations": len(got)})
            convs.extend(got)
        return convs

    train_convs = read(cfg.datasets, "datasets")
    eval_convs = read(cfg.test_datasets, "test_datasets") if cfg.test_datasets else []
    if not eval_convs and cfg.val_set_size > 0:
        train_convs, eval_convs = split_eval(train_convs, cfg.val_set_size, cfg.seed)

    def tokenize(convs):
        # Examples left without a token to learn from are skipped (tunewise.data.tokenize.skip_reason),
        # counted and named in data_fingerprint.json, the run summary and the log.
        examples = tokenize_dataset(convs, tokenizer, cfg.sequence_len, train_on=cfg.train_on,
                                    chat_template=chat_template, on_empty="keep")
        kept = [e for e in examples if usable(e)]
        return examples, kept

    all_train, train_ex = tokenize(train_convs)
    if not train_ex:
        raise TunewiseError(
            f"none of the {len(all_train)} training examples has a token to learn from "
            f"(train_on: {cfg.train_on}, sequence_len: {cfg.sequence_len})",
            "check the data has assistant answers, raise sequence_len, or set train_on: all",
        )
    all_eval, eval_ex = tokenize(eval_convs) if eval_convs else ([], [])
    skipped = skipped_examples(all_train, all_eval)
    train_rows = RowDataset(train_ex, cfg.sequence_len, cfg.packing)
    eval_rows = RowDataset(eval_ex, cfg.sequence_len, cfg.packing) if eval_ex else None
    fingerprint = {
        "files": files,
        "train_conversations": len(train_convs),
        "eval_conversations": len(eval_convs),
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "dropped_without_trained_tokens": (len(all_train) - len(train_ex)) + (len(all_eval) - len(eval_ex)),
        "skipped_examples": skipped,
        "truncated_examples": sum(1 for e in all_train if e.truncated),
        "train_tokens": train_rows.n_tokens,
        "train_label_tokens": sum(sum(1 for x in e.labels if x != IGNORE) for e in train_ex),
        "train_rows": len(train_rows),
        "packing": cfg.packing,
        "sequence_len": cfg.sequence_len,
        "train_on": cfg.train_on,
        "chat_template_sha256": __import__("hashlib").sha256(
            (chat_template or tokenizer.chat_template or "").encode()).hexdigest(),
    }
    return PreparedData(train_rows, eval_rows, fingerprint)


def skipped_examples(train: list, eval: list) -> dict[str, Any]:
    """The examples training skips, by reason, each named by its source (file and row or line):
    ``{"count": N, "cut_by_sequence_len": [...], "no_trained_tokens": [...], "eval": {...}}``."""
    from tunewise.data.tokenize import SKIP_CUT, SKIP_MASKED, skip_reason

    def by_reason(examples) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {SKIP_CUT: [], SKIP_MASKED: []}
        for e in examples:
            why = skip_reason(e)
            if why is not None:
                out[why].append(e.source or "?")
        return out

    t, e = by_reason(train), by_reason(eval)
    return {"count": len(t[SKIP_CUT]) + len(t[SKIP_MASKED]), **t,
            "eval": {"count": len(e[SKIP_CUT]) + len(e[SKIP_MASKED]), **e}}


def describe_skipped(skipped: dict[str, Any], sequence_len: int, limit: int = 10) -> list[str]:
    """Log lines naming the skipped examples (at most ``limit`` sources per reason)."""
    from tunewise.data.tokenize import SKIP_CUT, SKIP_MASKED

    lines = []
    for part, where in ((skipped, "training"), (skipped.get("eval") or {}, "eval")):
        for reason, why in ((SKIP_CUT, f"sequence_len={sequence_len} cuts away the whole response"),
                            (SKIP_MASKED, "no turn is trained")):
            names = part.get(reason) or []
            if names:
                shown = "; ".join(names[:limit]) + (f"; … and {len(names) - limit} more" if len(names) > limit else "")
                lines.append(f"skipped {len(names)} {where} example{'s' if len(names) != 1 else ''} ({why}): {shown}")
    return lines


def _lora_config(cfg: RunConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _linear_names(model) -> list[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def build_model(cfg: RunConfig, precision: str, backend: str):
    """The base model (4-bit for qlora) with LoRA adapters attached, or the full model."""
    from transformers import set_seed

    from tunewise.models import default_device, load_model, resolve_model

    set_seed(cfg.seed)
    device = default_device()
    resolved = resolve_model(cfg.base_model)
    if backend == "unsloth":
        return _build_unsloth(cfg, resolved.path, precision)
    if cfg.method == "qlora" and resolved.adapter_dir is not None:
        raise TunewiseError(f"base_model {cfg.base_model} is a LoRA run; qlora cannot train on top of it",
                            "merge it first (tunewise export) or use method: lora")
    weights_dtype = _torch_dtype(precision) if cfg.method != "full" else torch.float32
    quant = "4bit" if cfg.method == "qlora" else None
    model = load_model(cfg.base_model, quantization=quant, dtype=weights_dtype, device=device,
                       merge_adapter=resolved.adapter_dir is not None)
    model.config.use_cache = False
    # transformers' sdpa path masks packed examples from position_ids (∝ T²: slower on CPU, faster on CUDA)
    use_own, why_not = attention.choose(model.config, cfg.sequence_len, device)
    if use_own:
        model.set_attn_implementation(attention.register())
    elif why_not:
        warnings.warn(f"{cfg.base_model} uses {why_not}; training with its own sdpa attention instead of "
                      "tunewise's per-example attention", stacklevel=2)
    if cfg.method != "full":
        from peft import get_peft_model, prepare_model_for_kbit_training

        with warnings.catch_warnings():  # PEFT still calls the v5-renamed gradient_checkpointing API
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*", category=FutureWarning)
            model = _attach_lora(cfg, model, prepare_model_for_kbit_training, get_peft_model, precision)
        if precision in ("bf16", "fp16"):
            # Under autocast the adapters compute in bf16/fp16 anyway; PEFT's cast of every adapter input
            # to the adapters' fp32 would only add an fp32 copy of each input, kept for backward.
            for module in model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
    if cfg.lean_activations:
        fused.install(model)
    return model


def _attach_lora(cfg: RunConfig, model, prepare_model_for_kbit_training, get_peft_model, precision: str = "fp32"):
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        if precision in ("bf16", "fp16"):
            keep_frozen_weights_in(model, _torch_dtype(precision))
    try:
        model = get_peft_model(model, _lora_config(cfg))
    except ValueError as e:
        if "target" in str(e).lower():
            raise TunewiseError(
                f"lora_target_modules {cfg.lora_target_modules} do not match this model's layers",
                f"use all-linear or names among: {', '.join(_linear_names(model))}",
            ) from None
        raise
    return model


def keep_frozen_weights_in(model, dtype: torch.dtype) -> int:
    """Undo PEFT's upcast of a 4-bit model's other weights (embeddings, output layer, norms) to
    fp32: in bf16/fp16 training they stay in ``dtype``, as they are in a LoRA run. Upcast, the
    embedding output is fp32, and so is the residual stream and every norm output kept for
    backward: on an H200 a 1.07B Llama shape's QLoRA run peaked at 23.6 GB against LoRA's 11.1 GB
    (docs/train.md). Returns the number of parameters cast back."""
    n = 0
    for param in model.parameters():
        if param.dtype == torch.float32 and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(dtype)
            n += param.numel()
    return n


def _build_unsloth(cfg: RunConfig, path: Path, precision: str):
    """Unsloth's patched model (CUDA only). Adapters it saves are plain PEFT adapters."""
    from unsloth import FastLanguageModel  # noqa: F401  (import patches transformers)

    model, _tok = FastLanguageModel.from_pretrained(
        model_name=str(path), max_seq_length=cfg.sequence_len, dtype=_torch_dtype(precision),
        load_in_4bit=cfg.method == "qlora", full_finetuning=cfg.method == "full",
    )
    if cfg.method == "full":
        return model
    targets = cfg.lora_target_modules
    if targets == "all-linear":
        targets = [n for n in _linear_names(model) if n != "lm_head"]
    return FastLanguageModel.get_peft_model(
        model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=targets, bias="none", use_rslora=cfg.use_rslora,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
    )


def training_arguments(cfg: RunConfig, out: Path, precision: str, has_eval: bool):
    from transformers import TrainingArguments

    if cfg.report_to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")  # this run's, not a previous one's
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else cfg.warmup_ratio
    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optimizer,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **checkpointing_arguments(cfg.gradient_checkpointing and cfg.method != "qlora"),
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=None,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if has_eval else "no",
        eval_steps=cfg.eval_steps,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="no",
        average_tokens_across_devices=True,
        run_name=out.name,
        **distributed.training_args_overrides(),
    )


def checkpointing_arguments(on: bool) -> dict[str, Any]:
    """TrainingArguments' activation (gradient) checkpointing switch under the name this transformers
    has: ``activation_checkpointing`` in newer 5.x releases (5.24), ``gradient_checkpointing`` in older
    ones (5.17), which pyproject's ``transformers>=5.0,<6`` both allows."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: on, f"{key}_kwargs": {"use_reentrant": False}}


def cuda_peak_memory() -> dict[str, int | None]:
    """This process's peak CUDA memory (torch's allocator: tensors held, memory reserved) on its current
    GPU since the process started or the last reset; None for both without CUDA."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {"peak_gpu_allocated_bytes": None, "peak_gpu_reserved_bytes": None}
    return {"peak_gpu_allocated_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_gpu_reserved_bytes": int(torch.cuda.max_memory_reserved())}


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                            or "cannot allocate memory" in text)


def oom_error(cfg: RunConfig) -> TunewiseError:
    tips = [f"micro_batch_size (now {cfg.micro_batch_size}; raise gradient_accumulation_steps to keep the "
            "effective batch)", f"sequence_len (now {cfg.sequence_len})",
            f"micro_batch_tokens (now {cfg.micro_batch_tokens or 'unset'}; e.g. 1024)"]
    if not cfg.gradient_checkpointing:
        tips.append("gradient_checkpointing: true")
    if cfg.method != "qlora":
        tips.append("method: qlora (4-bit base weights)")
    if cfg.method == "full":
        tips.append("method: lora")
    return TunewiseError("training ran out of memory", "lower " + "; ".join(tips))


def _check_resume_config(out: Path, cfg: RunConfig) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    import yaml

    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = cfg.model_dump(mode="json")
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        raise TunewiseError(
            f"cannot resume {out}: the config differs from the run's config.yaml in {', '.join(changed)}",
            "resume with the same config (only max_steps, num_epochs, save/eval/logging steps may change) "
            "or start a new output_dir",
        )


def _check_resume_data(out: Path, fingerprint: dict[str, Any]) -> None:
    """A resumed run must see the same data (order and content), or it silently trains on a mix."""
    saved_path = out / "data_fingerprint.json"
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    before = {f["path"]: f["sha256"] for f in saved.get("files", [])}
    now = {f["path"]: f["sha256"] for f in fingerprint.get("files", [])}
    changed = sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
    if changed:
        raise TunewiseError(
            f"cannot resume {out}: the training data changed since the run started ({', '.join(changed)})",
            "restore the original files (sha256 in data_fingerprint.json) or start a new output_dir",
        )


def _base_reference(base_model: str) -> str:
    """What to record as the base model: an absolute path for local paths, else the name."""
    p = Path(base_model).expanduser()
    return str(p.resolve()) if p.exists() else base_model


def save_final(trainer: TunewiseTrainer, cfg: RunConfig, tokenizer, out: Path) -> tuple[Path | None, Path | None]:
    """Write adapter/ (PEFT adapter + tokenizer) or model/ (full weights + tokenizer) atomically."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "_orig_mod"):
        model = model._orig_mod
    check_finite_parameters(model, trainer.state.global_step)
    if not trainer.is_world_process_zero():
        return None, None
    base = {"base_model": _base_reference(cfg.base_model), "method": cfg.method}
    if cfg.method == "full":
        target = out / "model"
        with atomic_dir(target) as tmp:
            model.config.use_cache = True
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            (tmp / "tunewise_base.json").write_text(json.dumps(base, indent=2))
        return None, target
    target = out / "adapter"
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tunewise_base.json").write_text(json.dumps(base, indent=2))
    return target, None


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Fine-tune ``cfg.base_model`` on ``cfg.datasets`` and write everything to ``cfg.output_dir``.

    ``resume`` continues from the newest complete checkpoint; ``overwrite`` replaces an existing
    run directory (without either, a non-empty output_dir is an error).
    """
    from rich.console import Console

    from tunewise.models import load_tokenizer
    from tunewise.train.callbacks import MetricsCallback, RichProgressCallback, plot_loss

    console = Console(stderr=True, quiet=not progress or not distributed.is_main_process())
    start = time.perf_counter()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this run's peaks, if train() ran before here
        torch.cuda.reset_peak_memory_stats()
    out = Path(cfg.output_dir).expanduser()
    precision = resolve_precision(cfg.precision)
    backend = resolve_backend(cfg.backend)
    check_report_to(cfg.report_to)
    inputs = [Path(d.path) for d in [*cfg.datasets, *cfg.test_datasets]] + [Path(cfg.base_model)]
    if distributed.is_main_process():  # other ranks never create, check or empty the run dir
        prepare_output_dir(out, resume=resume, overwrite=overwrite, protected=inputs)

    checkpoint = None
    if resume:
        if distributed.is_main_process():
            clean_partial(out)
        checkpoint = latest_checkpoint(out)
        _check_resume_config(out, cfg)
        if checkpoint is not None:
            console.print(f"[bold]Resuming[/] from {checkpoint}")
        elif distributed.is_main_process():
            (out / "metrics.jsonl").unlink(missing_ok=True)
            console.print(f"[yellow]No complete checkpoint in {out / CHECKPOINTS}; starting from step 0[/]")

    tokenizer = load_tokenizer(cfg.base_model)
    template = load_chat_template(cfg.chat_template)
    if template:
        tokenizer.chat_template = template
    data = prepare_data(cfg, tokenizer, template)
    if checkpoint is not None:
        _check_resume_data(out, data.fingerprint)
        if distributed.is_main_process():
            truncate_metrics(out, checkpoint_step(checkpoint))  # steps after it are trained (logged) again

    if distributed.is_main_process():
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        write_json(out / "versions.json", {**package_versions(), "backend": backend, "precision": precision})
        write_json(out / "data_fingerprint.json", data.fingerprint)

    fp = data.fingerprint
    console.print(
        f"[bold]tunewise train[/] {cfg.method} on {cfg.base_model} ({backend}, {precision}): "
        f"{fp['train_examples']} examples → {fp['train_rows']} rows of ≤{cfg.sequence_len} tokens"
        + (f", {fp['eval_examples']} eval examples" if data.eval else "")
    )
    for line in describe_skipped(fp.get("skipped_examples") or {}, cfg.sequence_len):
        console.print(f"[yellow]{line}[/]", highlight=False, soft_wrap=True)
    model = build_model(cfg, precision, backend)
    progress_cb = RichProgressCallback(console=console) if progress else None
    title = f"{cfg.method} on {Path(cfg.base_model).name or cfg.base_model} — {out.name}"
    callbacks = [MetricsCallback(out, title)] + ([progress_cb] if progress_cb else [])
    trainer = TunewiseTrainer(
        model=model,
        args=training_arguments(cfg, out, precision, data.eval is not None),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=PaddingFreeCollator(),
        callbacks=callbacks,
        run_dir=out,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    distributed.attach(trainer, out)  # multi-process runs: per-rank shard + weights record
    trainer.micro_batch_tokens = cfg.micro_batch_tokens
    if cfg.lean_activations and not cfg.gradient_checkpointing and trainer.args.device.type == "cpu":
        trainer.arena = SavedActivationArena(model)
    # Everything alive now (model, tokenizer, tokenized data: a few hundred thousand Python objects)
    # lives until training ends, so the garbage collector need not scan it again: without this, the
    # full collection accelerate runs at the start of train() took 0.3 s on the embedded model and
    # every automatic full collection during training would rescan it all.
    try:
        gc.freeze()
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            gc.unfreeze()
        adapter_dir, model_dir = save_final(trainer, cfg, tokenizer, out)
        eval_loss = None
        if data.eval is not None:
            if trainer.last_eval is None or trainer.last_eval["step"] != trainer.state.global_step:
                trainer.evaluate()
            eval_loss = trainer.last_eval["eval_loss"]
    except NonFiniteLoss as e:
        if trainer.is_world_process_zero():
            plot_loss(out, title)  # the curve up to the bad step helps to see what went wrong
        last = latest_checkpoint(out)
        raise TunewiseError(
            f"training stopped: {e}; nothing after the last good checkpoint was saved "
            f"({last if last else 'no checkpoint yet'})",
            f"lower learning_rate (now {cfg.learning_rate}), check the data for broken examples, "
            f"then rerun{' with --resume' if last else ''}",
        ) from None
    except Exception as e:
        if _is_oom(e):
            raise oom_error(cfg) from None
        raise
    finally:
        if progress_cb is not None:
            progress_cb.close()

    rows = read_metrics(out)
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    speeds = [r for r in rows if r.get("tokens_per_second")]
    seconds = time.perf_counter() - start
    train_seconds = max((trainer.session_t1 or time.perf_counter()) - trainer.session_t0 - trainer.paused_s, 1e-9)
    session_tokens = trainer.state.num_input_tokens_seen - trainer.session_tokens0
    result = TrainResult(
        output_dir=out,
        adapter_dir=adapter_dir,
        model_dir=model_dir,
        steps=int(trainer.state.global_step),
        final_loss=float(losses[-1]) if losses else float("nan"),
        eval_loss=eval_loss,
        tokens_per_second=(session_tokens / train_seconds * max(trainer.args.world_size, 1)
                           if session_tokens else (speeds[-1]["tokens_per_second"] if speeds else 0.0)),
        trained_tokens=int(trainer.state.num_input_tokens_seen * max(trainer.args.world_size, 1)),
        seconds=seconds,
        skipped_examples=int((fp.get("skipped_examples") or {}).get("count", 0)),
        skipped=fp.get("skipped_examples"),
        **cuda_peak_memory(),
    )
    if trainer.is_world_process_zero():
        plot_loss(out, title)
        write_json(out / "summary.json", result.to_json())
    return result
