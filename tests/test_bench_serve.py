"""bench/serve_throughput.py and bench/serve_soak.py end to end in --quick mode on a tiny model: the
runs finish and their JSON holds every figure (the speeds themselves are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

pytest.importorskip("xllamacpp")
sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def tiny_hf_and_gguf(tmp_path_factory, smol_tokenizer_dir):
    """The tiny random Llama (HF, for the reference arm) and its f32 GGUF (for llama.cpp)."""
    from conftest import build_tiny_model

    from tunewise.export.gguf import convert

    d = tmp_path_factory.mktemp("bench-tiny")
    hf = build_tiny_model(d / "hf", smol_tokenizer_dir, tie=False)
    return hf, convert(hf, d / "tiny-f32.gguf", "f32")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_throughput_quick_run_writes_every_figure(tiny_hf_and_gguf, tmp_path):
    hf, gguf = tiny_hf_and_gguf
    out = tmp_path / "throughput.json"
    proc = run_script("serve_throughput.py", "--quick", "--model", str(hf), "--precisions", "", "--gguf", str(gguf),
                      "--speculative", "f32", "--out", str(out))
    assert proc.stdout.startswith("CPU: ") and "vs HF c1" in proc.stdout
    assert "tokens/s at concurrency 1 =" in proc.stdout  # the first target's ratio line
    data = json.loads(out.read_text())
    assert data["cpu_line"] and data["new_tokens"] == 16 and data["concurrency"] == [1, 4] and data["quick"]
    rows = data["rows"]
    assert [(r["engine"], r["path"], r["concurrency"]) for r in rows] == [
        ("hf", "direct", 1)] + [("llama.cpp", "direct", 1), ("llama.cpp", "direct", 4),
                                ("llama.cpp", "http", 1), ("llama.cpp", "http", 4)] * 2
    assert [r["precision"] for r in rows[5:]] == ["f32+ngram"] * 4  # the arm with n-gram speculation
    for r in rows:
        assert r["requests"] == max(2, r["concurrency"])
        assert 0 < r["generated_tokens"] <= 16 * r["requests"] and r["prompt_tokens"] > 100 * r["requests"]
        assert r["tokens_per_s"] > 0 and r["wall_s"] > 0 and r["peak_rss_bytes"] > 10 * 2**20
        for k in ("ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s"):
            assert r[k] is not None and r[k] > 0, k
        assert r["ttft_p50_s"] <= r["ttft_p95_s"] and r["latency_p50_s"] <= r["latency_p95_s"]
        assert sum(r["finish_reasons"].values()) == r["requests"]
    # the same prompts in every arm: the HF row and llama.cpp's direct concurrency-1 row read the same
    assert rows[0]["prompt_tokens"] == rows[1]["prompt_tokens"]
    assert rows[1]["precision"] == "f32" and data["baseline"] == rows[0]
    targets = data["targets"]
    assert [(t["path"], t["concurrency"]) for t in targets] == [("direct", 1), ("http", 1)] * 2  # no 16 in --quick
    for t in targets:
        row = next(r for r in rows if r["precision"] == t["precision"] and r["path"] == t["path"] and r["concurrency"] == 1)
        assert t["ratio"] == pytest.approx(row["tokens_per_s"] / rows[0]["tokens_per_s"]) and t["target"] == 5
        assert t["pass"] == (t["ratio"] >= 5)
    assert {a["arm"] for a in data["arms"]} == {"hf", "llama.cpp-0-f32", "llama.cpp-f32-ngram"}


def test_throughput_emulating_avx2_caps_the_hf_baseline_or_refuses_a_native_build(tiny_hf_and_gguf, tmp_path):
    """``--isa avx2``: the HF reference runs as on an AVX2-only CPU (fp32, labelled emulated); a
    llama.cpp compiled for a wider instruction set cannot be capped, so the run says so and stops."""
    from tunewise.infer.llamacpp import build_isa

    hf, gguf = tiny_hf_and_gguf
    out = tmp_path / "avx2.json"
    cmd = [sys.executable, str(BENCH / "serve_throughput.py"), "--isa", "avx2", "--quick", "--concurrency", "1",
           "--model", str(hf), "--precisions", "", "--gguf", str(gguf), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if build_isa() != "AVX2":  # `make setup-native` on this machine
        assert proc.returncode != 0 and "cannot cap" in proc.stderr and not out.exists()
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("CPU: ") and "(emulated)" in proc.stdout.splitlines()[0]
    data = json.loads(out.read_text())
    assert data["isa"] == "avx2" and data["cpu"]["kind"].endswith("(emulated)") and data["cpu"]["flags"] == ["avx2"]
    assert data["baseline"]["engine"] == "hf" and data["baseline"]["precision"] == "fp32"


def test_soak_quick_run_has_no_errors_and_reports_rss(tiny_hf_and_gguf, tmp_path):
    _, gguf = tiny_hf_and_gguf
    out = tmp_path / "soak.json"
    proc = run_script("serve_soak.py", "--quick", "--model", str(gguf), "--disconnect-every", "2", "--out", str(out))
    assert "zero_errors: PASS" in proc.stdout and "rss_flat: PASS" in proc.stdout
    data = json.loads(out.read_text())
    assert data["requests"] == 24 and data["errors"] == 0 and data["error_samples"] == [] and data["pass"]
    # 12 streamed requests, every second one dropped by its client; all the others answered
    assert data["dropped_on_purpose"] == 6 and data["answered"] == 18
    assert data["metrics_after"] == {"requests_running": 0, "requests_waiting": 0, "chat_200_total": 24}
    assert data["checks"] == {"zero_errors": True, "server_alive": True, "no_leaked_slots": True, "rss_flat": True}
    assert data["generated_tokens"] > 0 and data["latency_p50_s"] <= data["latency_p95_s"]
    assert data["ttft_p50_s"] is not None
    assert data["rss_growth_bytes"] == data["rss_last_bytes"] - data["rss_first_after_warmup_bytes"]
    assert data["rss_max_after_warmup_bytes"] >= data["rss_last_bytes"] > 10 * 2**20
    assert len(data["rss_samples"]) >= 2 and data["rss_samples"][-1]["done"] == 24


def test_soak_fails_on_rss_growth_beyond_the_bound(tiny_hf_and_gguf, tmp_path):
    """A bound no process can meet (RSS must shrink by 1 TiB) makes the run exit 1 and say why."""
    _, gguf = tiny_hf_and_gguf
    proc = subprocess.run([sys.executable, str(BENCH / "serve_soak.py"), "--quick", "--requests", "4", "--concurrency", "2",
                           "--model", str(gguf), "--rss-growth-mib", str(-2**20)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rss_flat: FAIL" in proc.stdout and "zero_errors: PASS" in proc.stdout


def test_helpers_percentile_plan_and_load():
    from serve_throughput import notice_prompts, percentile, plan, run_load

    assert percentile([], 50) is None and percentile([3.0], 95) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile(list(range(101)), 95) == 95
    assert plan([1, 4, 16], 0, ["direct", "http"]) == [
        ("direct", 1, 0, 2), ("direct", 4, 2, 4), ("direct", 16, 6, 16),
        ("http", 1, 22, 2), ("http", 4, 24, 4), ("http", 16, 28, 16)]
    assert plan([1, 4], 8, ["direct"]) == [("direct", 1, 0, 8), ("direct", 4, 8, 8)]
    p = notice_prompts(3)
    assert p == notice_prompts(3) and len({m[1]["content"] for m in p}) == 3 and p[0][0]["role"] == "system"
    # closed loop: never more than `concurrency` calls at once, every prompt answered in order
    import threading
    import time

    live, most, lock = [0], [0], threading.Lock()

    def call(x):
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        time.sleep(0.01)
        with lock:
            live[0] -= 1
        return {"x": x}

    results, wall = run_load(call, list(range(10)), 3)
    assert [r["x"] for r in results] == list(range(10)) and most[0] == 3 and wall > 0
    assert all(r["latency_s"] >= 0.01 for r in results)


def test_soak_rss_after_warmup():
    from serve_soak import rss_after_warmup

    samples = [(0.0, 0, 100), (0.5, 1, 150), (1.0, 3, 160), (1.5, 5, 190), (2.0, 6, 170)]
    assert rss_after_warmup(samples, 3) == (160, 170, 190)  # the first sample with 3 done, the last, the max since
    assert rss_after_warmup(samples, 9) == (170, 170, 170)  # warm-up never reached: only the last sample counts


def test_rate_sweep_arrivals_capacity_and_turned_away_requests(tiny_hf_and_gguf, tmp_path):
    """bench/serve_rate.py: seeded Poisson arrivals; a gentle rate is answered in full and counts
    as capacity; a burst far past 1 slot + 1 queued request gets 429s and ends the sweep."""
    import serve_rate

    times = serve_rate.arrivals(4.0, 400, seed=3)
    assert times[0] == 0 and times == sorted(times) and times == serve_rate.arrivals(4.0, 400, seed=3)
    assert 0.2 < times[-1] / 399 < 0.3  # mean gap ~ 1/rate
    _, gguf = tiny_hf_and_gguf
    out = tmp_path / "rate.json"
    proc = run_script("serve_rate.py", "--model", str(gguf), "--rates", "1,10000", "--requests", "6",
                      "--new-tokens", "8", "--slots", "1", "--queue", "1", "--slo", "60", "--out", str(out))
    data = json.loads(out.read_text())
    gentle, burst = data["rows"]
    assert gentle["answered"] == 6 and gentle["rejected"] == 0 and gentle["errors"] == []
    assert 0 < gentle["latency_p50_s"] <= gentle["latency_p95_s"] <= 60 and gentle["tpot_p50_s"] > 0
    assert gentle["tokens_per_s"] > 0 and gentle["answered_per_s"] > 0
    assert burst["rejected"] >= 1 and burst["answered"] + burst["rejected"] == 6 and burst["errors"] == []
    assert data["capacity"].startswith("capacity within p95 <= 60 s: 1 requests/s") and data["capacity"] in proc.stdout
    assert serve_rate.within(gentle, 60) and not serve_rate.within(burst, 60)
    assert gentle["arrival_rate"] > 0 and gentle["completion_rate"] >= 0.9 * gentle["arrival_rate"]
    # a short run that stayed within the latency bound while answers fell behind arrivals does not hold
    behind = dict(gentle, completion_rate=0.5 * gentle["arrival_rate"])
    assert not serve_rate.keeps_up(behind) and not serve_rate.within(behind, 60)
    assert serve_rate.spread_rate([0.0, 1.0, 2.0, 4.0]) == 0.75 and serve_rate.spread_rate([3.0]) is None


def test_greedy_sampler_measures_both_top_k_and_keeps_the_answers(tiny_hf_and_gguf, tmp_path):
    """bench/greedy_sampler.py on the tiny model: a row per round, concurrency and top_k, both
    ratios, and greedy answers that top_k 1 does not change when requests run one at a time."""
    _, gguf = tiny_hf_and_gguf
    out = tmp_path / "greedy.json"
    proc = run_script("greedy_sampler.py", "--model", str(gguf), "--concurrency", "2", "--single", "2",
                      "--rounds", "1", "--new-tokens", "8", "--top-p", "0.95", "--out", str(out))
    assert proc.stdout.startswith("CPU: ") and "top_k 1 / top_k 0 = " in proc.stdout
    data = json.loads(out.read_text())
    assert [(r["concurrency"], r["top_k"], r["requests"]) for r in data["rows"]] == [(1, 0, 2), (1, 1, 2), (2, 0, 4), (2, 1, 4)]
    assert all(r["tokens_per_s"] > 0 for r in data["rows"]) and data["ratio_c1"] > 0 and data["ratio_c2"] > 0
    assert data["answers"] == 6 and data["identical_answers"] >= 2 and data["top_p"] == 0.95


@pytest.mark.parametrize("script,args,message", [
    ("greedy_sampler.py", ["--rounds", "0"], "at least 1"),
    ("greedy_sampler.py", ["--top-p", "1.5"], "--top-p takes a number above 0"),
    ("serve_rate.py", ["--rates", "fast"], "--rates takes comma-separated numbers"),
    ("serve_rate.py", ["--slots", "0"], "--slots and --new-tokens take at least 1"),
])
def test_bench_scripts_refuse_bad_options_without_a_traceback(script, args, message):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
