"""What is exported (a LoRA/QLoRA/full run, an adapter or a plain model) and the merge into plain
16/32-bit weights.

QLoRA adapters were trained on an NF4-quantised base, so the weights they were fitted to are the
*de-quantised NF4* weights, not the original ones. :func:`merge_qlora` builds both candidates
(adapter merged into the plain base, and into the NF4 round-tripped base), measures which one is
closer to the adapter's own outputs on the 4-bit base, and keeps the closer one (see docs/export.md
for the figures). Nothing is ever merged into 4-bit weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

FALLBACK_PROMPTS = ["Who are you?", "What can you help me with?", "Explain fine-tuning in one sentence.",
                    "Write a two-line poem about rain.", "What is 12 times 7?"]


@dataclass
class Source:
    """A resolved export source."""

    ref: str
    kind: str  # "lora" | "qlora" | "full" | "model"
    model_dir: Path  # the base model (lora/qlora), the trained weights (full) or the model itself
    adapter_dir: Path | None = None
    base_dir: Path | None = None  # full runs: the base model they started from (for the ΔW check)
    run_dir: Path | None = None
    run_config: Any = None  # RunConfig of a tunewise run

    @property
    def tokenizer_dir(self) -> Path:
        return self.adapter_dir or self.model_dir


def resolve_source(ref: str) -> Source:
    """A tunewise run directory, a PEFT adapter directory, or any model tunewise can load."""
    from tunewise.models import resolve_model

    path = Path(ref).expanduser()
    run_cfg = None
    if (path / "config.yaml").is_file() and (path / "summary.json").is_file():
        from tunewise.config import load_config

        run_cfg = load_config(path / "config.yaml")
    elif (path / "config.yaml").is_file() and not (path / "adapter").is_dir() and not (path / "model").is_dir():
        raise TunewiseError(f"{path} is a run directory without a finished result (no adapter/ or model/)",
                            "finish the run (`tunewise train CONFIG --resume`) before exporting it")
    resolved = resolve_model(ref)
    run_dir = path if run_cfg is not None else None
    if resolved.adapter_dir is not None:
        meta = _base_meta(resolved.adapter_dir)
        method = (run_cfg.method if run_cfg is not None else None) or meta.get("method") or "lora"
        return Source(ref, "qlora" if method == "qlora" else "lora", resolved.path, resolved.adapter_dir,
                      run_dir=run_dir, run_config=run_cfg)
    if run_cfg is not None and run_cfg.method == "full":
        base = resolve_model(_base_meta(resolved.path).get("base_model") or run_cfg.base_model).path
        return Source(ref, "full", resolved.path, base_dir=base, run_dir=run_dir, run_config=run_cfg)
    return Source(ref, "model", resolved.path, run_dir=run_dir, run_config=run_cfg)


def _base_meta(d: Path) -> dict:
    p = d / "tunewise_base.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def held_out_prompts(source: Source, n: int = 5) -> tuple[list[list[dict]], str]:
    """Up to ``n`` conversations ending in a user turn: the run's eval split when it has one, else
    its last training examples, else fixed prompts. Returns (prompts, where they came from)."""
    cfg = source.run_config
    if cfg is not None:
        from tunewise.data import load_conversations
        from tunewise.train.packing import split_eval

        try:
            if cfg.test_datasets:
                convs, where = _read(cfg.test_datasets), "the run's test_datasets"
            else:
                train = _read(cfg.datasets)
                held = split_eval(train, cfg.val_set_size, cfg.seed)[1] if cfg.val_set_size > 0 else []
                convs, where = (held, "the run's eval split") if held else (train[::-1], "the run's training data")
        except (TunewiseError, OSError):
            convs, where = [], ""
        prompts = []
        for conv in convs:
            msgs = [{"role": m.role, "content": m.content} for m in conv.messages if m.role in ("system", "user", "assistant")]
            while msgs and msgs[-1]["role"] != "user":
                msgs.pop()
            if msgs and all(isinstance(m["content"], str) for m in msgs):
                prompts.append(msgs)
            if len(prompts) == n:
                break
        if prompts:
            return prompts, where
    return [[{"role": "user", "content": p}] for p in FALLBACK_PROMPTS[:n]], "built-in prompts"


def _read(specs) -> list:
    from tunewise.data import load_conversations

    out = []
    for spec in specs:
        out.extend(load_conversations(Path(spec.path).expanduser(), format=spec.format, mapping=spec.mapping or None))
    return out


# ---------------------------------------------------------------------------------------------
# Loading the reference (what the run computes) and merging
# ---------------------------------------------------------------------------------------------


@dataclass
class MergeInfo:
    method: str  # what was done: "lora merge", "qlora merge into ...", "full weights", "model as is"
    delta_norm: float | None = None  # ‖ΔW‖ over the adapted modules (Frobenius, all together)
    modules: int = 0  # adapted modules
    zero_modules: list[str] = field(default_factory=list)  # adapted modules whose ΔW is exactly 0
    candidates: dict[str, float] = field(default_factory=dict)  # qlora: base -> max |Δ logit| vs the adapter
    chosen: str | None = None


def load_reference(source: Source):
    """The model as the run computes it: the adapter unmerged on its base (4-bit for QLoRA), the
    full run's weights, or the model itself. fp32 compute on CPU."""
    import torch

    from tunewise.models import load_model

    if source.kind == "qlora":
        return load_model(source.ref, quantization="4bit", dtype=torch.float32, device="cpu")
    return load_model(source.ref, dtype=torch.float32, device="cpu")


