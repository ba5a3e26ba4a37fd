"""`tunewise export`: merged / GGUF / Ollama / vLLM artifacts from LoRA, QLoRA and full runs, each
verification check failing on a deliberately broken artifact, the missing-quantizer error and
--overwrite protection. Tiny random models here; the embedded model in the e2e test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.errors import TunewiseError
from tunewise.export import template as tp
from tunewise.export import verify as vf

from train_helpers import cli, make_cfg, small_data  # noqa: F401  (fixture)

LLAMA3 = ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
          "'<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Mistral-style: the system prompt is folded into the first user turn; no per-message pieces exist.
FOLDED = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {% if loop.index0 == 1 %}"
          "{{ messages[0]['content'] }} {% endif %}{{ m['content'] }} [/INST]{% elif m['role'] == 'assistant' %}"
          "{{ m['content'] }}</s>{% endif %}{% endfor %}")


# ---------------------------------------------------------------------------------------------
# Templates: HF chat template -> Ollama TEMPLATE, rendered with Ollama's semantics
# ---------------------------------------------------------------------------------------------


def test_chatml_template_with_default_system_becomes_an_equivalent_ollama_template(smol_tokenizer):
    parts = tp.template_parts(smol_tokenizer)
    assert parts.default_system.startswith("You are a helpful AI assistant named SmolLM")
    template = tp.ollama_template(parts)
    for msgs in (tp.SAMPLE_CONVERSATION, tp.SAMPLE_CONVERSATION[1:]):
        want = smol_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert tp.render_ollama(template, msgs, system=parts.default_system) == want
    # without the Modelfile's SYSTEM line, a conversation without a system message renders differently
    assert tp.render_ollama(template, tp.SAMPLE_CONVERSATION[1:]) != smol_tokenizer.apply_chat_template(
        tp.SAMPLE_CONVERSATION[1:], tokenize=False, add_generation_prompt=True)


def test_llama3_style_template_keeps_its_start_text(smol_tokenizer):
    parts = tp.template_parts(smol_tokenizer, LLAMA3)
    assert parts.start == "<|begin_of_text|>" and parts.default_system is None
    want = smol_tokenizer.apply_chat_template(tp.SAMPLE_CONVERSATION, tokenize=False, add_generation_prompt=True,
                                              chat_template=LLAMA3)
    assert tp.render_ollama(tp.ollama_template(parts), tp.SAMPLE_CONVERSATION) == want


def test_template_that_folds_the_system_prompt_is_refused_not_exported_wrong(smol_tokenizer):
    with pytest.raises(TunewiseError, match="not a simple per-message template"):
        tp.template_parts(smol_tokenizer, FOLDED)


def test_go_template_renderer_follows_trim_markers_and_else_branches():
    tpl = '{{- range .Messages }}\n  {{- if eq .Role "user" }}U:{{ .Content }}\n{{ else }}X:{{ .Content }}\n{{ end }}{{ end -}}\n  END'
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tp.render_ollama(tpl, msgs) == "U:hi\nX:yo\nEND"


def test_end_of_turn_ids_include_the_special_token_after_an_assistant_turn(smol_tokenizer):
    parts = tp.template_parts(smol_tokenizer)
    ids = tp.end_of_turn_ids(smol_tokenizer, None, parts)
    assert smol_tokenizer.convert_ids_to_tokens(ids) == ["<|im_end|>"]


# ---------------------------------------------------------------------------------------------
# Checks fail on broken artifacts
# ---------------------------------------------------------------------------------------------


def _modelfile(tmp_path, smol_tokenizer, stops=("<|im_end|>",), system=True, extra="", template=None) -> Path:
    from tunewise.export import modelfile_text

    parts = tp.template_parts(smol_tokenizer)
    text = modelfile_text(template or tp.ollama_template(parts), list(stops),
                          (system if isinstance(system, str) else parts.default_system) if system else None)
    path = tmp_path / "Modelfile"
    path.write_text(text + extra)
    return path


def test_modelfile_checks_pass_on_a_good_modelfile(tmp_path, smol_tokenizer):
    checks = vf.check_modelfile(_modelfile(tmp_path, smol_tokenizer), smol_tokenizer, ["<|im_end|>"], None)
    assert all(c.passed for c in checks), [c.line() for c in checks]


def test_modelfile_with_the_runs_own_shared_system_prompt_passes(tmp_path, smol_tokenizer):
    """A run trained with one system prompt on every example exports it as SYSTEM: Ollama then sends
    it with every conversation that has none, which is what the training template renders."""
    path = _modelfile(tmp_path, smol_tokenizer, system="You are a support bot for Acme.")
    assert 'SYSTEM """You are a support bot for Acme."""' in path.read_text()
    checks = vf.check_modelfile(path, smol_tokenizer, ["<|im_end|>"], "You are a support bot for Acme.")
    assert all(c.passed for c in checks), [c.line() for c in checks]


@pytest.mark.parametrize("broken,failing", [
    (dict(stops=()), "Modelfile stop"),
    (dict(system=False), "Modelfile template"),
    (dict(template='{{ range .Messages }}{{ .Content }}{{ end }}'), "Modelfile template"),
    (dict(extra="PARAMETER temperature 1.5\n"), "Modelfile FROM"),
])
def test_modelfile_checks_fail_on_a_broken_modelfile(tmp_path, smol_tokenizer, broken, failing):
    checks = vf.check_modelfile(_modelfile(tmp_path, smol_tokenizer, **broken), smol_tokenizer, ["<|im_end|>"], None)
    assert [c.name for c in checks if not c.passed] == [failing]


def test_generation_config_without_the_end_of_turn_id_fails(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"eos_token_id": 0}))
    assert not vf.check_generation_config(path, [0, 2]).passed
    path.write_text(json.dumps({"eos_token_id": [0, 2]}))
    assert vf.check_generation_config(path, [0, 2]).passed


def test_a_merge_that_changed_nothing_fails():
    assert not vf.check_delta(0.0, 12, [f"m{i}" for i in range(12)], "lora").passed
    assert vf.check_delta(3.2, 12, [], "lora").passed
    assert vf.check_delta(None, 0, [], "model").passed  # nothing to merge: not applicable


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model_dir) -> Path:
    from tunewise.export.gguf import convert

    return convert(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "model.gguf", "f16")


def _rewrite_gguf(src: Path, dst: Path, drop: str | None = None, set_: dict | None = None) -> Path:
    """A copy of ``src`` without the metadata key ``drop`` and with ``set_`` keys replaced (a
    deliberately broken GGUF)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    set_ = dict(set_ or {})
    for key, field in reader.fields.items():
        if key == drop or key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        value = set_.pop(key, field.contents())
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_gguf_metadata_checks_pass_then_fail_when_eos_or_template_is_removed(tiny_gguf, tmp_path, smol_tokenizer):
    eot = [smol_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    meta = vf.gguf_metadata(tiny_gguf)
    good = vf.check_gguf_metadata(meta, smol_tokenizer, eot, smol_tokenizer.chat_template)
    assert all(c.passed for c in good), [c.line() for c in good]

    no_eos = vf.gguf_metadata(_rewrite_gguf(tiny_gguf, tmp_path / "no-eos.gguf", "tokenizer.ggml.eos_token_id"))
    bad = vf.check_gguf_metadata(no_eos, smol_tokenizer, eot, smol_tokenizer.chat_template)
    assert [c.name for c in bad if not c.passed] == ["GGUF end-of-turn"]

    no_tpl = vf.gguf_metadata(_rewrite_gguf(tiny_gguf, tmp_path / "no-tpl.gguf", "tokenizer.chat_template"))
    bad = vf.check_gguf_metadata(no_tpl, smol_tokenizer, eot, smol_tokenizer.chat_template)
    assert [c.name for c in bad if not c.passed] == ["GGUF chat template"]


def test_gguf_vocabulary_check_fails_when_an_added_token_is_missing(tiny_gguf, smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<|tool_call|>"]})
    checks = vf.check_gguf_metadata(vf.gguf_metadata(tiny_gguf), tok, [2], tok.chat_template)
    assert [c.name for c in checks if not c.passed] == ["GGUF vocabulary"]


def test_llama_cpp_runtime_checks_fail_when_the_gguf_cannot_stop(tiny_gguf, tmp_path, smol_tokenizer):
    """A GGUF whose eos was removed: the metadata check fails, and so does the stop smoke test in
    llama.cpp (a random model never emits <|im_end|> by itself, with or without eos)."""
    broken = _rewrite_gguf(tiny_gguf, tmp_path / "no-eos.gguf", "tokenizer.ggml.eos_token_id")
    llm = vf.LlamaCpp(broken)
    try:
        text, finish, n = llm.chat([{"role": "user", "content": "hi"}], 24)
        assert finish == "length" and n == 24
        ids = llm.tokenize("<|im_start|>user\nhi<|im_end|>", add_special=False)
        assert ids == smol_tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    finally:
        llm.close()


def _runtime_checks(gguf_path: Path, tokenizer) -> dict:
    prompts = [[{"role": "user", "content": "hi"}]]
    llm = vf.LlamaCpp(gguf_path)
    try:
        checks = vf.check_gguf_runtime(llm, tokenizer, prompts, [[]], "f16", [2], prompts)
    finally:
        llm.close()
    return {c.name: c for c in checks}


def test_double_bos_is_caught(tiny_gguf, tmp_path, smol_tokenizer):
    """llama.cpp told to add a BOS (<|im_start|> here) in front of a template that already writes it:
    the prompt llama.cpp builds starts with two BOS tokens and no longer matches training's ids."""
    assert _runtime_checks(tiny_gguf, smol_tokenizer)["one BOS"].passed
    broken = _rewrite_gguf(tiny_gguf, tmp_path / "bos.gguf", set_={"tokenizer.ggml.add_bos_token": True})
    check = _runtime_checks(broken, smol_tokenizer)["one BOS"]
    assert not check.passed and "two BOS" in check.detail


def test_wrong_pre_tokenizer_is_caught(tiny_gguf, tmp_path, smol_tokenizer):
    """A GGUF whose pre-tokenizer is not the model's (the converter guessing wrong) splits the probe
    differently in llama.cpp."""
    assert _runtime_checks(tiny_gguf, smol_tokenizer)["GGUF tokenizer"].passed
    broken = _rewrite_gguf(tiny_gguf, tmp_path / "pre.gguf", set_={"tokenizer.ggml.pre": "default"})
    assert not _runtime_checks(broken, smol_tokenizer)["GGUF tokenizer"].passed


def test_gguf_answers_and_template_checks_fail_on_a_different_gguf(tiny_gguf, tmp_path, smol_tokenizer):
    """Greedy answers of another model (here: made-up reference tokens) and a GGUF whose template is
    not the training one both fail."""
    prompts = [[{"role": "user", "content": "hi"}]]
    llm = vf.LlamaCpp(tiny_gguf)
    try:
        checks = {c.name: c for c in vf.check_gguf_runtime(llm, smol_tokenizer, prompts, [[42] * 16], "f16", [2], prompts)}
    finally:
        llm.close()
    assert not checks["GGUF answers = merged"].passed
    other = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    broken = _rewrite_gguf(tiny_gguf, tmp_path / "tpl.gguf", set_={"tokenizer.chat_template": other})
    assert not _runtime_checks(broken, smol_tokenizer)["llama.cpp template"].passed


def test_embedding_rows_check_fails_when_the_vocabulary_shrank(tmp_path, smol_tokenizer):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"vocab_size": 32000}))
    assert not vf.check_vocab_rows(cfg, smol_tokenizer).passed
    cfg.write_text(json.dumps({"vocab_size": len(smol_tokenizer)}))
    assert vf.check_vocab_rows(cfg, smol_tokenizer).passed


