"""Decode-speed parity: the decoding rate is measured per answer, and compare warns when two local
arms with a model of the same size decode at clearly different rates (their costs would mislead)."""

from __future__ import annotations

import pytest

from tunewise.compare.speed import DECODE_SPEED_MARGIN, decode_parity
from tunewise.generate import Generation, generate


def arm(name, rate, params=135_000_000, tokens_in=200, tokens_out=180, kind="prompt", status="ok"):
    return {"name": name, "kind": kind, "status": status, "model_params": params, "decode_tokens_per_s": rate,
            "mean_input_tokens": tokens_in, "mean_output_tokens": tokens_out}


def test_slower_finetuned_arm_of_the_same_size_is_flagged():
    # the AVX2 demo run: base ~8 tokens/s, merged fine-tuned ~4.4 tokens/s
    notes = decode_parity([arm("prompt", 8.0), arm("finetuned-lora", 4.4, tokens_in=152, kind="finetuned")])
    assert len(notes) == 1
    assert notes[0].startswith("'finetuned-lora' decoded at 4.4 tokens/s, 45% slower than 'prompt'")


def test_within_the_margin_is_quiet():
    fast = 10.0
    slow = fast * (1 - DECODE_SPEED_MARGIN) + 0.01
    assert decode_parity([arm("prompt", fast), arm("finetuned", slow, kind="finetuned")]) == []


@pytest.mark.parametrize("other", [
    arm("big", 4.0, params=1_700_000_000),           # another model size: expected to be slower
    arm("few_shot", 4.0, tokens_in=900),             # a much longer context: expected to be slower
    arm("api", 4.0, kind="api"),                     # not a local arm
    arm("skipped", 4.0, status="skipped"),
    arm("no-rate", None),
])
def test_only_comparable_local_arms_are_compared(other):
    assert decode_parity([arm("prompt", 8.0), other]) == []


def test_each_slow_arm_is_named_once():
    notes = decode_parity([arm("a", 10.0), arm("b", 10.0), arm("slow", 5.0)])
    assert len(notes) == 1 and notes[0].startswith("'slow'")


def test_generation_times_its_first_token(tiny_model_dir):
    from tunewise.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    streamed: list[str] = []
    for on_text in (None, streamed.append):
        g = generate(model, tok, [{"role": "user", "content": "hello"}], max_new_tokens=12, on_text=on_text)
        assert g.output_tokens >= 2  # a random tiny model rarely stops by itself
        assert 0 < g.ttft_s < g.seconds
        assert g.decode_tokens_per_s == pytest.approx((g.output_tokens - 1) / (g.seconds - g.ttft_s))
    assert "".join(streamed).strip() == g.text  # the timer passes the tokens on to the text stream


def test_decode_rate_needs_two_tokens_and_a_first_token_time():
    assert Generation("x", 5, 1, True, 1.0, 0.5).decode_tokens_per_s is None
    assert Generation("x", 5, 9, True, 1.0, None).decode_tokens_per_s is None
    assert Generation("x", 5, 9, False, 1.0, 0.2).decode_tokens_per_s == pytest.approx(10.0)


def test_other_load_sees_another_process_but_not_our_own_work():
    import subprocess
    import sys
    import time

    from tunewise.compare.speed import OtherLoad

    with OtherLoad() as ours:  # busy in this process: not "other" load
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            pass
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # past the interpreter's start-up
        with OtherLoad() as theirs:
            time.sleep(1.5)
    finally:
        busy.kill()
        busy.wait()
    assert theirs.cores > 0.6  # one core spinning in another process
    assert ours.cores < theirs.cores - 0.4


def test_load_warnings_name_the_contaminated_local_arms():
    from tunewise.compare.speed import load_warnings

    arms = [{**arm("prompt", 8.0), "other_cpu_load": 0.05},
            {**arm("finetuned", 4.0, kind="finetuned"), "other_cpu_load": 0.9},
            {**arm("api", None, kind="api"), "other_cpu_load": 1.5}]
    notes = load_warnings(arms)
    assert len(notes) == 1 and notes[0].startswith("while 'finetuned' answered, other processes kept 0.90 cores")