def _plain_base(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _lora_deltas(peft_model) -> tuple[float, int, list[str]]:
    """‖ΔW‖ of every LoRA layer (B·A·scale), before merging."""
    import torch

    total, n, zero = 0.0, 0, []
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "get_delta_weight") and getattr(module, "active_adapters", None):
                for adapter in module.active_adapters:
                    if adapter not in getattr(module, "lora_A", {}):
                        continue
                    d = float(module.get_delta_weight(adapter).float().norm())
                    total += d * d
                    n += 1
                    if d == 0.0:
                        zero.append(name.replace("base_model.model.", ""))
    return total ** 0.5, n, zero


def merge_adapter(base_model, adapter_dir: Path):
    """Apply the PEFT adapter to ``base_model`` (fp32) and merge it; returns (model, ‖ΔW‖ info)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    norm, n, zero = _lora_deltas(peft_model)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged, norm, n, zero


def _nf4_dequantised_base(source: Source, reference):
    """The plain base with every 4-bit linear replaced by its de-quantised NF4 weights — exactly
    the weights the QLoRA adapter was trained against."""
    import bitsandbytes.functional as bnbf
    import torch

    base = _plain_base(source.model_dir)
    params = dict(base.named_parameters())
    replaced = 0
    with torch.no_grad():
        for name, module in reference.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None or getattr(weight, "quant_state", None) is None:
                continue
            key = name.replace("base_model.model.", "", 1).replace(".base_layer", "") + ".weight"
            if key not in params:
                continue
            deq = bnbf.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
            params[key].copy_(deq.reshape(params[key].shape))
            replaced += 1
    if replaced == 0:
        raise TunewiseError("the QLoRA reference has no 4-bit weights to de-quantise",
                            "was this run trained with method: qlora?")
    return base


def max_logit_diff(a, b, tokenizer, prompts: list[list[dict]]) -> float:
    """Largest |Δ logit| between two models over the rendered ``prompts`` (fp32 compute)."""
    import torch

    worst = 0.0
    with torch.inference_mode():
        for msgs in prompts:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            la = a(input_ids=ids).logits.float()
            lb = b(input_ids=ids).logits.float()
            worst = max(worst, float((la - lb).abs().max()))
    return worst


def merged_model(source: Source, reference, tokenizer, prompts: list[list[dict]]):
    """(the merged fp32 model for ``source``, what was done, the unmerged model to check it against)."""
    if source.kind == "lora":
        model, norm, n, zero = merge_adapter(_plain_base(source.model_dir), source.adapter_dir)
        return model, MergeInfo("LoRA adapter merged into the fp32 base", norm, n, zero), reference
    if source.kind == "qlora":
        return merge_qlora(source, reference, tokenizer, prompts)
    model = _plain_base(source.model_dir)
    if source.kind == "full":
        norm, n, zero = _full_deltas(model, source.base_dir)
        return model, MergeInfo("full fine-tuning weights", norm, n, zero), reference
    return model, MergeInfo("model exported as is (no adapter)"), reference


def merge_qlora(source: Source, reference, tokenizer, prompts):
    """Merge a QLoRA adapter into a 16/32-bit base: the plain or the NF4 round-tripped one,
    whichever reproduces the adapter's own outputs (on the 4-bit base) more closely.

    Returns (merged model, info, the adapter unmerged on the chosen base): the 4-bit runtime
    itself computes with bitsandbytes' kernels, so the exact merge check compares the merged model
    with the adapter unmerged on the same de-quantised base, and ``info.candidates`` records how
    far each candidate is from the 4-bit runtime."""
    import copy

    from peft import PeftModel

    # De-quantise before the reference runs: bitsandbytes repacks 4-bit weights for its CPU kernel
    # on the first forward pass, after which the stored data no longer de-quantises correctly.
    deq = _nf4_dequantised_base(source, reference)
    deq_plain_copy, deq_unmerged = copy.deepcopy(deq), copy.deepcopy(deq)
    plain, norm, n, zero = merge_adapter(_plain_base(source.model_dir), source.adapter_dir)
    nf4, _, _, _ = merge_adapter(deq, source.adapter_dir)
    diffs = {"plain base": max_logit_diff(plain, reference, tokenizer, prompts),
             "NF4 round-tripped base": max_logit_diff(nf4, reference, tokenizer, prompts)}
    with reference.disable_adapter():  # how far the 4-bit kernels are from their own de-quantised weights
        diffs["4-bit base vs its de-quantised weights (no adapter)"] = max_logit_diff(
            reference, deq_plain_copy, tokenizer, prompts)
    del deq_plain_copy
    chosen = min(("plain base", "NF4 round-tripped base"), key=diffs.get)
    info = MergeInfo(f"QLoRA adapter merged into the de-quantised 16/32-bit base ({chosen}, the closer to "
                     "the adapter's own outputs)", norm, n, zero, diffs, chosen)
    base = _plain_base(source.model_dir) if chosen == "plain base" else deq_unmerged
    unmerged = PeftModel.from_pretrained(base, str(source.adapter_dir)).eval()
    return (plain if chosen == "plain base" else nf4), info, unmerged


def _full_deltas(model, base_dir: Path | None) -> tuple[float | None, int, list[str]]:
    """‖W_run − W_base‖ over every weight matrix a full fine-tune trains, read tensor by tensor."""
    if base_dir is None:
        return None, 0, []
    from safetensors import safe_open

    params = dict(model.named_parameters())
    total, n, zero = 0.0, 0, []
    for f in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                p = params.get(key)
                if p is None or p.dim() < 2:
                    continue
                base = sf.get_tensor(key).float()
                if base.shape != p.shape:
                    continue
                d = float((p.detach().float() - base).norm())
                total += d * d
                n += 1
                if d == 0.0:
                    zero.append(key)
    return total ** 0.5, n, zero
