"""compare, eval and chat on the inference layer: llama.cpp answers every arm's inputs at once after
the parity gate against the HF reference; latency is measured alone, throughput at concurrency;
a failed gate falls back to the reference for every arm (or stops); chat streams."""

from __future__ import annotations

import json

import pytest

from test_compare import QA, fake_run_dir, rows
from test_eval import run_cli, write_jsonl
from tunewise.compare import load_compare_config, run_compare
from tunewise.errors import TunewiseError

pytest.importorskip("xllamacpp")


@pytest.fixture(scope="module")
def talky(tmp_path_factory, smol_tokenizer_dir):
    """A tiny random Llama with varied greedy text (untied output layer)."""
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("talky"), smol_tokenizer_dir, tie=False)


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(autouse=True)
def shared_gguf(tunewise_home, gguf_cache):
    """Every test gets its own tunewise home; the GGUF conversions (named by content) are shared so
    the tiny models convert once per module."""
    (tunewise_home / "gguf").symlink_to(gguf_cache)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, talky):
    """Data and a fine-tuned run (its merged GGUF converts once for the module)."""
    files = tmp_path_factory.mktemp("files")
    write_jsonl(files / "train.jsonl", rows(QA, facts=False))
    write_jsonl(files / "eval.jsonl", rows(QA * 3))  # 12 eval questions: 5 answered alone, 7 at once
    return files, fake_run_dir(talky, files / "run")


def cfg(files, talky, run, **kw):
    d = {"kind": "compare", "name": "engines", "base_model": str(talky), "eval_file": str(files / "eval.jsonl"),
         "train_file": str(files / "train.jsonl"), "max_new_tokens": 8, "output_dir": str(files / "report"),
         "engine": "llama.cpp", "precision": "f32", "n_parallel": 4, "latency_samples": 5,
         "arms": [{"type": "prompt"}, {"type": "few_shot", "k": 1}, {"type": "finetuned", "run": str(run)}]}
    d.update(kw)
    return load_compare_config(data=d)


def test_compare_on_llamacpp_gates_each_model_and_reports_latency_and_throughput(setup, talky, tmp_path, monkeypatch):
    import tunewise.compare.runner as runner

    files, run = setup
    gated: dict[str, list] = {}
    open_checked = runner.open_checked

    def spy(ref, *args, **kwargs):
        gated[ref] = [r.messages for r in args[3]]  # (engine, precision, reference, prompts)
        return open_checked(ref, *args, **kwargs)

    monkeypatch.setattr(runner, "open_checked", spy)
    res = run_compare(cfg(files, talky, run, output_dir=str(tmp_path / "report")), quiet=True)
    # the base model's check takes its prompts in turn from its two arms (prompt, few-shot), so the
    # long few-shot prompts are checked too, not only the first arm's
    prompt_arm, few_shot = gated[str(talky)][0::2], gated[str(talky)][1::2]
    assert len(gated[str(talky)]) == 4 and len(gated[str(run)]) == 4
    assert all(len(m) < len(f) for m, f in zip(prompt_arm, few_shot))  # the demonstration turns
    assert [m[-1] for m in prompt_arm] == [f[-1] for f in few_shot]  # the same eval questions
    rep = json.loads(res.json_path.read_text(encoding="utf-8"))
    eng = rep["engine"]
    assert eng["name"] == "llama.cpp" and eng["precision"] == "f32" and eng["concurrency"] == 4
    from tunewise.infer.llamacpp import build_isa

    assert eng["built_for"] == build_isa() and eng["built_for"]  # which llama.cpp build answered (x86: AVX2 or wider)
    assert not eng["fell_back"] and set(eng["parity"]) == {str(talky), str(run)}  # one check per local model
    for p in eng["parity"].values():
        assert p["passed"] and p["n"] == 4 and p["identical"] >= 0.75
    for a in rep["arms"]:
        assert a["engine"] == "llama.cpp" and a["precision"] == "f32"
        assert a["latency_samples"] == 5 and a["throughput_concurrency"] == 4 and a["throughput_queries"] == 7
        assert a["throughput_qph"] > 0 and a["throughput_tokens_per_s"] > 0
        assert a["throughput_qph"] == pytest.approx(7 / a["throughput_wall_s"] * 3600)
        # latency: the 5 requests answered alone, plus their prompt building
        lines = [json.loads(x) for x in (res.output_dir / a["outputs_file"]).read_text().splitlines()]
        alone = sorted(x["latency_s"] for x in lines[:5])
        assert a["latency_p50_s"] == pytest.approx(alone[2]) and len(lines) == 12
        assert a["decode_tokens_per_s"] > 0 and a["model_params"] > 0
    assert rep["arms"][0]["model_params"] == rep["arms"][2]["model_params"]  # the adapter is not counted
    assert any(n.startswith(f"{talky}: parity passed: llama.cpp f32 vs hf fp32 on 4 prompts") for n in rep["notes"])
    html = res.html_path.read_text(encoding="utf-8")
    assert "id='engine'" in html and "parity passed" in html and "queries/hour" in html


