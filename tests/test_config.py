"""Config schema: YAML + --set overrides, every problem reported at once with key and fix."""

from __future__ import annotations

import pytest

from tunewise.config import (
    RunConfig,
    apply_overrides,
    dump_config,
    load_config,
    parse_overrides,
    read_yaml,
    validate_config,
)
from tunewise.errors import TunewiseError


def test_defaults_are_valid():
    cfg = RunConfig()
    assert cfg.base_model == "smollm2-135m" and cfg.method == "lora" and cfg.train_on == "assistant"


def test_every_problem_reported_at_once():
    data = {
        "lora_rank": 8,  # typo for lora_r
        "learning_rate": -1,
        "method": "prefix",
        "micro_batch_size": "two",
        "datasets": [{"path": "a.json", "fromat": "alpaca"}],
    }
    cfg, problems = validate_config(data)
    assert cfg is None
    by_key = {p.key: p for p in problems}
    assert set(by_key) == {"lora_rank", "learning_rate", "method", "micro_batch_size", "datasets.0.fromat"}
    assert "lora_r" in by_key["lora_rank"].fix
    assert "format" in by_key["datasets.0.fromat"].fix
    assert "'lora'" in by_key["method"].fix
    assert "greater than 0" in by_key["learning_rate"].message


def test_cross_field_check_names_keys():
    _, problems = validate_config({"method": "full", "use_dora": True})
    assert problems and "use_dora" in problems[0].message and "method" in problems[0].message


def test_train_on_inputs_alias():
    assert RunConfig(train_on_inputs=True).train_on == "all"


def test_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lora_r: 16\ndatasets:\n  - path: a.json\n")
    cfg = load_config(f, ["lora_r=8", "datasets.0.format=alpaca", "learning_rate=1e-4", "packing=false"])
    assert cfg.lora_r == 8 and cfg.datasets[0].format == "alpaca"
    assert cfg.learning_rate == 1e-4 and cfg.packing is False
    with pytest.raises(TunewiseError, match="key=value"):
        parse_overrides(["lora_r"])
    with pytest.raises(TunewiseError, match="not an index"):
        apply_overrides({"datasets": []}, {"datasets.3.path": "x"})


def test_load_config_error_lists_all(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lora_r: 0\nnum_epoch: 3\n")
    with pytest.raises(TunewiseError) as e:
        load_config(f)
    assert "2 problem(s)" in e.value.message and "lora_r" in e.value.message and "num_epochs" in e.value.message


def test_yaml_syntax_error_names_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("lora_r: 8\ndatasets:\n  - path: a.json\n   format: [alpaca\n")
    with pytest.raises(TunewiseError, match=r"broken.yaml:\d+"):
        read_yaml(f)
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(TunewiseError, match="mapping"):
        read_yaml(g)
    with pytest.raises(TunewiseError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")


def test_dump_roundtrip(tmp_path):
    cfg = RunConfig(lora_r=4, datasets=[{"path": "x.jsonl", "format": "openai"}])
    f = tmp_path / "resolved.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(f) == cfg


def test_every_shipped_example_validates_under_its_kind():
    from pathlib import Path

    from tunewise.config import schema_for

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        data = read_yaml(path)
        _, problems = validate_config(data, schema_for(data))
        assert not problems, f"{path.name}: {[str(p) for p in problems]}"


def test_unknown_kind_is_clear():
    from tunewise.config import schema_for

    with pytest.raises(TunewiseError, match="unknown config kind"):
        schema_for({"kind": "deploy"})
