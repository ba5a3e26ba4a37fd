"""Memory, time and cost of fine-tuning a model with full fine-tuning, LoRA or QLoRA.

Everything is computed from the model's shapes (config.json) and the training setup
(:class:`TrainingSetup`, built from a run config by :func:`setup_from`), so the numbers can be checked:

* **weights** at their bit width: fp32 master weights for mixed-precision full fine-tuning (or
  bf16 for "pure bf16"), frozen weights for LoRA in the compute dtype (bf16/fp16, or fp32 where the
  run computes in fp32: ``precision: fp32``, or ``auto`` on a CPU without native bf16), NF4 4-bit
  (+ double-quantised constants, 4.127 bits/param) for the linear layers of QLoRA, whose embeddings
  and norms stay in bf16;
* **adapters**: LoRA A and B matrices (r x (in + out) per adapted linear: every linear layer of a
  block, or the run's ``lora_target_modules``), kept in fp32 as PEFT does;
* **gradients** of the trainable parameters (same dtype as their weights);
* **optimizer states**: AdamW's two fp32 moments, 8 bytes per trainable parameter (bf16 moments,
  4 bytes, for pure-bf16 full fine-tuning, as LLaMA-Factory's ``pure_bf16``; none for plain SGD);
* **activations** saved for backward, per token and layer for a Llama-style block with SDPA/flash
  attention (no seq^2 term): 6h + 2kv + 4i elements (norm inputs/outputs, q/k/v, attention output,
  gate/up/act/product of the MLP), in the compute dtype, plus, when computing in 16 bits, the fp32
  copy of its input that each of the two RMSNorms keeps (2h fp32 values) — or, with tunewise's lean
  activations, no fp32 norm copies and, for LoRA without dropout or DoRA, 2i for the MLP (gate and
  up only); LoRA dropout keeps each adapter's dropped-out input and mask; with gradient
  checkpointing only each layer's input (h) is kept plus one layer being recomputed; for the tokens
  of one forward pass (micro-batch x sequence length, or a ``micro_batch_tokens`` piece, which one
  example may fill up to its own length); plus the logits path: logits, their fp32 copy,
  the saved log-softmax and its gradient, b*s*V elements each — or, with tunewise's fused loss for
  a frozen head (LoRA/QLoRA), one 32 MiB chunk of fp32 logits at a time and no saved logits;
* a fixed **runtime overhead** (CUDA context, allocator slack) for GPUs; on a CPU a calibrated
  working memory, and, for the whole process, what the allocator keeps of freed temporaries and
  what the imported libraries hold (:func:`cpu_estimate`).

Training FLOPs per token: 6N for full fine-tuning (2N forward, 2N gradient w.r.t. activations,
2N gradient w.r.t. weights); 4N for LoRA/QLoRA (frozen weights need no weight gradient) plus 6x the
adapter parameters; +2N with gradient checkpointing (a second forward); plus causal attention
within each example (6*L*q*T, T the example length: attention never crosses the examples of a
packed row). N counts matmul weights (the LM head included, embeddings not).
Time = tokens x FLOPs/token / (peak FLOPS x utilisation); the utilisation is an assumption, shown.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from tunewise.errors import TunewiseError
from tunewise.tables import load_gpus

Method = Literal["full", "lora", "qlora"]
METHODS: tuple[Method, ...] = ("full", "lora", "qlora")

GB = 1e9
NF4_BITS = 4.127  # 4-bit NF4 + double-quantised block constants (Dettmers et al. 2023, sec. 3)
DEFAULT_GPU_UTILISATION = 0.35  # model-FLOPs utilisation typical of HF/PEFT fine-tuning on GPUs
# Below this many parameters the GPU time comes with a warning: on an H200 (session 8) tunewise
# trained SmolLM2-135M's and a 1.07B Llama's shapes at ~18,000 tokens/s each, 1.1% and 7.9% of the
# dense bf16 peak: a per-step cost, not the FLOPs, set the pace. Not calibrated beyond that.
SMALL_MODEL_ON_GPU = 3e9
# On a CPU the peak is *measured* (the best matmul in the training dtype, `measure_matmul_peak`). A
# LoRA step of `tunewise train` reaches a fraction of it (smaller matmuls, element-wise ops,
# attention, optimizer), per compute dtype. Calibrated, not predicted: bf16 on
# bench/train_throughput.py on the 2-core build machine (quiet, AVX-512 BF16: 0.51 without and 0.56
# with gradient checkpointing, in this module's FLOPs per token), checked by
# bench/estimate_vs_measured.py on other shapes. fp32 (CPUs without native bf16): from issue 17's
# run on an AVX2-only EPYC, 121.5 tokens/s at a 110.8 GFLOP/s fp32 peak = 0.65 in these FLOPs,
# taken a little lower as the peak is now the best of several shapes (docs/advise.md).
CPU_UTILISATION = {"bf16": 0.5, "fp32": 0.6}
DEFAULT_CPU_UTILISATION = CPU_UTILISATION["bf16"]
FUSED_LOSS_CHUNK_BYTES = 32 * 2**20 - 2**16  # tunewise.train.loss.FROZEN_CHUNK_BYTES
# Working memory of a CPU training process beyond the modelled tensors (Trainer and data loader,
# tokenized data, oneDNN scratch space, autocast's weight casts): calibrated on the same bench
# (0.27 GB with and without checkpointing at seq 512 x 2), checked on two other shapes. It excludes
# the ~0.5 GB that importing torch, transformers and PEFT takes before anything is loaded.
CPU_RUNTIME_OVERHEAD_GB = 0.27
# Two more parts of a CPU training process's resident memory, outside the component model (which
# bench/estimate_vs_measured.py checks against the live memory, glibc's mmap threshold pinned):
# * what Python holds once torch, transformers and PEFT are imported, before any model loads
#   (measured 0.57 GB on the build machine);
# * what glibc's default allocator keeps of freed temporaries (the RSS a user sees, above the live
#   memory): measured 0.09-0.19 GB in bf16 (four shapes, bench/estimate_vs_measured.json) and
#   0.42-0.57 GB in fp32 (issue 17's run, emulated AVX2; docs/advise.md).
CPU_PROCESS_BASELINE_GB = 0.57
CPU_HEAP_SLACK_GB = {"bf16": 0.15, "fp32": 0.5}
QLORA_SLOWDOWN = 1.3  # NF4 de-quantisation on every matmul; an assumption, shown in the output
# The linear layers of a Llama-style block, in the order of ModelShape.linear_shapes (HF module names).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Precision = Literal["auto", "bf16", "fp16", "fp32"]
# Bytes of optimizer state per trainable parameter (fp32 states): AdamW keeps two moments; the
# Trainer's "sgd" is torch's SGD without momentum (no state); Adafactor keeps factored second moments
# (a row and a column per matrix: negligible next to the weights).
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8, "adamw_torch_fused": 8, "sgd": 0, "adafactor": 0}


@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs to know about a decoder-only (Llama-style) transformer."""

    name: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    head_dim: int | None = None

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.dim_head

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.dim_head

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer in one block: q, k, v, o, gate, up, down (:data:`PROJECTIONS`)."""
        h, i = self.hidden, self.intermediate
        return [(h, self.q_dim), (h, self.kv_dim), (h, self.kv_dim), (self.q_dim, h), (h, i), (h, i), (i, h)]

    def adapted_shapes(self, targets: tuple[str, ...] | None = None) -> list[tuple[int, int]]:
        """(in, out) of the linear layers of one block LoRA adapts (``targets``: module names as in
        ``lora_target_modules``; None: every linear layer of a block, PEFT's all-linear)."""
        if targets is None:
            return self.linear_shapes()
        names = {t.rsplit(".", 1)[-1] for t in targets}
        return [shp for name, shp in zip(PROJECTIONS, self.linear_shapes()) if name in names]

    @property
    def block_linear_params(self) -> int:
        return self.n_layers * sum(a * b for a, b in self.linear_shapes())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return (2 * self.n_layers + 1) * self.hidden

    @property
    def parameters(self) -> int:
        return self.block_linear_params + self.embedding_params + self.lm_head_params + self.norm_params

    @property
    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token (the LM head, tied or not; not the lookup)."""
        return self.block_linear_params + self.vocab * self.hidden

    def lora_params(self, r: int, targets: tuple[str, ...] | None = None) -> int:
        """Adapter weights, r x (in + out) per adapted linear layer (``targets``: see adapted_shapes;
        ``lm_head`` among them adds the output head)."""
        n = self.n_layers * sum(r * (a + b) for a, b in self.adapted_shapes(targets))
        if targets is not None and "lm_head" in {t.rsplit(".", 1)[-1] for t in targets}:
            n += r * (self.hidden + self.vocab)
        return n


# Standard Llama-family shapes for `tunewise estimate 8b` (from the released config.json files).
LLAMA_SIZES: dict[str, ModelShape] = {
    "1b": ModelShape("Llama-3.2-1B shapes", 16, 2048, 8192, 32, 8, 128256, tied_embeddings=True, head_dim=64),
    "3b": ModelShape("Llama-3.2-3B shapes", 28, 3072, 8192, 24, 8, 128256, tied_embeddings=True, head_dim=128),
    "7b": ModelShape("Llama-2-7B shapes", 32, 4096, 11008, 32, 32, 32000),
    "8b": ModelShape("Llama-3.1-8B shapes", 32, 4096, 14336, 32, 8, 128256),
    "13b": ModelShape("Llama-2-13B shapes", 40, 5120, 13824, 40, 40, 32000),
    "33b": ModelShape("LLaMA-33B shapes", 60, 6656, 17920, 52, 52, 32000),
    "65b": ModelShape("LLaMA-65B shapes", 80, 8192, 22016, 64, 64, 32000),
    "70b": ModelShape("Llama-3.1-70B shapes", 80, 8192, 28672, 64, 8, 128256),
    "405b": ModelShape("Llama-3.1-405B shapes", 126, 16384, 53248, 128, 8, 128256),
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bB])\s*$")


def shape_from_config(cfg: dict[str, Any], name: str = "model") -> ModelShape:
    """Read a Hugging Face config.json mapping (Llama, Mistral, Qwen2, Gemma... key names)."""
    cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        return ModelShape(
            name=name,
            n_layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(cfg.get("intermediate_size") or 4 * hidden),
            n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab=int(cfg["vocab_size"]),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=int(cfg["head_dim"]) if cfg.get("head_dim") else None,
        )
    except KeyError as e:
        raise TunewiseError(
            f"{name}: config.json has no '{e.args[0]}'",
            "tunewise estimate reads decoder-only (Llama-style) configs; pass a size such as 8b instead",
        ) from None


def load_shape(ref: str) -> ModelShape:
    """Shapes for a size (``8b``), a run config YAML (its base_model), a local HF directory or
    config.json, or any model reference :func:`tunewise.models.resolve_model` accepts."""
    ref = str(ref).strip()
    m = _SIZE_RE.match(ref)
    if m:
        key = f"{m.group(1)}b".lower()
        if key not in LLAMA_SIZES:
            raise TunewiseError(
                f"unknown model size '{ref}'",
                f"use one of {', '.join(LLAMA_SIZES)}, or pass a model directory / config.json",
            )
        return LLAMA_SIZES[key]
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        from tunewise.config import RunConfig, load_config

        cfg = load_config(path, schema=RunConfig)
        return load_shape(cfg.base_model)
    if path.is_file() and path.name.endswith(".json"):
        return shape_from_config(_read_json(path), name=str(path))
    if path.is_dir() and (path / "config.json").is_file():
        return shape_from_config(_read_json(path / "config.json"), name=str(path))
    if re.match(r"^\s*\d+(\.\d+)?\s*[a-zA-Z]*\s*$", ref):  # "7", "14x", "8gb": a malformed size
        raise TunewiseError(
            f"unknown model size '{ref}'",
            f"write a size as one of {', '.join(LLAMA_SIZES)}, or pass a run config YAML, a model directory, "
            "a config.json or a model name",
        )
    from tunewise.models import resolve_model

    try:
        resolved = resolve_model(ref)
    except TunewiseError:
        # A Llama hub id that is not on this machine ("meta-llama/Llama-3.1-8B-Instruct"): its
        # published shapes are the standard ones, so estimate without the weights.
        m = re.search(r"llama[^/]*?(\d+(?:\.\d+)?)[bB]\b", ref, flags=re.IGNORECASE)
        if m and f"{m.group(1)}b" in LLAMA_SIZES:
            std = LLAMA_SIZES[f"{m.group(1)}b"]
            return ModelShape(**{**asdict(std), "name": f"{ref} ({std.name}; not on this machine)"})
        raise
    return shape_from_config(_read_json(resolved.path / "config.json"), name=ref)


def setup_from(ref: Any = None, *, tunewise_train: bool = False, **overrides: Any) -> TrainingSetup:
    """The :class:`TrainingSetup` to estimate, the one place it is built (the CLI passes its flags).

    ``ref`` is a run config (a :class:`tunewise.config.RunConfig` or the path of its YAML): then the
    setup is that run as `tunewise train` does it: every key that changes memory or speed (method,
    precision, sequence_len, packing, micro_batch_size, micro_batch_tokens, gradient_checkpointing,
    lean_activations, lora_r, lora_target_modules, lora_dropout, use_dora, optimizer) and the fused
    frozen-head loss. Anything else (a size, a model, None) gets :class:`TrainingSetup`'s defaults: a
    generic trainer, or, with ``tunewise_train``, `tunewise train`'s own loss and lean activations.
    ``overrides`` are TrainingSetup fields; a None value keeps what the config or default says.
    """
    from tunewise.config import RunConfig, load_config

    cfg = ref if isinstance(ref, RunConfig) else None
    if cfg is None and isinstance(ref, (str, Path)):
        p = Path(ref).expanduser()
        if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
            cfg = load_config(p, schema=RunConfig)
    if cfg is not None:
        targets = cfg.lora_target_modules
        base = TrainingSetup(
            method=cfg.method, precision=cfg.precision, sequence_len=cfg.sequence_len, packing=cfg.packing,
            micro_batch_size=cfg.micro_batch_size, micro_batch_tokens=cfg.micro_batch_tokens,
            gradient_checkpointing=cfg.gradient_checkpointing, lean_activations=cfg.lean_activations,
            lora_r=cfg.lora_r, lora_targets=None if targets == "all-linear" else tuple(targets),
            lora_dropout=cfg.lora_dropout, use_dora=cfg.use_dora, optimizer=cfg.optimizer, fused_loss=True,
            full_weight_dtype="fp32",  # tunewise train keeps fp32 master weights for method: full
        )
    elif tunewise_train:
        base = TrainingSetup(fused_loss=True, lean_activations=RunConfig.model_fields["lean_activations"].default)
    else:
        base = TrainingSetup()
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in fields(TrainingSetup)})
    if unknown:
        raise TypeError(f"setup_from: unknown TrainingSetup field(s) {', '.join(unknown)}")
    if "lora_targets" in given:
        t = given["lora_targets"]
        given["lora_targets"] = None if t == "all-linear" or not t else tuple([t] if isinstance(t, str) else t)
    setup = replace(base, **given)
    if setup.method is not None and setup.method not in METHODS:
        raise TunewiseError(f"unknown method '{setup.method}'", "use full, lora or qlora")
    if setup.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise TunewiseError(f"unknown precision '{setup.precision}'", "use auto, bf16, fp16 or fp32")
    if setup.optimizer not in OPTIMIZER_STATE_BYTES:
        raise TunewiseError(f"unknown optimizer '{setup.optimizer}'", f"use one of {', '.join(OPTIMIZER_STATE_BYTES)}")
    return setup


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TunewiseError(f"cannot read {path}: {e}", "pass a valid config.json") from None
    if not isinstance(data, dict):
        raise TunewiseError(f"{path} is not a JSON object", "pass a Hugging Face config.json")
    return data


@dataclass
class TrainingSetup:
    """How the model is trained (the inputs the estimate depends on, all shown in the output).
    Build it from a run config with :func:`setup_from`."""

    sequence_len: int = 2048
    micro_batch_size: int = 1
    gradient_checkpointing: bool = True
    lora_r: int = 16
    lora_targets: tuple[str, ...] | None = None  # adapted modules (q_proj, ...); None: all-linear
    # the run's precision: auto resolves as `tunewise train` does (GPUs: 16-bit; a CPU: bf16 only
    # where native, else fp32); fp32 doubles the activations and LoRA's frozen weights
    precision: Precision = "auto"
    fused_loss: bool = False  # tunewise's frozen-head loss (LoRA/QLoRA): no saved logits
    lean_activations: bool = False  # tunewise's SwiGLU/RMSNorm autograd: no SiLU/product/fp32 norm copies
    micro_batch_tokens: int | None = None  # tunewise's cap on tokens per forward/backward pass
    packing: bool = True  # rows filled with several examples (else one example per row)
    # tokens of the longest example (`tunewise data check` prints it); None: sequence_len, the most
    # an example can have. Bounds a micro_batch_tokens piece (an example longer than the cap is a piece
    # of its own) and unpacked rows.
    longest_example: int | None = None
    # mean tokens per example: the span causal attention covers (per-example attention in packed
    # rows); None: sequence_len
    example_tokens: int | None = None
    lora_dropout: float = 0.0  # > 0 (or DoRA) keeps PEFT's own MLP path and a dropout copy per adapter
    use_dora: bool = False
    optimizer: str = "adamw_torch"
    full_weight_dtype: Literal["fp32", "bf16"] = "fp32"  # mixed precision vs pure bf16
    runtime_overhead_gb: float = 1.0  # CUDA context + allocator slack; 0 for CPU
    method: Method | None = None  # the run's method (None: estimate() covers all three)

    @property
    def compute_bytes(self) -> int:
        """Bytes per activation and LoRA frozen weight: 4 in fp32, else 2 (bf16/fp16)."""
        return 4 if self.precision == "fp32" else 2

    @property
    def attention_len(self) -> int:
        """T of the attention FLOPs (6·L·q·T per token, see model_flops_per_token): the example length
        (attention never crosses examples in tunewise's packed rows), at most sequence_len."""
        return min(self.example_tokens or self.sequence_len, self.sequence_len)

    @property
    def pass_tokens(self) -> int:
        """The most tokens one forward/backward pass holds (what the activations scale with)."""
        longest = min(self.longest_example or self.sequence_len, self.sequence_len)
        tokens = (self.sequence_len if self.packing else longest) * self.micro_batch_size
        if self.micro_batch_tokens:
            tokens = min(tokens, max(self.micro_batch_tokens, longest))  # one example can fill a piece
        return tokens

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compute_bytes": self.compute_bytes, "pass_tokens": self.pass_tokens}

    def describe(self) -> str:
        """One line of the settings that shape the estimate, for the CLI's header."""
        parts = [f"seq {self.sequence_len}" + ("" if self.packing else " (unpacked)"),
                 f"micro-batch {self.micro_batch_size}"]
        if self.micro_batch_tokens:
            parts.append(f"micro-batch tokens {self.micro_batch_tokens}")
        if self.longest_example:
            parts.append(f"longest example {self.longest_example}")
        parts.append(f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}")
        parts.append(f"precision {self.precision}")
        if self.lean_activations:
            parts.append("lean activations")
        if self.fused_loss:
            parts.append("fused loss")
        lora = f"LoRA r {self.lora_r} on {', '.join(self.lora_targets) if self.lora_targets else 'all linear layers'}"
        if self.lora_dropout:
            lora += f", dropout {self.lora_dropout:g}"
        if self.use_dora:
            lora += ", DoRA"
        parts.append(lora)
        if self.optimizer != "adamw_torch":
            parts.append(self.optimizer)
        return ", ".join(parts)


@dataclass
class MemoryEstimate:
    method: Method
    weights: float
    adapters: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    trainable_params: int
    total: float = field(init=False)

    def __post_init__(self) -> None:
        self.total = (
            self.weights + self.adapters + self.gradients + self.optimizer + self.activations
            + self.logits + self.overhead
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_memory(shape: ModelShape, method: Method, setup: TrainingSetup | None = None) -> MemoryEstimate:
    """Peak training memory in bytes, by component (see the module docstring for the model)."""
    s = setup or TrainingSetup()
    cb = s.compute_bytes
    n = shape.parameters
    state_bytes = OPTIMIZER_STATE_BYTES.get(s.optimizer, 8)
    adapters = grads = opt = 0.0
    if method == "full":
        wb = 4 if s.full_weight_dtype == "fp32" else 2
        weights = n * wb
        grads = n * wb
        opt = n * state_bytes * (1 if s.full_weight_dtype == "fp32" else 0.5)
        trainable = n
    elif method in ("lora", "qlora"):
        trainable = shape.lora_params(s.lora_r, s.lora_targets)
        adapters = trainable * 4.0
        grads = trainable * 4.0
        opt = trainable * float(state_bytes)
        if method == "lora":
            weights = n * cb
        else:
            quantised = shape.block_linear_params
            weights = quantised * NF4_BITS / 8 + (n - quantised) * 2
    else:
        raise TunewiseError(f"unknown method '{method}'", "use full, lora or qlora")

    tokens = s.pass_tokens
    # lean activations keep the MLP's gate and up projections only (SiLU output and product are
    # recomputed; plain LoRA only: a 4-bit or trained MLP, LoRA dropout or DoRA keep autograd's path)
    # and each RMSNorm's 16-bit input instead of an fp32 copy
    lean_mlp = s.lean_activations and method == "lora" and s.lora_dropout == 0 and not s.use_dora
    mlp_kept = 2 if lean_mlp else 4
    per_layer = 4 * shape.hidden + 2 * shape.q_dim + 2 * shape.kv_dim + mlp_kept * shape.intermediate
    layers_kept = 2 if s.gradient_checkpointing else shape.n_layers + 1  # + one layer of backward work
    if s.gradient_checkpointing:
        act_elems = tokens * (shape.n_layers * shape.hidden + 2 * per_layer)
    else:
        act_elems = tokens * layers_kept * per_layer
    activations = act_elems * cb
    if cb < 4 and not s.lean_activations:  # RMSNorm computes in fp32 and keeps that copy of its input
        activations += tokens * layers_kept * 2 * shape.hidden * 4
    if method != "full" and s.lora_dropout > 0:  # PEFT keeps each adapter's dropped-out input and mask
        activations += tokens * layers_kept * sum(a for a, _ in shape.adapted_shapes(s.lora_targets)) * (cb + 1)
    fp32_copy = 0 if cb >= 4 else 4
    if s.fused_loss and method != "full":
        # one chunk of logits at a time in two reused buffers: the matmul output in the compute dtype
        # (later the probabilities cast back for the gradient matmul) and an fp32 one for the
        # log-softmax (the same buffer in fp32); plus the kept gradient w.r.t. the hidden states
        chunk_tokens = max(16, FUSED_LOSS_CHUNK_BYTES // (4 * shape.vocab))
        logits = min(tokens, chunk_tokens) * shape.vocab * (cb + fp32_copy) + tokens * shape.hidden * cb
    else:
        logits = tokens * shape.vocab * (cb + fp32_copy + 4 + 4)
    overhead = s.runtime_overhead_gb * GB
    return MemoryEstimate(method, weights, adapters, grads, opt, activations, logits, overhead, trainable)


def flops_per_token(shape: ModelShape, method: Method, setup: TrainingSetup | None = None) -> float:
    """Training FLOPs per token (forward + backward) the hardware does: the model's own
    (:func:`model_flops_per_token`, the whole head, attention over ``setup.attention_len``) plus, with
    gradient checkpointing, the second forward (2N + the forward attention)."""
    s = setup or TrainingSetup()
    f = model_flops_per_token(shape, method, shape.lora_params(s.lora_r, s.lora_targets),
                              attention_len=s.attention_len)
    if s.gradient_checkpointing:
        f += 2 * shape.matmul_params + 2 * shape.n_layers * shape.q_dim * s.attention_len
    return float(f)


@dataclass
class GpuFit:
    key: str
    name: str
    vram_gb: float
    fits: bool
    gpus_needed: int | None  # with sharding (FSDP / ZeRO-3) when one is not enough
    hours: float | None
    usd: float | None


@dataclass
class MethodEstimate:
    method: Method
    memory: MemoryEstimate
    flops_per_token: float
    fits: list[GpuFit]

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "memory_bytes": self.memory.as_dict(),
            "flops_per_token": self.flops_per_token,
            "gpus": [asdict(f) for f in self.fits],
        }


@dataclass
class Estimate:
    model: str
    parameters: int
    training_tokens: float
    utilisation: float
    setup: TrainingSetup
    methods: list[MethodEstimate]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "parameters": self.parameters,
            "training_tokens": self.training_tokens,
            "utilisation": self.utilisation,
            "qlora_slowdown": QLORA_SLOWDOWN,
            "setup": self.setup.as_dict(),
            "methods": [m.as_dict() for m in self.methods],
            "notes": self.notes,
        }

    def method(self, name: str) -> MethodEstimate:
        return next(m for m in self.methods if m.method == name)


# The shapes the matmul peak is measured over: square matmuls and the projections of a small model's
# training micro-batch (768 tokens x 576 hidden x 1536 MLP). The best of them is the peak: one shape
# alone under-reads it (bf16 on the AVX-512 BF16 build machine: 234 GFLOP/s at 1024^3, 419 at
# 2048^3, 394 at 768x1536x576), and an MFU against an under-read peak overstates utilisation.
PEAK_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (768, 576, 1536), (768, 1536, 576),
)


def measure_matmul_peak(dtype: str = "bf16", seconds: float = 2.0,
                        shapes: tuple[tuple[int, int, int], ...] = PEAK_SHAPES) -> float:
    """Best sustained FLOP/s of an (m x k) @ (k x n) matmul in ``dtype`` ("bf16" or "fp32") over
    ``shapes``, with all of torch's threads: the CPU peak the time estimate scales and MFU divides by.
    ``seconds`` is shared by the shapes; a shape slower than its share gets one timed call."""
    import time

    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    best = 0.0
    for m, k, n in sorted(shapes, key=lambda s: s[0] * s[1] * s[2]):
        if best and 2 * m * k * n / best > seconds:
            continue  # e.g. emulated bf16 (~1 GFLOP/s): a 4096^3 matmul would take minutes
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        t0 = time.perf_counter()
        a @ b  # warm-up (builds the kernel); also tells whether the shape fits its time share
        if time.perf_counter() - t0 > seconds / len(shapes):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
            continue
        end = time.perf_counter() + seconds / len(shapes)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


def model_flops_per_token(shape: ModelShape, method: Method, lora_params: int = 0,
                          attention_len: float = 0.0, head_share: float = 1.0) -> float:
    """The FLOPs one trained token really needs (forward + backward), for MFU. No recomputation
    (gradient checkpointing's second forward is hardware work, not model work).

    * full:       6·N_body + 6·V·h·head_share + 6·L·q·T
    * LoRA/QLoRA: 4·N_body + 6·P_lora + 4·V·h·head_share + 6·L·q·T

    N_body = the block's linear weights, P_lora = the adapter weights (r·(in+out) per adapted
    linear), V·h = the output head, L = layers, q = query width (heads x head dim). Frozen weights
    need a forward (2 FLOPs per weight) and the gradient w.r.t. their input (2) but no weight gradient
    (2 more for trained weights); the adapters need all three. The head is only needed where the
    loss is (``head_share`` = loss-bearing tokens / trained tokens). Causal attention: for an
    example of l tokens QKᵀ and PV take 2·q·l² FLOPs forward per layer, x3 with backward, so per
    token 6·L·q·T with T = Σl²/Σl over the examples trained on (``attention_len``).
    """
    body, head = shape.block_linear_params, shape.vocab * shape.hidden
    attention = 6 * shape.n_layers * shape.q_dim * attention_len
    if method == "full":
        return float(6 * body + 6 * head * head_share + attention)
    return float(4 * body + 6 * lora_params + 4 * head * head_share + attention)


@dataclass
class CpuEstimate:
    """Training on this machine's CPU with `tunewise train`: the dtype it would use, the measured
    matmul peak, the assumed utilisation, and what follows. ``memory`` is the peak resident memory
    of the training process: ``breakdown`` (the modelled tensors and the CPU runtime overhead, by
    component), ``heap_slack`` (what the default allocator keeps of freed temporaries) and
    ``baseline`` (Python with torch, transformers and PEFT imported). ``memory_examples_fit``: the
    same when no example is longer than ``micro_batch_tokens`` (``memory`` counts one example of
    ``sequence_len`` tokens, unless the setup says how long the longest is); None where it is the same."""

    method: Method
    dtype: str
    threads: int
    peak_flops: float
    utilisation: float
    flops_per_token: float
    tokens_per_second: float
    hours: float
    memory: float
    ram: float
    breakdown: MemoryEstimate
    heap_slack: float
    baseline: float
    memory_examples_fit: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_dtype(precision: str = "auto") -> str:
    """The dtype `tunewise train` computes in on this CPU for a run's ``precision``
    (:func:`tunewise.models.resolve_precision` on the CPU: auto is bf16 only with bf16 matmul)."""
    from tunewise.models import resolve_precision

    return resolve_precision(precision, "cpu")


def cpu_estimate(shape: ModelShape, method: Method, setup: TrainingSetup, training_tokens: float,
                 peak_flops: float | None = None, utilisation: float | None = None) -> CpuEstimate:
    """Tokens/s, hours and memory of training ``shape`` here, on the CPU, in the dtype `tunewise train`
    would use for ``setup.precision``, with the CPU runtime overhead; ``peak_flops`` is measured when
    not given, ``utilisation`` defaults to the one calibrated for that dtype (:data:`CPU_UTILISATION`)."""
    import psutil
    import torch

    dtype = cpu_dtype(setup.precision)
    if peak_flops is None:
        peak_flops = measure_matmul_peak(dtype)
    if utilisation is None:
        utilisation = CPU_UTILISATION[dtype]
    cpu_setup = replace(setup, precision=dtype, runtime_overhead_gb=CPU_RUNTIME_OVERHEAD_GB)
    ftok = flops_per_token(shape, method, cpu_setup)
    if method == "qlora":
        ftok *= QLORA_SLOWDOWN
    tps = peak_flops * utilisation / ftok
    mem = estimate_memory(shape, method, cpu_setup)
    rest = (CPU_HEAP_SLACK_GB[dtype] + CPU_PROCESS_BASELINE_GB) * GB
    fit = None
    if cpu_setup.micro_batch_tokens and cpu_setup.longest_example is None:
        capped = replace(cpu_setup, longest_example=cpu_setup.micro_batch_tokens)
        if capped.pass_tokens < cpu_setup.pass_tokens:
            fit = estimate_memory(shape, method, capped).total + rest
    return CpuEstimate(method, dtype, torch.get_num_threads(), peak_flops, utilisation, ftok, tps,
                       training_tokens / tps / 3600, mem.total + rest, float(psutil.virtual_memory().total), mem,
                       CPU_HEAP_SLACK_GB[dtype] * GB, CPU_PROCESS_BASELINE_GB * GB, fit)


def cpu_estimates(shape: ModelShape, setup: TrainingSetup, training_tokens: float,
                  methods: tuple[Method, ...] | None = None) -> list[CpuEstimate]:
    """:func:`cpu_estimate` for each method (default: the setup's, else all three), with one
    measurement of this CPU's matmul peak shared by them."""
    peak = measure_matmul_peak(cpu_dtype(setup.precision))
    return [cpu_estimate(shape, m, setup, training_tokens, peak_flops=peak) for m in _methods(setup, methods)]


def _methods(setup: TrainingSetup, methods: tuple[Method, ...] | None) -> tuple[Method, ...]:
    if methods:
        return methods
    return (setup.method,) if setup.method else METHODS


def training_hours(flops_tok: float, tokens: float, tflops: float, utilisation: float, gpus: int = 1) -> float:
    return tokens * flops_tok / (tflops * 1e12 * utilisation * gpus) / 3600


def estimate(
    model: str | ModelShape,
    setup: TrainingSetup | None = None,
    training_tokens: float = 10_000 * 512 * 3,
    utilisation: float = DEFAULT_GPU_UTILISATION,
    gpus: dict[str, Any] | None = None,
    methods: tuple[Method, ...] | None = None,
) -> Estimate:
    """Memory by component for each method, the GPUs it fits, training time and rental cost.

    ``training_tokens`` = examples x tokens per example x epochs (default 10k x 512 x 3).
    ``gpus`` is the GPU table (``tables.load_gpus()``); default: the shipped one. ``methods``
    default to the setup's method, or all three when it names none.
    """
    if not 0 < utilisation <= 1:
        raise TunewiseError(f"utilisation {utilisation} must be in (0, 1]", "e.g. --utilisation 0.35")
    if training_tokens <= 0:
        raise TunewiseError("training tokens must be positive", "pass --examples and --tokens-per-example > 0")
    shape = model if isinstance(model, ModelShape) else load_shape(model)
    s = setup or TrainingSetup()
    table = gpus if gpus is not None else load_gpus()
    out = []
    for m in _methods(s, methods):
        mem = estimate_memory(shape, m, s)
        ftok = flops_per_token(shape, m, s)
        fits = []
        for key, g in table.items():
            if g["kind"] == "cpu":
                continue
            vram = g["vram_gb"] * GB
            fits_one = mem.total <= vram
            need: int | None = 1 if fits_one else None
            if not fits_one:
                # Shard weights, gradients and optimizer states over k GPUs (FSDP / ZeRO-3);
                # activations, logits and overhead stay per GPU.
                per_gpu_fixed = mem.activations + mem.logits + mem.overhead
                shardable = mem.weights + mem.adapters + mem.gradients + mem.optimizer
                if vram > per_gpu_fixed:
                    k = math.ceil(shardable / (vram - per_gpu_fixed))
                    need = k if k <= 64 else None
            hours = usd = None
            if need:
                hours = training_hours(ftok, training_tokens, g["bf16_tflops"], utilisation, need)
                if m == "qlora":
                    hours *= QLORA_SLOWDOWN
                usd = hours * g["usd_per_hour"] * need
            fits.append(GpuFit(key, g["name"], g["vram_gb"], fits_one, need, hours, usd))
        out.append(MethodEstimate(m, mem, ftok, fits))
    notes = [
        f"Utilisation (model-FLOPs utilisation) assumed {utilisation:.0%} of each GPU's dense bf16 peak.",
        f"QLoRA time x{QLORA_SLOWDOWN} for NF4 de-quantisation (assumption).",
        ("Logits: tunewise's fused frozen-head loss for LoRA/QLoRA (one 32 MiB chunk of logits at a time); "
         "full fine-tuning counts a plain cross-entropy." if s.fused_loss else
         "Logits assume a plain cross-entropy (b·s·vocab fp32 tensors); fused/chunked losses (tunewise train, "
         "Unsloth, Liger) need much less."),
        "Activations assume SDPA/flash attention (no seq^2 attention matrix) and "
        + ("gradient checkpointing." if s.gradient_checkpointing else "no gradient checkpointing."),
    ]
    if s.micro_batch_tokens:
        notes.append(
            f"Activations count {s.pass_tokens:,} tokens a pass: micro_batch_tokens {s.micro_batch_tokens} runs a longer "
            "example as a piece of its own, " + (f"and the longest has {s.longest_example} tokens." if s.longest_example
                                                 else "and one may fill the sequence length (pass --longest-example N, "
                                                      "the longest `tunewise data check` reports, to count yours)."))
    if shape.parameters < SMALL_MODEL_ON_GPU:
        notes.append(
            f"A {shape.parameters / 1e9:.2g}B model is too small to keep a GPU busy: measured once (tunewise train, "
            "LoRA, an H200, 2,048-token rows x 4), a 0.13B and a 1.07B model both trained at ~18,000 tokens/s, "
            "1-8% of the peak, not 35%, so the GPU hours above are optimistic for models this size (docs/train.md, "
            "'On a GPU').")
    return Estimate(shape.name, shape.parameters, training_tokens, utilisation, s, out, notes)


def cheapest_fit(est: MethodEstimate, max_vram_gb: float | None = None) -> GpuFit | None:
    """The cheapest single GPU of the table the method fits on (optionally at most ``max_vram_gb``)."""
    fits = [f for f in est.fits if f.fits and f.usd is not None]
    if max_vram_gb is not None:
        fits = [f for f in fits if f.vram_gb <= max_vram_gb]
    return min(fits, key=lambda f: (f.usd, f.vram_gb), default=None)


def fits_in(est: MethodEstimate, vram_gb: float) -> bool:
    return est.memory.total <= vram_gb * GB