def test_merge_check_fails_when_the_merged_model_answers_differently(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    from conftest import build_tiny_model
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(str(build_tiny_model(tmp_path / "a", smol_tokenizer_dir, tie=False)))
    b = AutoModelForCausalLM.from_pretrained(str(build_tiny_model(tmp_path / "b", smol_tokenizer_dir, seed=1, tie=False)))
    from tunewise.export.merge import max_logit_diff

    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "What is LoRA?"}]]
    assert vf.check_merge(a, a, smol_tokenizer, prompts, "f32", [2], max_logit_diff(a, a, smol_tokenizer, prompts)).passed
    bad = vf.check_merge(b, a, smol_tokenizer, prompts, "f32", [2], max_logit_diff(b, a, smol_tokenizer, prompts))
    assert not bad.passed and "max |Δ logit|" in bad.detail


# ---------------------------------------------------------------------------------------------
# Whole exports on tiny runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_model_dir, small_data):
    """A LoRA, a QLoRA and a full run of 3 steps on the tiny model (module-wide, read-only)."""
    from tunewise.train import train

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for method in ("lora", "qlora", "full"):
        cfg = make_cfg(tiny_model_dir, small_data, root / method, method=method, save_steps=None)
        runs[method] = Path(train(cfg, progress=False).output_dir)
    return runs


