"""Export a run or model to where people run models: merged weights, GGUF, Ollama and vLLM.

Usage::

    from tunewise.export import export

    result = export("runs/identity", to="ollama")        # -> runs/identity/export-ollama/
    print(result.out_dir, result.passed)
    for check in result.checks:
        print(check.line())

Every export is verified before it is called done (:mod:`tunewise.export.verify`); the report is
printed and saved as ``export_report.json`` in the output directory. When a check fails the output
is moved aside to ``<out>.rejected`` (never left looking valid) and :class:`TunewiseError` is raised.
Output directories are written atomically: an interrupted export leaves no half-valid artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tunewise.errors import TunewiseError
from tunewise.paths import _default_mode, atomic_write_text, replace_dir

TARGETS = ("merged", "gguf", "ollama", "vllm")
DTYPES = ("bf16", "f16", "f32")


@dataclass
class ExportResult:
    out_dir: Path
    target: str
    checks: list = field(default_factory=list)
    report: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _check_out_is_not_an_input(out_dir: Path, source) -> None:
    """``--out`` may not be (or hold) what the export reads: with ``--overwrite`` the old directory is
    replaced, which would delete the run, adapter or model being exported."""
    out = out_dir.expanduser().resolve()
    inputs = [Path(source.ref).expanduser(), source.model_dir, source.adapter_dir, source.base_dir, source.run_dir]
    for p in (x for x in inputs if x is not None):
        p = Path(p).expanduser().resolve()
        if out == p or out in p.parents:
            raise TunewiseError(f"--out {out_dir} is {'' if out == p else 'a folder holding '}{p}, which this export "
                                "reads: tunewise never overwrites its input",
                                "pass --out a new directory (the default is export-TARGET inside the run)")


def default_out(ref: str, to: str) -> Path:
    p = Path(ref).expanduser()
    if p.is_dir():
        return p / f"export-{to}"
    return Path.cwd() / f"{p.stem or ref}-{to}"


def _torch_dtype(name: str):
    import torch

    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[name]


def _base_dtype(model_dir: Path) -> str:
    """The dtype the base checkpoint is stored in (bf16/f16), f32 otherwise."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "f32"
    d = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "f16"}.get(d, "f32")


