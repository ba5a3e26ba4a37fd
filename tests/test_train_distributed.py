"""Data-parallel training: `tunewise train --num-processes 2` runs two CPU ranks (gloo) that train on
disjoint shards and end with identical weights; launcher checks; the shipped accelerate configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunewise.cli import main
from tunewise.train import distributed

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model_dir: Path, shared_data: Path, **extra) -> Path:
    rows = json.loads((shared_data / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:48]
    data = tmp_path / "alpaca48.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    cfg = {
        "base_model": str(model_dir),
        "datasets": [{"path": str(data), "format": "alpaca"}],
        "sequence_len": 256,
        "packing": False,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "save_steps": 1000,
        "logging_steps": 1,
        "output_dir": str(tmp_path / "run"),
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_two_cpu_processes_train_disjoint_shards_to_identical_weights(tmp_path, tiny_model_dir, shared_data, capfd):
    cfg = _config(tmp_path, tiny_model_dir, shared_data)
    main(["train", str(cfg), "--num-processes", "2"])
    run = tmp_path / "run"

    report = distributed.check_ranks(run)
    assert report.world_size == 2
    # 3 steps x 2 accumulated micro-batches x 2 examples, on each rank
    assert report.examples_per_rank == [12, 12]
    assert report.overlap == 0, "the two ranks trained on some of the same examples"
    assert report.weights_identical, "ranks ended with different trainable weights"
    assert report.steps == [3, 3]
    records = distributed.read_rank_records(run)
    assert all(ex.startswith("alpaca48.json:") for r in records for ex in r["examples"])  # file:line#tokens

    # rank 0 alone wrote the run's shared outputs: one metrics line per step, one adapter
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "loss.png").is_file() and (run / "summary.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3
    assert not list(run.glob(".tmp-*"))
    captured = capfd.readouterr()  # the ranks' output: one summary and one header, from rank 0
    assert captured.out.count("Training finished") == 1
    assert captured.err.count("tunewise train lora") == 1

    # the adapter learned something (LoRA B starts at zero)
    from safetensors.torch import load_file

    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_check_ranks_detects_overlap_and_different_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r, examples, digest in ((0, ["a:1#x", "a:2#y"], "d1"), (1, ["a:2#y", "a:3#z"], "d2")):
        monkeypatch.setenv("RANK", str(r))
        distributed.write_rank_record(tmp_path, examples=examples, micro_batches=1, steps=1,
                                      weights_sha256=digest)
    report = distributed.check_ranks(tmp_path)
    assert report.overlap == 1 and not report.weights_identical and not report.ok


def test_shard_recorder_keeps_only_consumed_micro_batches(tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rec = distributed.ShardRecorder(lambda items: len(items))
    ex = lambda i: SimpleNamespace(source=f"d.json:{i}", input_ids=[i, i + 1])  # noqa: E731
    assert rec([[ex(1)], [ex(2), ex(3)]]) == 2  # a packed micro-batch: rows of examples
    rec([[ex(4)]])  # built ahead by the dataloader, never trained on
    cb = distributed._record_callback()(rec, tmp_path)
    cb.on_step_end(None, SimpleNamespace(global_step=1), None)
    cb.on_train_end(None, SimpleNamespace(global_step=1), None, model=None)
    (record,) = distributed.read_rank_records(tmp_path)
    assert record["rank"] == 1 and [e.split("#")[0] for e in record["examples"]] == ["d.json:1", "d.json:2", "d.json:3"]


def test_launch_command_and_environment(monkeypatch):
    cmd = distributed.launch_command(["train", "c.yaml", "--set=lora_r=8"], 2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[-5:] == ["-m", "tunewise.cli", "train", "c.yaml", "--set=lora_r=8"]
    env = distributed.launch_env(2, base={})
    assert env["TUNEWISE_NUM_PROCESSES"] == "2" and int(env["OMP_NUM_THREADS"]) >= 1
    import torch

    if not torch.cuda.is_available():
        assert env["ACCELERATE_USE_CPU"] == "true"


def test_too_many_processes_is_one_line_error(tmp_path, tiny_model_dir, shared_data, capsys):
    import os

    cfg = _config(tmp_path, tiny_model_dir, shared_data)
    with pytest.raises(SystemExit) as e:
        main(["train", str(cfg), "--num-processes", str((os.cpu_count() or 1) + 64)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "--num-processes" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_config_fails_before_launching(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lora_rr: 8\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["train", str(cfg), "--num-processes", "2"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "lora_rr" in err and "Traceback" not in err and err.count("error:") == 1


def test_inside_a_distributed_run_num_processes_is_refused(monkeypatch):
    from tunewise.errors import TunewiseError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TunewiseError, match="already distributed"):
        distributed.check_num_processes(2)


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "fsdp", "multi_gpu"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "examples" / "accelerate" / f"{name}.yaml"))
    assert cfg.num_processes >= 2
    ds_file = (cfg.deepspeed_config or {}).get("deepspeed_config_file")
    if ds_file:
        ds = json.loads((REPO / ds_file).read_text(encoding="utf-8"))
        assert ds["zero_optimization"]["stage"] == int(name[-1])
        # batch sizes come from the tunewise config through the Trainer
        assert ds["train_micro_batch_size_per_gpu"] == "auto"
