"""What would a finished comparison recommend under other pricing assumptions, without rerunning it?

Reads `tunewise compare` report.json files and prices every local arm again from the queries per
hour it measured (its `pricing.queries_per_hour`, shared-prefix saving included), with the current
rule of `tunewise.costs.local_serving_price`: machines kept on all month at a utilisation, or billed
for the hours used. API arms keep their per-query price; one-off costs (training, labelled examples)
are spread over the report's months as before. Then it applies compare's decision rule
(`tunewise.compare.recommend`) to the re-priced arms and prints each arm and the pick, old and new.

    # the session-10 reference reports (HF fp32, one request at a time) under session 12's default:
    .venv/bin/python bench/reprice_report.py ref/format/report.json ref/knowledge/report.json \
        --json bench/reprice_reference.json
    # the demo at a million notices a month, billed by the hours used:
    .venv/bin/python bench/reprice_report.py tunewise-demo/format/report/report.json \
        --monthly-queries 1000000 --hourly

Nothing is measured here: it is arithmetic on measured figures, so it needs no quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


#: what a report.json must hold to be priced again
REPORT_KEYS = ("arms", "hardware", "recommendation", "currency", "monthly_queries", "quality_tolerance")


def reprice(report: dict, monthly_queries: int, utilisation: float, always_on: bool, min_machines: int) -> dict:
    """The report's arms priced again, and compare's recommendation on them."""
    from tunewise.compare.recommend import recommend
    from tunewise.costs import local_serving_price

    hw = report["hardware"]
    arms = []
    for a in report["arms"]:
        a = dict(a)
        pr = a.get("pricing") or {}
        one_off = (a.get("one_off") or {}).get("monthly") or 0.0  # spread over the report's months
        if a.get("status") == "ok" and pr.get("method") in ("throughput", "sequential"):
            lp = local_serving_price(hw["price_per_hour"], a.get("seconds_per_query") or 0.0,
                                     throughput_qph=pr.get("queries_per_hour"), concurrency=pr.get("concurrency"),
                                     utilisation=utilisation, always_on=always_on, min_machines=min_machines,
                                     monthly_queries=monthly_queries, currency=report["currency"])
            a.update(pricing=lp.as_dict(), cost_per_1k_queries=lp.cost_per_1k, monthly_running_cost=lp.running_monthly,
                     monthly_cost=lp.running_monthly + one_off)
        elif a.get("status") == "ok" and a.get("cost_per_1k_queries") is not None:
            running = a["cost_per_1k_queries"] * monthly_queries / 1000.0
            a.update(monthly_running_cost=running, monthly_cost=running + one_off)
        arms.append(a)
    rec = recommend(arms, report["quality_tolerance"], report["currency"],
                    min_quality=(report.get("config") or {}).get("min_quality"),
                    primary_metric=report.get("primary_metric", "quality"))
    rows = [{"name": a["name"], "kind": a["kind"], "quality": a.get("quality"),
             "queries_per_hour": (a.get("pricing") or {}).get("queries_per_hour"),
             "queries_per_machine_month": (a.get("pricing") or {}).get("queries_per_machine_month"),
             "machines": (a.get("pricing") or {}).get("machines"), "cost_per_1k_queries": a.get("cost_per_1k_queries"),
             "one_off": (a.get("one_off") or {}).get("total"), "monthly_cost": a.get("monthly_cost")}
            for a in arms if a.get("status") == "ok"]
    old = report["recommendation"]
    return {"report": report.get("name"), "created": report.get("created"), "currency": report["currency"],
            "hardware": {"name": hw.get("name"), "price_per_hour": hw["price_per_hour"], "always_on": always_on,
                         "utilisation": utilisation, "min_machines": min_machines},
            "monthly_queries": monthly_queries, "arms": rows,
            "before": {"arm": old.get("arm"), "decision": old.get("decision"),
                       "finetuning_verdict": old.get("finetuning_verdict")},
            "after": {"arm": rec["arm"], "decision": rec["decision"], "finetuning_verdict": rec["finetuning_verdict"],
                      "statements": rec["statements"]}}


def main(argv: list[str] | None = None) -> int:
    from tunewise.costs import DEFAULT_LOCAL_UTILISATION

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="report.json files written by `tunewise compare`")
    ap.add_argument("--monthly-queries", type=int, help="volume to price at (default: each report's own)")
    ap.add_argument("--utilisation", type=float, default=DEFAULT_LOCAL_UTILISATION,
                    help=f"share of the measured rate a deployment uses (default {DEFAULT_LOCAL_UTILISATION})")
    ap.add_argument("--hourly", action="store_true", help="bill the hours the load needs instead of whole machines")
    ap.add_argument("--min-machines", type=int, default=1, help="machines kept on whatever the volume (default 1)")
    ap.add_argument("--json", type=Path, help="write the re-priced figures here")
    args = ap.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        ap.error("--utilisation must be in (0, 1]")
    if args.min_machines < 1 or (args.monthly_queries is not None and args.monthly_queries < 0):
        ap.error("--min-machines must be at least 1 and --monthly-queries not negative")

    from tunewise.formatting import money
    from tunewise.paths import atomic_write_text

    results = []
    for path in args.reports:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            report, problem = None, str(e)
        else:
            if not isinstance(report, dict):
                problem = "not a JSON object"
            else:
                missing = [k for k in REPORT_KEYS if k not in report]
                problem = "missing " + ", ".join(missing) if missing else ""
        if problem:
            print(f"error: {path}: not a report.json written by `tunewise compare` ({problem})", file=sys.stderr)
            return 2
        q = args.monthly_queries if args.monthly_queries is not None else report["monthly_queries"]
        res = reprice(report, q, args.utilisation, not args.hourly, args.min_machines)
        res["path"] = str(path)
        results.append(res)
        cur = res["currency"]
        how = (f"machines kept on all month at {args.utilisation:.0%}" if not args.hourly
               else f"billed by the hours used at {args.utilisation:.0%}")
        print(f"{path}: {q:,} queries/month, {how}")
        print(f"  {'arm':<18}{'quality':>8}{'queries/h':>11}{'per box/month':>15}{'boxes':>6}{'per 1k':>10}"
              f"{'monthly':>11}")
        for r in res["arms"]:
            qph = "–" if r["queries_per_hour"] is None else f"{r['queries_per_hour']:,.0f}"
            cap = "–" if r["queries_per_machine_month"] is None else f"{r['queries_per_machine_month']:,.0f}"
            print(f"  {r['name']:<18}{r['quality']:>8.3f}{qph:>11}{cap:>15}{r['machines'] or '–':>6}"
                  f"{money(r['cost_per_1k_queries'], cur):>10}{money(r['monthly_cost'], cur):>11}")
        b, a = res["before"], res["after"]
        print(f"  pick: {b['arm']} ({b['decision']}) as written → {a['arm']} ({a['decision']}) re-priced; "
              f"fine-tuning verdict {b['finetuning_verdict']} → {a['finetuning_verdict']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