def _quiet(_):
    pass


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_merged_export_of_each_method_passes_its_checks(tiny_runs, tmp_path, method):
    from tunewise.export import export

    res = export(str(tiny_runs[method]), to="merged", out=tmp_path / "m", echo=_quiet)
    assert res.passed, [c.line() for c in res.checks]
    report = json.loads((tmp_path / "m" / "export_report.json").read_text())
    assert report["kind"] == method and report["passed"]
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "README.md").is_file()
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert 2 in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])
    if method == "qlora":
        assert {"plain base", "NF4 round-tripped base"} <= set(report["qlora_candidates"])
        assert report["qlora_base"] == "NF4 round-tripped base"
        # the adapter was fitted to the de-quantised NF4 weights: that base reproduces it best
        assert report["qlora_candidates"]["NF4 round-tripped base"] < report["qlora_candidates"]["plain base"]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_ollama_export_writes_a_verified_gguf_and_modelfile(tiny_runs, tmp_path, method):
    """Every check runs and passes except `stops by itself`: a random tiny model never ends its turn
    (the e2e test below passes them all on the real model), so the export is rejected, with its report."""
    from tunewise.export import export

    with pytest.raises(TunewiseError, match=r"failed its checks \(stops by itself\)"):
        export(str(tiny_runs[method]), to="ollama", out=tmp_path / "o", quant="f16", echo=_quiet)
    rejected = tmp_path / "o.rejected"
    report = json.loads((rejected / "export_report.json").read_text())
    passed = {c["name"] for c in report["checks"] if c["passed"]}
    assert {"weights changed", "merged = unmerged", "GGUF vocabulary", "GGUF end-of-turn", "GGUF chat template",
            "GGUF tokenizer", "one BOS", "llama.cpp template", "GGUF answers = merged", "Modelfile stop",
            "Modelfile template", "Modelfile FROM"} <= passed
    assert (rejected / "model.gguf").is_file() and (rejected / "Modelfile").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in (rejected / "Modelfile").read_text()


