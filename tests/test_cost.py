"""`tunewise cost`: live API prices (offline), GPU table, break-evens, rules of thumb, chart, CLI."""

from __future__ import annotations

import json
import socket

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli import app, main
from tunewise.costs import (
    CostAssumptions,
    api_price,
    check_rules_of_thumb,
    compare_costs,
    cost_options,
    find_gpu,
    load_gpus,
    plot_costs,
)
from tunewise.errors import TunewiseError
from tunewise.tables import load_table

runner = CliRunner()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test: prices must come from the bundled snapshot."""

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_api_prices_come_from_genai_prices_offline(no_network):
    from decimal import Decimal

    from genai_prices import Usage, calc_price

    p = api_price("gpt-4o-mini", 1000, 500)
    ref = calc_price(Usage(input_tokens=1000, output_tokens=500), "gpt-4o-mini")
    assert p.usd_per_query == pytest.approx(float(ref.total_price))
    assert ref.total_price > Decimal(0)
    # The comparison as a whole runs without the network too.
    compare_costs(CostAssumptions(queries_per_month=50_000))


def test_unknown_api_model_is_a_clear_error():
    with pytest.raises(TunewiseError) as e:
        api_price("no-such-model-xyz", 10, 10)
    assert "no price for model" in e.value.message


def test_gpu_table_states_date_and_source_and_has_the_gpus():
    t = load_table("gpus.yaml")
    assert t["date"] and t["source"]
    for key in ("rtx-3090", "rtx-4090", "l4", "a10", "a100-40gb", "a100-80gb", "h100", "cpu-16"):
        assert key in t["gpus"]
    assert load_table("fx.yaml")["date"]


def test_gpu_override_yaml_merges(tmp_path):
    f = tmp_path / "gpus.yaml"
    f.write_text(yaml.safe_dump({"gpus": {"l4": {"usd_per_hour": 0.1},
                                          "my-gpu": {"name": "Mine", "kind": "consumer", "vram_gb": 16,
                                                     "bf16_tflops": 50, "usd_per_hour": 0.2,
                                                     "decode_tokens_per_s_8b": 300}}}))
    g = load_gpus(f)
    assert g["l4"]["usd_per_hour"] == 0.1 and g["l4"]["vram_gb"] == 24
    assert g["my-gpu"]["name"] == "Mine"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"gpus": {"x": {"name": "X"}}}))
    with pytest.raises(TunewiseError) as e:
        load_gpus(bad)
    assert "gpus.x lacks" in e.value.message


def test_find_gpu_aliases_and_errors():
    g = load_gpus()
    assert find_gpu("RTX 4090", g) == "rtx-4090"
    assert find_gpu("4090", g) == "rtx-4090"
    with pytest.raises(TunewiseError) as e:
        find_gpu("rtx-4080", g)
    assert "unknown GPU" in e.value.message


def test_options_columns_and_scaling():
    a = CostAssumptions(queries_per_month=100_000)
    opts = {o.key: o for o in cost_options(a)}
    rag = opts["rag_cheap_api"]
    # API options scale linearly; local serving is a step function of GPUs.
    assert rag.running_monthly_usd(200_000) == pytest.approx(2 * rag.running_monthly_usd(100_000))
    local = opts["finetune_local"]
    assert local.running_monthly_usd(10) == local.running_monthly_usd(1000)  # one GPU kept on
    assert local.gpus_at(local.capacity_queries_per_gpu_month * 3.5) == 4
    # OpenAI fine-tuning setup includes training tokens x the shipped training price.
    ft = load_table("openai_finetuning.yaml")["training_usd_per_mtok"]["gpt-4o-mini-2024-07-18"]
    train = a.train_examples * a.tokens_per_example * a.epochs / 1e6 * ft
    assert opts["openai_finetune"].setup_usd == pytest.approx(a.finetune_setup_hours * 0.5 * 50 + train)
    # The frontier model costs more per query than the cheap one.
    assert opts["rag_frontier_api"].per_query_usd > rag.per_query_usd


def test_break_evens_are_real_crossings():
    comp = compare_costs(CostAssumptions(queries_per_month=1_000_000))
    by = {o.key: o for o in comp.options}
    am = comp.assumptions.amortise_months
    assert comp.break_evens
    for b in comp.break_evens:
        q = b.queries_per_month
        below = by[b.a].total_monthly_usd(q * 0.9, am) - by[b.b].total_monthly_usd(q * 0.9, am)
        above = by[b.a].total_monthly_usd(q * 1.1, am) - by[b.b].total_monthly_usd(q * 1.1, am)
        assert below * above < 0


def test_rules_of_thumb_reproduced_with_default_numbers():
    comp = compare_costs(CostAssumptions())
    verdicts = {r.rule.split(",")[0]: r.verdict for r in comp.rules}
    assert verdicts["Under 100K queries/month"] == "reproduced"
    assert verdicts["Over 1M queries/month"] == "reproduced"


def test_rules_of_thumb_can_be_refuted():
    # Expensive local GPUs and a nearly free API model: fine-tune + local is not competitive at 1M.
    gpus = load_gpus()
    gpus["l4"] = {**gpus["l4"], "usd_per_hour": 20.0}
    a = CostAssumptions(cheap_model="gpt-5-nano", retrieved_context_tokens=200)
    rules = check_rules_of_thumb(cost_options(a, gpus), a.amortise_months)
    assert rules[1].verdict == "refuted"


def test_inr_uses_the_rate():
    usd = compare_costs(CostAssumptions(queries_per_month=10_000)).as_dict()
    inr = compare_costs(CostAssumptions(queries_per_month=10_000, currency="INR", inr_per_usd=80)).as_dict()
    assert inr["options"][1]["monthly_running"] == pytest.approx(80 * usd["options"][1]["monthly_running"])


def test_inr_report_writes_every_amount_in_rupees(tmp_path):
    """Notes, rule checks and assumptions of an INR report are in ₹ too, converted at its rate."""
    r = runner.invoke(app, ["cost", "--queries", "1000000", "--currency", "INR", "--inr-rate", "80", "--no-chart"])
    assert r.exit_code == 0, r.output
    assert "$" not in r.output and "₹" in r.output
    comp = compare_costs(CostAssumptions(queries_per_month=1_000_000, currency="INR", inr_per_usd=80))
    local = next(o for o in comp.options if o.key == "finetune_local")
    assert f"at ₹{local.gpu_usd_per_month * 80:,.0f}/month" in " ".join(local.notes)
    assert all("$" not in r.evidence and "₹" in r.evidence for r in comp.rules)
    usd = compare_costs(CostAssumptions(queries_per_month=1_000_000))
    assert all("$" in r.evidence for r in usd.rules)


def test_chart_is_a_png(tmp_path):
    comp = compare_costs(CostAssumptions(queries_per_month=300_000))
    p = plot_costs(comp, tmp_path / "c.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_cost_table_chart_and_rules(tmp_path):
    chart = tmp_path / "cost.png"
    r = runner.invoke(app, ["cost", "--queries", "1000000", "--chart", str(chart)])
    assert r.exit_code == 0, r.output
    for needle in ("RAG + cheap API model", "OpenAI fine-tuning", "Fine-tune + run locally", "Break-even",
                   "reproduced", "genai-prices"):
        assert needle in r.output
    assert chart.is_file()


def test_cli_cost_json_inr_and_set(tmp_path):
    r = runner.invoke(app, ["cost", "--queries", "2e5", "--currency", "inr", "--inr-rate", "90",
                            "--set", "output_tokens=500", "--no-chart", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["currency"] == "INR" and d["rate_per_usd"] == 90
    assert d["assumptions"]["output_tokens"] == 500
    assert {o["key"] for o in d["options"]} >= {"rag_cheap_api", "rag_frontier_api", "finetune_local",
                                                "finetune_hosted", "openai_finetune"}


def test_cli_cost_assumptions_file(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(yaml.safe_dump({"queries_per_month": 5000, "local_gpu": "rtx-4090"}))
    r = runner.invoke(app, ["cost", "--assumptions", str(f), "--no-chart", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["assumptions"]["local_gpu"] == "rtx-4090"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["cost", "--queries", "-5", "--no-chart"], "queries_per_month"),
        (["cost", "--currency", "EUR", "--no-chart"], "currency"),
        (["cost", "--set", "local_gpu=tpu-v9", "--no-chart"], "unknown GPU"),
        (["cost", "--set", "cheap_model=nonexistent-model", "--no-chart"], "no price for model"),
        (["cost", "--set", "tokens_per_query=5", "--no-chart"], "unknown key"),
    ],
)
def test_cli_cost_bad_input(args, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_one_currency_rate_and_no_silent_fallback():
    from tunewise.tables import load_fx, usd_rate

    assert usd_rate("USD") == 1.0 and usd_rate("usd", 90.0) == 90.0  # an override always wins
    assert usd_rate("INR") == float(load_fx()["usd_to"]["INR"])
    with pytest.raises(TunewiseError) as e:
        usd_rate("INR", fx={"usd_to": {"USD": 1.0}})  # a table without the rate: an error, not a guess
    assert "no USD rate for INR" in e.value.message and "--inr-rate" in e.value.hint
    with pytest.raises(TunewiseError):
        usd_rate("EUR")
    with pytest.raises(TunewiseError):
        usd_rate("INR", -3.0)


def test_one_money_format():
    from tunewise.formatting import money, short

    assert [money(x, "INR") for x in (0, 0.01284, 9.671, 1051.08, 352027.4)] == [
        "₹0", "₹0.0128", "₹9.67", "₹1,051", "₹352,027"]
    assert money(None, "USD") == "unknown" and money(2.5, "USD") == "$2.50"
    assert (short(1_500_000), short(30_000), short(700)) == ("1.5M", "30K", "700")