def export(ref: str, to: str, out: str | Path | None = None, dtype: str | None = None, quant: str = "f16",
           adapter: bool = False, overwrite: bool = False, gpus: int = 1, name: str | None = None,
           echo: Callable[[str], None] = print) -> ExportResult:
    """Export ``ref`` (a tunewise run, an adapter dir or a model) ``to`` merged/gguf/ollama/vllm."""
    from tunewise.export import gguf as gguf_mod
    from tunewise.export import merge as mg
    from tunewise.export import template as tp
    from tunewise.export import verify as vf
    from tunewise.models import load_tokenizer

    start = time.perf_counter()
    if to not in TARGETS:
        raise TunewiseError(f"--to {to!r} is not an export target", f"use one of {', '.join(TARGETS)}")
    if dtype is not None and dtype not in DTYPES:
        raise TunewiseError(f"--dtype {dtype!r} is not supported", f"use one of {', '.join(DTYPES)}")
    quant = quant.lower()
    if to in ("gguf", "ollama"):
        # fail before any work when the quant type cannot be written (k-quants need llama-quantize)
        if quant in gguf_mod.K_QUANTS or quant not in gguf_mod.CONVERTER_TYPES:
            gguf_mod.convert(Path("."), Path("."), quant)
    if adapter and to != "vllm":
        raise TunewiseError("--adapter is for --to vllm (base + adapter served with --enable-lora)",
                            "drop --adapter, or use --to vllm")
    out_dir = Path(out).expanduser() if out else default_out(ref, to)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise TunewiseError(f"{out_dir} already exists", "pass --overwrite to replace it, or --out another directory")

    source = mg.resolve_source(ref)
    _check_out_is_not_an_input(out_dir, source)
    tokenizer = load_tokenizer(source.ref)
    dtype = dtype or _base_dtype(source.model_dir)
    prompts, prompts_from = mg.held_out_prompts(source)
    echo(f"Exporting {ref} ({source.kind}) to {to} in {out_dir}")
    parts = None
    try:
        parts = tp.template_parts(tokenizer)
    except TunewiseError as e:
        if to == "ollama":
            raise
        echo(f"note: {e}")

    if adapter:
        return _export_adapter(source, tokenizer, parts, out_dir, gpus, name, echo, start)

    echo("  loading the model as trained (adapter unmerged) …")
    reference = mg.load_reference(source)
    echo("  merging …")
    merged, info, reference = mg.merged_model(source, reference, tokenizer, prompts)
    if info.candidates:
        echo("  QLoRA merge, max |Δ logit| against the adapter on its 4-bit base: "
             + ", ".join(f"{k} {v:.3g}" for k, v in info.candidates.items()) + f" → {info.chosen}")
    eot_ids = tp.end_of_turn_ids(tokenizer, getattr(merged, "generation_config", None), parts)
    eot_strings = tp.stop_strings(tokenizer, eot_ids)
    system = _system_prompt(source, parts)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    os.chmod(tmp, _default_mode(0o777))  # mkdtemp makes 0700; give the usual permissions
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-work-", dir=out_dir.parent))
    checks: list = []
    report: dict = {}
    try:
        hf_dir = tmp if to in ("merged", "vllm") else work / "merged"
        save_dtype = dtype if to in ("merged", "vllm") else "f32"  # the converter reads full precision
        echo(f"  saving merged weights ({save_dtype}) …")
        _save_merged(merged, tokenizer, hf_dir, save_dtype, eot_ids)
        checks.append(vf.check_delta(info.delta_norm, info.modules, info.zero_modules, source.kind))
        checks.append(vf.check_vocab_rows(hf_dir / "config.json", tokenizer))
        checks.append(vf.check_generation_config(hf_dir / "generation_config.json", eot_ids))
        echo("  checking merged against unmerged …")
        saved = mg._plain_base(hf_dir)
        max_logit = mg.max_logit_diff(saved, reference, tokenizer, prompts)
        checks.append(vf.check_merge(saved, reference, tokenizer, prompts, save_dtype, eot_ids, max_logit))
        del reference
        files: dict = {}
        if to in ("gguf", "ollama"):
            echo(f"  converting to GGUF ({quant}) with llama.cpp's converter …")
            gguf_path = gguf_mod.convert(hf_dir, tmp / "model.gguf", quant)
            files["gguf"] = gguf_path.name
            checks += vf.check_gguf_metadata(vf.gguf_metadata(gguf_path), tokenizer, eot_ids, tokenizer.chat_template)
            echo("  loading the GGUF in llama.cpp and checking it (HF's greedy answers, llama.cpp's, stopping) …")
            from tunewise.progress import progress

            # one answer per held-out prompt from HF, two from llama.cpp (the agreement and the stop check)
            with progress("  answers", 3 * len(prompts), unit="answer") as prog:  # on stderr
                tick = lambda: prog.update(advance=1)  # noqa: E731
                hf_greedy = vf.greedy_texts(saved, tokenizer, prompts, vf.MATCH_TOKENS, eot_ids, tick=tick)
                llm = vf.LlamaCpp(gguf_path)
                try:
                    checks += vf.check_gguf_runtime(llm, tokenizer, prompts, hf_greedy, quant, eot_ids, prompts,
                                                    tick=tick)
                finally:
                    llm.close()
        if to == "ollama":
            modelfile = tmp / "Modelfile"
            atomic_write_text(modelfile, modelfile_text(tp.ollama_template(parts), eot_strings, system))
            files["modelfile"] = "Modelfile"
            checks += vf.check_modelfile(modelfile, tokenizer, eot_strings, system)
        seconds = time.perf_counter() - start
        report = {
            "source": str(source.ref), "kind": source.kind, "target": to, "dtype": save_dtype,
            "quant": quant if to in ("gguf", "ollama") else None, "merge": info.method,
            "qlora_candidates": info.candidates or None, "qlora_base": info.chosen, "end_of_turn_ids": eot_ids, "stop": eot_strings,
            "system_prompt": system, "prompts_from": prompts_from, "n_prompts": len(prompts),
            "files": files, "checks": vf.report_dict(checks), "passed": all(c.passed for c in checks),
            "seconds": round(seconds, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        from tunewise import __version__
        from tunewise.hardware import describe_cpu

        report["tunewise_version"] = __version__
        report["cpu"] = describe_cpu()
        atomic_write_text(tmp / "export_report.json", json.dumps(report, indent=2, ensure_ascii=False))
        atomic_write_text(tmp / "README.md", readme_text(to, out_dir, report, name, gpus, source))
        echo("")
        vf.print_checks(checks, echo)
        if vf.failed(checks):
            rejected = out_dir.with_name(out_dir.name + ".rejected")
            replace_dir(tmp, rejected)
            names = ", ".join(c.name for c in vf.failed(checks))
            raise TunewiseError(f"export failed its checks ({names}); the output was moved aside to {rejected}",
                                f"see {rejected / 'export_report.json'}")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    echo(f"\nExported to {out_dir} in {report['seconds']:.0f} s — all {len(checks)} checks passed.")
    echo(next_step(to, out_dir, name, gpus))
    return ExportResult(out_dir, to, checks, report, report["seconds"])


def write_merged(ref: str, out: Path, dtype: str = "f32") -> Path:
    """The merged HF directory for ``ref`` without the checks (what the fast inference engine converts
    to GGUF, so that compare and serve run the model exactly as `export` builds it: QLoRA adapters
    merged into the de-quantised NF4 base, LoRA into the fp32 base)."""
    from tunewise.export import merge as mg
    from tunewise.export import template as tp
    from tunewise.models import load_tokenizer

    source = mg.resolve_source(ref)
    tokenizer = load_tokenizer(source.ref)
    prompts, _ = mg.held_out_prompts(source)
    reference = mg.load_reference(source) if source.kind == "qlora" else None
    merged, _, _ = mg.merged_model(source, reference, tokenizer, prompts)
    try:
        parts = tp.template_parts(tokenizer)
    except TunewiseError:
        parts = None
    eot_ids = tp.end_of_turn_ids(tokenizer, getattr(merged, "generation_config", None), parts)
    _save_merged(merged, tokenizer, Path(out), dtype, eot_ids)
    return Path(out)


def _save_merged(model, tokenizer, out: Path, dtype: str, eot_ids: list[int]) -> None:
    """safetensors + tokenizer (with the training chat template) + generation_config with every
    end-of-turn id."""
    from transformers import GenerationConfig

    model = model.to(_torch_dtype(dtype))
    model.config.use_cache = True
    gen = getattr(model, "generation_config", None) or GenerationConfig()
    gen.eos_token_id = eot_ids if len(eot_ids) > 1 else eot_ids[0]
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.generation_config = gen
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    gen.save_pretrained(out)
    model.to(_torch_dtype("f32"))


def _system_prompt(source, parts) -> str | None:
    """The system prompt every training example shares, else the template's default one."""
    cfg = source.run_config
    if cfg is not None:
        from tunewise.export.merge import _read

        try:
            convs = _read(cfg.datasets)
        except (TunewiseError, OSError):
            convs = []
        systems = {c.messages[0].content if c.messages and c.messages[0].role == "system" else None for c in convs}
        if len(systems) == 1 and None not in systems:
            return systems.pop()
    return parts.default_system if parts is not None else None


def modelfile_text(template: str, stops: list[str], system: str | None) -> str:
    lines = ["# Written by tunewise export. Create the model with:  ollama create NAME -f Modelfile",
             "FROM ./model.gguf", f'TEMPLATE """{template}"""']
    if system is not None:
        if '"""' in system:
            raise TunewiseError('the system prompt contains """, which a Modelfile cannot quote',
                                "remove the triple quotes from the system prompt")
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def next_step(to: str, out_dir: Path, name: str | None, gpus: int, adapter_name: str | None = None) -> str:
    model_name = name or out_dir.name
    if to == "ollama":
        return f"Run it:  cd {out_dir} && ollama create {model_name} -f Modelfile && ollama run {model_name}"
    if to == "gguf":
        return f"Run it:  llama-server -m {out_dir / 'model.gguf'}   (or: tunewise serve {out_dir / 'model.gguf'})"
    if to == "vllm":
        return "Serve it:  " + vllm_command(out_dir, gpus, name)
    return f"Load it:  AutoModelForCausalLM.from_pretrained({str(out_dir)!r})   (or: tunewise serve {out_dir})"


def vllm_command(model_dir: Path, gpus: int, name: str | None, adapter: Path | None = None, rank: int | None = None) -> str:
    cmd = f"vllm serve {model_dir}"
    if name:
        cmd += f" --served-model-name {name}"
    if gpus > 1:
        cmd += f" --tensor-parallel-size {gpus}"
    if adapter is not None:
        cmd += f" --enable-lora --lora-modules {name or 'finetuned'}={adapter} --max-lora-rank {rank}"
    return cmd + " --generation-config auto"


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest value vLLM's --max-lora-rank accepts that holds ``rank``."""
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    return next((a for a in allowed if a >= rank), rank)


def readme_text(to: str, out_dir: Path, report: dict, name: str | None, gpus: int, source, cmd: str | None = None) -> str:
    checks = "\n".join(f"- {'PASS' if c['passed'] else 'FAIL'} **{c['name']}**: {c['detail']}" for c in report.get("checks", []))
    return (f"# {out_dir.name}\n\nExported by tunewise {report.get('tunewise_version', '')} from `{source.ref}` "
            f"({source.kind}) on {report.get('created', '')}.\n\n## Use it\n\n```\n{cmd or next_step(to, out_dir, name, gpus)}\n```\n\n"
            f"End-of-turn tokens (stop): {', '.join(report.get('stop', []))}\n\n## Verification\n\n{checks}\n")


def _export_adapter(source, tokenizer, parts, out_dir: Path, gpus: int, name: str | None, echo, start) -> ExportResult:
    """vLLM base + adapter hand-off: refused when vLLM would not load the adapter as trained."""
    from tunewise.export import template as tp
    from tunewise.export import verify as vf
    from tunewise.paths import atomic_dir

    if source.kind not in ("lora", "qlora"):
        raise TunewiseError(f"--adapter needs a LoRA/QLoRA run; {source.ref} is {source.kind}",
                            "drop --adapter to export the merged model")
    cfg = json.loads((source.adapter_dir / "adapter_config.json").read_text())
    if cfg.get("modules_to_save"):
        raise TunewiseError(f"the adapter trains whole modules too (modules_to_save: {cfg['modules_to_save']}), "
                            "which vLLM's LoRA serving does not load", "export the merged model: drop --adapter")
    from tunewise.models import load_tokenizer

    base_tok = load_tokenizer(str(source.model_dir))
    if len(tokenizer) != len(base_tok):
        raise TunewiseError(f"the run added {len(tokenizer) - len(base_tok)} tokens to the base tokenizer, which "
                            "vLLM's LoRA serving cannot add", "export the merged model: drop --adapter")
    # vLLM serves a LoRA with the base model's tokenizer and chat template: the run must have trained with the same
    if (tokenizer.chat_template or "") != (base_tok.chat_template or ""):
        raise TunewiseError("the run was trained with a chat template other than its base model's, and vLLM serves "
                            "a LoRA adapter with the base's: its prompts would not be the ones the adapter learned",
                            "export the merged model (drop --adapter): it carries the training template")
    # `vllm serve BASE --generation-config auto` stops where BASE's generation_config.json says: every
    # end-of-turn id the run's template writes must be there, or vLLM answers past the end of the turn
    eot_ids = tp.end_of_turn_ids(tokenizer, None, parts)
    stops = vf.check_generation_config(source.model_dir / "generation_config.json", eot_ids)
    if not stops.passed:
        named = ", ".join(f"{i} ({t})" for i, t in zip(eot_ids, tp.stop_strings(tokenizer, eot_ids)))
        raise TunewiseError(f"vLLM would serve the adapter with the base model's "
                            f"{source.model_dir / 'generation_config.json'}, which does not stop where the run's "
                            f"template ends a turn ({stops.detail}; the template's end-of-turn tokens: {named}): "
                            "its answers would run past the end of the turn",
                            "export the merged model (drop --adapter): it writes them into its own generation_config.json")
    rank = int(cfg.get("r") or 16)
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(source.adapter_dir, tmp / "adapter")
        cmd = vllm_command(source.model_dir, gpus, name, out_dir / "adapter", vllm_max_lora_rank(rank))
        checks = [vf.Check("vLLM LoRA hand-off", True, f"rank {rank}, no modules_to_save, no added tokens, the base "
                           "model's own chat template (what vLLM serves the adapter with)",
                           "an adapter a server refuses, or prompts rendered with another template than in training"), stops]
        report = {"source": str(source.ref), "kind": source.kind, "target": "vllm", "adapter": True, "command": cmd,
                  "checks": vf.report_dict(checks), "passed": True,
                  "seconds": round(time.perf_counter() - start, 1)}
        atomic_write_text(tmp / "export_report.json", json.dumps(report, indent=2))
        atomic_write_text(tmp / "README.md", readme_text("vllm", out_dir, report, name, gpus, source, cmd))
    echo(f"Exported the adapter to {out_dir}.\nServe it:  {cmd}")
    return ExportResult(out_dir, "vllm", checks, report, report["seconds"])