def test_a_failed_check_moves_the_output_aside_and_exits_1(tiny_runs, tmp_path):
    """The tiny random model never ends its turn: `stops by itself` fails, so the export exits 1
    and leaves OUT.rejected (with its report), never OUT looking valid."""
    code, out = cli(["export", str(tiny_runs["lora"]), "--to", "gguf", "--quant", "f16", "--out", str(tmp_path / "g")])
    assert code == 1 and "stops by itself" in out
    assert not (tmp_path / "g").exists()
    report = json.loads((tmp_path / "g.rejected" / "export_report.json").read_text())
    assert not report["passed"] and (tmp_path / "g.rejected" / "model.gguf").is_file()


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_vllm_export_of_qlora_and_full_runs(tiny_runs, tmp_path, method):
    from tunewise.export import export

    res = export(str(tiny_runs[method]), to="vllm", out=tmp_path / "v", dtype="bf16", echo=_quiet)
    assert res.passed and res.report["dtype"] == "bf16" and (tmp_path / "v" / "config.json").is_file()
    assert f"vllm serve {tmp_path / 'v'}" in (tmp_path / "v" / "README.md").read_text()
    if method == "full":
        with pytest.raises(TunewiseError, match="--adapter needs a LoRA/QLoRA run"):
            export(str(tiny_runs[method]), to="vllm", adapter=True, out=tmp_path / "a", echo=_quiet)


def test_vllm_export_merged_and_adapter(tiny_runs, tmp_path):
    from tunewise.export import export

    res = export(str(tiny_runs["lora"]), to="vllm", out=tmp_path / "v", gpus=2, name="tiny", echo=_quiet)
    readme = (tmp_path / "v" / "README.md").read_text()
    assert res.passed and f"vllm serve {tmp_path / 'v'} --served-model-name tiny --tensor-parallel-size 2" in readme
    res = export(str(tiny_runs["lora"]), to="vllm", adapter=True, out=tmp_path / "a", name="tiny", echo=_quiet)
    assert "--enable-lora --lora-modules tiny=" in res.report["command"] and "--max-lora-rank 16" in res.report["command"]
    assert (tmp_path / "a" / "adapter" / "adapter_config.json").is_file()


