"""Every training config in examples/ is valid under the RunConfig schema and points at data that
exists (paths are relative to the repository root, where the examples are meant to be run from)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunewise.config import RunConfig, read_yaml, validate_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _train_configs() -> list[Path]:
    out = []
    for path in EXAMPLES:
        data = read_yaml(path)
        # Other kinds (and answer files such as advise-*.yaml, which have no run keys) belong to
        # other schemas and are tested with them.
        if data.get("kind") == "train" or ("kind" not in data and "datasets" in data):
            out.append(path)
    return out


def test_the_promised_examples_exist():
    names = {p.name for p in _train_configs()}
    for name in ("lora-smollm2.yaml", "qlora-smollm2.yaml", "lora-llama3.1-8b.yaml", "qlora-llama3.1-8b.yaml"):
        assert name in names


@pytest.mark.parametrize("path", _train_configs(), ids=lambda p: p.name)
def test_example_is_a_valid_run_config(path, monkeypatch):
    cfg, problems = validate_config(read_yaml(path), RunConfig)
    assert not problems, [str(p) for p in problems]
    assert cfg.datasets, "an example must name its data"
    monkeypatch.chdir(REPO)
    for spec in cfg.datasets + cfg.test_datasets:
        data = Path(spec.path)
        if "shared/data" in spec.path and not (REPO.parent / "shared" / "data").is_dir():
            pytest.skip("shared demo data not present")
        assert data.is_file(), f"{path.name}: {spec.path} does not exist relative to {REPO}"
    assert not Path(cfg.output_dir).is_absolute()