def test_a_failed_parity_check_falls_back_to_the_reference_for_every_arm(setup, talky, monkeypatch, tmp_path):
    import tunewise.infer.parity as parity

    files, run = setup
    impossible = parity.Tolerance(1.01, 1.01)
    monkeypatch.setattr(parity, "tolerance_for", lambda precision: impossible)
    res = run_compare(cfg(files, talky, run, output_dir=str(tmp_path / "report"),
                          arms=[{"type": "prompt"}, {"type": "finetuned", "run": str(run)}]), quiet=True)
    rep = res.report
    assert rep["engine"]["fell_back"] and rep["engine"]["name"] == "hf" and rep["engine"]["precision"] == "fp32"
    assert rep["engine"]["built_for"] is None  # no llama.cpp answered
    assert all(not p["passed"] for p in rep["engine"]["parity"].values())
    for a in rep["arms"]:  # every arm on the reference, none left on llama.cpp
        assert a["engine"] == "hf" and a["precision"] == "fp32" and a["throughput_concurrency"] == 1
        assert a["latency_samples"] == 12  # the reference answers one at a time: every answer is a sample
    assert any(n.startswith(f"PARITY FAILED for {talky}") for n in rep["notes"])
    assert any("every local arm answers with the reference engine" in n for n in rep["notes"])
    assert "PARITY FAILED" in res.html_path.read_text(encoding="utf-8")
    with pytest.raises(TunewiseError) as e:
        run_compare(cfg(files, talky, run, output_dir=str(tmp_path / "stop"), on_parity_failure="stop",
                        arms=[{"type": "prompt"}]), quiet=True)
    assert "disagrees with the reference" in e.value.message and "on_parity_failure: fallback" in e.value.hint


def test_eval_on_llamacpp(talky, tmp_path):
    from tunewise.evaluate import evaluate

    data = write_jsonl(tmp_path / "eval.jsonl", rows(QA * 2))
    rep = evaluate(str(talky), data, max_new_tokens=6, engine="llama.cpp", precision="f32", n_parallel=2,
                   latency_samples=3, progress=False, outputs_path=tmp_path / "out.jsonl")
    assert rep.engine == "llama.cpp f32" and rep.parity["passed"] and rep.parity["n"] == 4
    th = rep.throughput
    assert th["latency_samples"] == 3 and th["throughput_concurrency"] == 2 and th["throughput_queries"] == 5
    assert th["throughput_qph"] > 0 and th["throughput_tokens_per_s"] > 0
    lat = sorted(e.latency_s for e in rep.examples[:3])
    assert rep.latency_p50_s == pytest.approx(lat[1]) and rep.n_examples == 8
    assert "loss" in rep.metrics  # computed by the HF reference
    assert any(n.startswith(f"{talky}: parity passed") for n in rep.notes)
    summary = rep.summary()
    assert summary["engine"] == "llama.cpp f32" and summary["throughput"]["throughput_qph"] > 0


def test_cli_eval_engine_option(talky, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "eval.jsonl", rows(QA))
    code, out, err = run_cli(["eval", "--model", str(talky), "--data", str(data), "--metrics", "rouge_l",
                              "--max-new-tokens", "4", "--engine", "llama.cpp", "--precision", "f32"], capsys)
    assert code == 0, err
    assert "llama.cpp f32" in out and "queries/hour" in out and "parity passed" in out
    code, out, err = run_cli(["eval", "--model", str(talky), "--data", str(data), "--engine", "vllm"], capsys)
    assert code == 1 and "unknown engine 'vllm'" in err and "Traceback" not in err


def test_chat_streams_from_the_engine(talky, capsys, monkeypatch):
    from tunewise.infer.llamacpp import LlamaCppEngine

    pieces: list[str] = []
    real = LlamaCppEngine.stream

    def recording(self, request):
        for p in real(self, request):
            if isinstance(p, str):
                pieces.append(p)
            yield p

    monkeypatch.setattr(LlamaCppEngine, "stream", recording)
    code, out, err = run_cli(["chat", str(talky), "--prompt", "Hello", "--max-new-tokens", "12",
                              "--engine", "llama.cpp", "--precision", "f32"], capsys)
    assert code == 0, err
    assert len(pieces) > 1 and out.startswith("".join(pieces))  # printed piece by piece as they came
    assert "12 tokens" in err and "llama.cpp f32" in err and "cut at --max-new-tokens" in err
    code, out, err = run_cli(["chat", str(talky), "--prompt", "Hi", "--engine", "llama.cpp",
                              "--quantization", "8bit"], capsys)
    assert code == 1 and "--quantization" in err and "Traceback" not in err