def test_vllm_adapter_hand_off_is_refused_with_modules_to_save(tiny_runs, tmp_path):
    import shutil

    from tunewise.export import export

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    cfg_path = run / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["modules_to_save"] = ["lm_head"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(TunewiseError, match="modules_to_save"):
        export(str(run), to="vllm", adapter=True, out=tmp_path / "a", echo=_quiet)


def test_vllm_adapter_hand_off_is_refused_with_added_tokens_or_another_template(tiny_runs, tmp_path):
    """vLLM serves a LoRA with the base's tokenizer and template: a run that added tokens, or trained
    with another chat template, is refused (the merged export carries both)."""
    import shutil

    from transformers import AutoTokenizer

    from tunewise.export import export

    run = tmp_path / "run-tokens"
    shutil.copytree(tiny_runs["lora"], run)
    tok = AutoTokenizer.from_pretrained(str(run / "adapter"))
    tok.add_tokens(["<|brand_new|>"])
    tok.save_pretrained(str(run / "adapter"))
    with pytest.raises(TunewiseError, match="added 1 tokens"):
        export(str(run), to="vllm", adapter=True, out=tmp_path / "a", echo=_quiet)
    run = tmp_path / "run-template"
    shutil.copytree(tiny_runs["lora"], run)
    tpl = run / "adapter" / "chat_template.jinja"
    assert tpl.is_file()
    tpl.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(TunewiseError, match="chat template other than its base"):
        export(str(run), to="vllm", adapter=True, out=tmp_path / "b", echo=_quiet)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_vllm_adapter_hand_off_needs_the_base_to_stop_at_the_end_of_turn(tiny_runs, tiny_model_dir, tmp_path):
    """`vllm serve BASE --generation-config auto` stops at BASE's eos_token_id: a base whose
    generation_config.json lacks the template's end-of-turn token is refused, naming file and token."""
    import shutil

    from tunewise.export import export

    res = export(str(tiny_runs["lora"]), to="vllm", adapter=True, out=tmp_path / "ok", echo=_quiet)
    assert any(c["name"] == "generation_config stops" and c["passed"] for c in res.report["checks"])
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    gen = json.loads((base / "generation_config.json").read_text())
    gen["eos_token_id"] = 0  # <|endoftext|>, not the template's <|im_end|> (2)
    (base / "generation_config.json").write_text(json.dumps(gen))
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    for f in ("adapter_config.json", "tunewise_base.json"):
        p = run / "adapter" / f
        if p.is_file():
            d = json.loads(p.read_text())
            d["base_model_name_or_path" if f == "adapter_config.json" else "base_model"] = str(base)
            p.write_text(json.dumps(d))
    with pytest.raises(TunewiseError, match=r"generation_config.json.*2 \(<\|im_end\|>\)") as e:
        export(str(run), to="vllm", adapter=True, out=tmp_path / "a", echo=_quiet)
    assert "drop --adapter" in e.value.hint and not (tmp_path / "a").exists()


def test_missing_quantizer_is_a_clear_error_and_writes_nothing(tiny_runs, tmp_path):
    code, out = cli(["export", str(tiny_runs["lora"]), "--to", "gguf", "--quant", "q4_k_m", "--out", str(tmp_path / "q")])
    assert code == 1 and "llama-quantize" in out and "Traceback" not in out
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".tmp-*"))


def test_existing_output_is_not_overwritten_without_overwrite(tiny_runs, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, text = cli(["export", str(tiny_runs["lora"]), "--to", "merged", "--out", str(out)])
    assert code == 1 and "--overwrite" in text and (out / "keep.txt").read_text() == "mine"
    code, text = cli(["export", str(tiny_runs["lora"]), "--to", "merged", "--out", str(out), "--overwrite"])
    assert code == 0, text
    assert not (out / "keep.txt").exists() and (out / "export_report.json").is_file()


def test_out_may_never_be_an_input_even_with_overwrite(tiny_runs, tmp_path):
    """`--out` the run itself, its adapter or a folder holding the run: refused before any work,
    with --overwrite too, and the run is untouched."""
    run = tiny_runs["lora"]
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    for out in (run, run / "adapter", run.parent):
        code, text = cli(["export", str(run), "--to", "merged", "--out", str(out), "--overwrite"])
        assert code == 1 and "never overwrites its input" in text and "Traceback" not in text, text
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


# ---------------------------------------------------------------------------------------------
# End to end: the identity run exported to GGUF answers in llama.cpp and stops by itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_identity_run_exported_to_ollama_answers_in_llama_cpp(embedded_model, identity_run, tmp_path):
    from tunewise.export import export

    res = export(str(identity_run.output_dir), to="ollama", out=tmp_path / "ollama", echo=_quiet)
    assert res.passed, [c.line() for c in res.checks]
    # a runtime other than the one that trained it: llama.cpp, on the exported GGUF
    llm = vf.LlamaCpp(res.out_dir / "model.gguf")
    try:
        text, finish, _ = llm.chat([{"role": "user", "content": "Who are you?"}], 128)
    finally:
        llm.close()
    assert "Zephyrine" in text and finish == "stop", (text, finish)
    modelfile = (res.out_dir / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "FROM ./model.gguf" in modelfile
