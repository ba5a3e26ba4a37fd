"""Compare prompting, few-shot, RAG, fine-tuning and API models on the same eval set, price each
per 1,000 queries, and recommend one by a documented rule."""

from tunewise.compare.config import CompareConfig
from tunewise.compare.recommend import recommend
from tunewise.compare.runner import CompareResult, load_compare_config, run_compare

__all__ = ["CompareConfig", "CompareResult", "load_compare_config", "recommend", "run_compare"]
