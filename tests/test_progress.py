"""Progress in logs: with output captured (not a terminal), `eval`, `train`, `compare`, `demo` and
`rag index` print plain progress lines (done/total, rate, elapsed, ETA) and a final line; on a
terminal the same calls draw a Rich bar. The helper's cadence is checked with a fake clock."""

from __future__ import annotations

import io
import re
import time

import pytest
import yaml
from rich.console import Console

from test_eval import FakeOpenAI, run_cli, write_jsonl
from tunewise.errors import TunewiseError
from tunewise.progress import ProgressTask, fmt_duration, items_step
from train_helpers import small_data  # noqa: F401  (fixture)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def log_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=300), buf  # a StringIO is not a terminal


def lines(text: str, prefix: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith(prefix)]


@pytest.fixture
def every_item(monkeypatch):
    """The smallest cadence: a progress line for every item."""
    monkeypatch.setenv("TUNEWISE_PROGRESS_EVERY", "0")
    monkeypatch.delenv("TUNEWISE_PROGRESS", raising=False)
    monkeypatch.delenv("TUNEWISE_PROGRESS_ITEMS", raising=False)


# --- the helper ------------------------------------------------------------------------------


def test_plain_lines_give_done_total_rate_elapsed_and_eta(every_item):
    con, buf = log_console()
    clock = FakeClock()
    with ProgressTask("generating", 4, unit="example", console=con, clock=clock, heartbeat=False) as p:
        assert p.mode == "plain"
        for _ in range(4):
            clock.t += 2.0
            p.update(advance=1, tps="41 tok/s")
    assert buf.getvalue().splitlines() == [
        "generating: 1/4 examples (25%) · 0.50 examples/s · 41 tok/s · elapsed 2.0s · ETA 6.0s",
        "generating: 2/4 examples (50%) · 0.50 examples/s · 41 tok/s · elapsed 4.0s · ETA 4.0s",
        "generating: 3/4 examples (75%) · 0.50 examples/s · 41 tok/s · elapsed 6.0s · ETA 2.0s",
        "generating: done 4/4 examples in 8.0s · 0.50 examples/s · 41 tok/s",
    ]


def test_eta_counts_down_during_a_slow_item(every_item):
    con, _ = log_console()
    clock = FakeClock()
    p = ProgressTask("answering", 4, unit="question", console=con, clock=clock, heartbeat=False).start()
    for _ in range(2):
        clock.t += 10.0
        p.update(advance=1)
    assert p._line().endswith("10.0 s/question · elapsed 20s · ETA 20s")
    clock.t += 4.0  # 4 s into the third question
    assert p._line().endswith("elapsed 24s · ETA 16s")
    clock.t += 12.0  # running late: the fourth question's time and a tenth of the third
    assert p._line().endswith("elapsed 36s · ETA 11s")
    p.close()


def _drive(items: int, seconds_each: float) -> list[str]:
    """The lines a 100-step task prints when ``items`` steps of ``seconds_each`` (fake clock) are done."""
    con, buf = log_console()
    clock = FakeClock()
    with ProgressTask("t", 100, unit="step", console=con, clock=clock, heartbeat=False) as p:
        for _ in range(items):
            clock.t += seconds_each
            p.update(advance=1)
    return buf.getvalue().splitlines()


def test_cadence_is_every_n_items_or_every_t_seconds_whichever_first(monkeypatch):
    monkeypatch.delenv("TUNEWISE_PROGRESS", raising=False)
    # items only: 100 items at 1 s each, a line every 25 items, none from the clock
    monkeypatch.setenv("TUNEWISE_PROGRESS_EVERY", "100000")
    monkeypatch.setenv("TUNEWISE_PROGRESS_ITEMS", "25")
    got = _drive(items=100, seconds_each=1.0)
    assert [ln.split(" ·")[0] for ln in got] == ["t: 25/100 steps (25%)", "t: 50/100 steps (50%)",
                                                 "t: 75/100 steps (75%)", "t: done 100/100 steps in 1m40s"]
    assert got[0].endswith("elapsed 25s · ETA 1m15s")

    # time first: a line every 10 s (items every 4 s), the default 10% count (10 items) never reached first
    monkeypatch.setenv("TUNEWISE_PROGRESS_EVERY", "10")
    monkeypatch.delenv("TUNEWISE_PROGRESS_ITEMS")
    heads = [ln.split(" ·")[0] for ln in _drive(items=9, seconds_each=4.0)]
    assert heads == ["t: 3/100 steps (3%)", "t: 6/100 steps (6%)", "t: 9/100 steps (9%)", "t: stopped at 9/100 steps in 36s"]


