"""The main job, `tunewise demo`: two scenarios whose data tunewise writes itself — legal notices
(format and voice; fine-tuning should shine) and an invented company's policies (knowledge;
retrieval should shine) — each trained, compared and reported."""

from tunewise.demo.pipeline import SCENARIOS, DemoResult, run_demo, summary_markdown, write_scenario

__all__ = ["SCENARIOS", "DemoResult", "run_demo", "summary_markdown", "write_scenario"]