def test_a_slow_item_still_gets_lines_at_the_cadence(monkeypatch):
    monkeypatch.delenv("TUNEWISE_PROGRESS", raising=False)
    monkeypatch.setenv("TUNEWISE_PROGRESS_EVERY", "0.1")
    con, buf = log_console()
    with ProgressTask("answering", 2, unit="question", console=con) as p:
        time.sleep(0.55)  # one question slower than the cadence: the heartbeat speaks meanwhile
        p.update(advance=1)
        p.update(advance=1)
    out = buf.getvalue().splitlines()
    waiting = [ln for ln in out if ln.startswith("answering: 0/2 questions (0%)")]
    assert len(waiting) >= 3 and all("ETA ?" in ln and "elapsed" in ln for ln in waiting)
    assert out[-1].startswith("answering: done 2/2 questions in ")


def test_failure_says_stopped_and_quiet_or_off_print_nothing(every_item, monkeypatch):
    con, buf = log_console()
    with pytest.raises(KeyError):
        with ProgressTask("training", 10, unit="step", console=con, heartbeat=False) as p:
            p.update(completed=3)
            raise KeyError("boom")
    assert buf.getvalue().splitlines()[-1].startswith("training: stopped at 3/10 steps in ")

    quiet = Console(file=io.StringIO(), quiet=True)
    with ProgressTask("x", 3, console=quiet) as p:
        p.update(advance=3)
    assert p.mode == "off"
    monkeypatch.setenv("TUNEWISE_PROGRESS", "off")
    con, buf = log_console()
    with ProgressTask("x", 3, console=con) as p:
        p.update(advance=3)
    assert buf.getvalue() == ""


def test_terminal_gets_the_bar_unless_plain_is_asked_for(every_item, monkeypatch):
    buf = io.StringIO()
    tty = Console(file=buf, force_terminal=True, width=120)
    with ProgressTask("training", 3, unit="step", console=tty) as p:
        assert p.mode == "bar"
        p.update(advance=3, loss="loss 1.2345")
    assert "3/3" in buf.getvalue() and "loss 1.2345" in buf.getvalue() and "ETA" in buf.getvalue()
    assert "steps (" not in buf.getvalue()  # no plain lines on a terminal

    monkeypatch.setenv("TUNEWISE_PROGRESS", "plain")
    buf = io.StringIO()
    with ProgressTask("training", 3, unit="step", console=Console(file=buf, force_terminal=True)) as p:
        assert p.mode == "plain"


def test_settings_are_checked(monkeypatch):
    assert items_step(8, "10%") == 1 and items_step(1000, "10%") == 100 and items_step(1000, "0") == 0
    assert items_step(1000, "7") == 7 and items_step(None, "10%") == 0
    assert [fmt_duration(s) for s in (4.24, 17, 185, 3725, None)] == ["4.2s", "17s", "3m05s", "1h02m", "?"]
    for var, value in (("TUNEWISE_PROGRESS_EVERY", "soon"), ("TUNEWISE_PROGRESS_EVERY", "-1"),
                       ("TUNEWISE_PROGRESS_ITEMS", "-3"), ("TUNEWISE_PROGRESS_ITEMS", "many"), ("TUNEWISE_PROGRESS", "loud")):
        monkeypatch.setenv(var, value)
        with pytest.raises(TunewiseError, match=var):
            ProgressTask("x", 3, console=log_console()[0])
        monkeypatch.delenv(var)


# --- the real commands, output captured ------------------------------------------------------

DONE = r"done (\d+)/(\d+)"


def test_cli_eval_prints_progress_lines(tiny_model_dir, tmp_path, capsys, monkeypatch, every_item):
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "eval.jsonl", [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(3)])
    code, out, err = run_cli(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "3",
                              "--metrics", "rouge_l"], capsys)
    assert code in (0, None), err
    # the label names the engine: "generating (llama.cpp f16): …" (or "(hf fp32)" without llama.cpp)
    got = [re.sub(r"^generating \([^)]+\):", "generating:", ln) for ln in lines(err, "generating (")]
    assert got, err
    assert [ln.split(" ·")[0] for ln in got] == ["generating: 1/3 examples (33%)", "generating: 2/3 examples (67%)",
                                                 "generating: done 3/3 examples in " + got[-1].split(" in ")[1].split(" ·")[0]]
    for ln in got[:2]:
        assert re.search(r"examples/s|s/example", ln) and "tok/s" in ln and re.search(r"ETA \d", ln)


def test_cli_train_prints_steps_loss_tokens_per_second_and_eta(tiny_model_dir, small_data, tmp_path, every_item):  # noqa: F811
    from train_helpers import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"base_model: {tiny_model_dir}\ndatasets:\n  - path: {small_data}\nsequence_len: 128\n"
                   f"output_dir: {tmp_path}/run\nmax_steps: 3\nmicro_batch_size: 2\nlogging_steps: 1\n"
                   f"learning_rate: 0.01\nsave_steps: 100\nprecision: fp32\n")
    code, text = cli(["train", str(cfg)])
    assert code == 0, text
    got = lines(text, "training:")
    assert [ln.split(" ·")[0] for ln in got[:-1]] == ["training: 1/3 steps (33%)", "training: 2/3 steps (67%)"]
    for ln in got[1:-1]:  # from step 2 on, the loss logged at the step before
        assert re.search(r"loss \d+\.\d{4}", ln) and re.search(r"[\d,]+ tok/s", ln) and re.search(r"ETA \d", ln)
        assert re.search(r"lr \d\.\de[+-]\d\d", ln)
    assert re.match(r"training: done 3/3 steps in [\d.]+s · .* · loss \d+\.\d{4} · lr .* · [\d,]+ tok/s$", got[-1])


def test_cli_compare_prints_each_arm_and_its_progress(tiny_model_dir, tmp_path, capsys, monkeypatch, every_item):
    monkeypatch.setenv("TW_TEST_API_KEY", "sk-abc")
    qa = [(f"Question {i}?", f"Answer {i}.") for i in range(3)]
    write_jsonl(tmp_path / "eval.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in qa])
    with FakeOpenAI("Answer 1.") as fake:
        cfg = {"kind": "compare", "name": "t", "base_model": str(tiny_model_dir), "eval_file": str(tmp_path / "eval.jsonl"),
               "max_new_tokens": 3, "output_dir": str(tmp_path / "report"),
               "arms": [{"type": "prompt"},
                        {"type": "api", "model": "fake-model", "base_url": fake.base_url, "api_key_env": "TW_TEST_API_KEY",
                         "price_input_per_mtok_usd": 1.0, "price_output_per_mtok_usd": 2.0}]}
        (tmp_path / "compare.yaml").write_text(yaml.safe_dump(cfg))
        code, out, err = run_cli(["compare", str(tmp_path / "compare.yaml")], capsys)
    assert code in (0, None), err
    assert "prompt (prompt, arm 1/2): answering 3 questions" in err and "api (api, arm 2/2): answering 3 questions" in err
    for arm in ("prompt", "api"):
        got = lines(err, f"{arm}:")
        assert [ln.split(" ·")[0] for ln in got[:-1]] == [f"{arm}: 1/3 questions (33%)", f"{arm}: 2/3 questions (67%)"]
        assert all(re.search(r"ETA \d", ln) and "tok/s" in ln for ln in got[:-1])
        assert re.match(rf"{arm}: done 3/3 questions in ", got[-1])


def test_cli_rag_index_prints_embedding_progress(tmp_path, capsys, every_item):
    from test_rag_cli import run

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        sections = "\n\n".join(f"## Rule {i}.{j}\n\nPolicy {i}.{j}: claims of type {j} need form {i * 10 + j}."
                               for j in range(6))
        (docs / f"policy-{i}.md").write_text(f"# Policy {i}\n\n{sections}\n")
    code, out, err = run(["rag", "index", str(docs), "--index", str(tmp_path / "index")], capsys)
    assert code == 0, err
    got = lines(err, "embedding chunks:")
    m = re.search(DONE, got[-1])
    assert m and m.group(1) == m.group(2)
    total = int(m.group(2))
    assert total > 64  # three batches of 32 at least
    assert [ln.split(" ·")[0] for ln in got[:-1]] == [
        f"embedding chunks: {n}/{total} chunks ({100 * n / total:.0f}%)" for n in range(32, total, 32)]
    assert all(re.search(r"chunks/s|s/chunk", ln) and re.search(r"ETA \d", ln) for ln in got[:-1])
