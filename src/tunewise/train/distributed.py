"""Data-parallel training: launching several processes, and what each rank records.

``tunewise train CONFIG --num-processes N`` re-runs the same command under PyTorch's elastic
launcher (the code behind ``torchrun``), one process per rank. The transformers ``Trainer`` then does
the data parallelism itself (DDP through accelerate): each rank reads a different shard of every
batch, gradients are averaged across ranks before each optimizer step, and all ranks end with the
same weights. On a machine without CUDA the ranks talk over ``gloo`` on CPU.

The same command also works when the user starts the processes (``torchrun --nproc_per_node 2 -m
tunewise.cli train CONFIG`` or ``accelerate launch -m tunewise.cli train CONFIG``, e.g. with a
DeepSpeed or FSDP config): :func:`is_launched` tells the trainer it is one rank of several.

So that a run can show it really was data-parallel, :func:`attach` makes every rank write
``<run>/distributed/rank-<r>.json``: which examples it trained on (their ``file:line`` sources, or a
hash of their tokens) and a SHA-256 of its trainable weights at the end. :func:`check_ranks` reads
them back (disjoint shards, identical weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tunewise.errors import TunewiseError

RANKS_DIR = "distributed"
LAUNCHED_ENV = "TUNEWISE_NUM_PROCESSES"


# ---------------------------------------------------------------------------------------------
# Where am I?
# ---------------------------------------------------------------------------------------------


def world_size() -> int:
    """Number of data-parallel processes (1 when not launched by torchrun/accelerate)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_launched() -> bool:
    """True inside a multi-process launch (torchrun, accelerate launch, or ``--num-processes``)."""
    return world_size() > 1


def is_main_process() -> bool:
    """Only rank 0 writes the run directory's shared outputs, prints progress and draws plots."""
    return rank() == 0


def training_args_overrides() -> dict[str, Any]:
    """Extra ``TrainingArguments`` for a multi-process run (empty for a single process).

    Every trainable parameter (LoRA or full) is used in each forward pass, so DDP need not walk
    the graph looking for unused ones (its default when gradient checkpointing is off).
    CPU runs also need ``use_cpu=True`` for accelerate to set up gloo; the trainer passes that
    whenever there is no CUDA.
    """
    if not is_launched():
        return {}
    return {"ddp_find_unused_parameters": False}


def barrier() -> None:
    """Wait for every rank (no-op outside a distributed run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Launching
# ---------------------------------------------------------------------------------------------


def launch_command(cli_args: Sequence[str], num_processes: int) -> list[str]:
    """The launcher command line: ``python -m torch.distributed.run ... -m tunewise.cli ARGS``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
        "-m",
        "tunewise.cli",
        *cli_args,
    ]


def launch_env(num_processes: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the ranks: CPU/gloo when there is no CUDA; CPU threads split between ranks."""
    import torch

    env = dict(os.environ if base is None else base)
    env[LAUNCHED_ENV] = str(num_processes)
    if not torch.cuda.is_available():
        env.setdefault("ACCELERATE_USE_CPU", "true")
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    return env


def check_num_processes(num_processes: int) -> None:
    """Refuse process counts the machine cannot run (one process per GPU, or per CPU core)."""
    import torch

    if num_processes < 1:
        raise TunewiseError(f"--num-processes {num_processes} must be at least 1", "use 1 or more")
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if num_processes > gpus:
            raise TunewiseError(
                f"--num-processes {num_processes} is more than the {gpus} visible GPU(s)",
                f"use --num-processes {gpus} (one process per GPU)",
            )
    else:
        cores = os.cpu_count() or 1
        if num_processes > cores:
            raise TunewiseError(
                f"--num-processes {num_processes} is more than the {cores} CPU cores of this machine",
                f"use --num-processes {cores} or fewer",
            )
    if is_launched():
        raise TunewiseError(
            "--num-processes was given inside a run that is already distributed "
            f"(WORLD_SIZE={world_size()})",
            "drop --num-processes when starting tunewise with torchrun or accelerate launch",
        )


def launch(cli_args: Sequence[str], num_processes: int) -> None:
    """Run ``tunewise <cli_args>`` as ``num_processes`` data-parallel ranks and wait for them.

    The launcher is PyTorch's elastic agent (what ``torchrun --standalone`` runs), called in this
    process so a failing rank becomes one :class:`TunewiseError` instead of the agent's traceback.
    The ranks print their own errors; rank 0 shows the progress bar.
    """
    check_num_processes(num_processes)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    env = launch_env(num_processes)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    # The agent logs each failed rank with a timestamped line; the error below says it once.
    agent_loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                     if name.startswith("torch.distributed.elastic")]
    levels = [lg.level for lg in agent_loggers]
    for lg in agent_loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        run(parse_args(launch_command(cli_args, num_processes)[3:]))
    except ChildFailedError as e:
        failures = sorted(e.failures.items())
        codes = ", ".join(f"rank {r} exited with {f.exitcode}" for r, f in failures)
        raise TunewiseError(
            f"data-parallel training failed: {codes}",
            "read the rank's error above; run with --num-processes 1 to reproduce it in one process",
        ) from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for lg, level in zip(agent_loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Per-rank records: which shard each rank trained on, and the weights it ended with
# ---------------------------------------------------------------------------------------------


def _example_id(example: Any) -> str:
    """A stable id for one training example: its ``source`` (``file:line``) or a token hash."""
    source = getattr(example, "source", None)
    ids = getattr(example, "input_ids", None)
    if isinstance(example, dict):
        source = example.get("source")
        ids = example.get("input_ids")
    if ids is not None and hasattr(ids, "tolist"):
        ids = ids.tolist()
    digest = hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:12] if ids is not None else "?"
    return f"{source}#{digest}" if source else digest


def _flatten(item: Any) -> list:
    """A dataset item is an example, or a packed row (a list of examples)."""
    if isinstance(item, (list, tuple)):
        return [x for sub in item for x in _flatten(sub)]
    return [item]


class ShardRecorder:
    """Wraps the data collator and remembers the ids of the examples in each micro-batch it builds.

    The dataloader may build a batch ahead of the one being trained on, so :class:`RankRecordCallback`
    keeps only the micro-batches the optimizer actually consumed.
    """

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[list[str]] = []

    def __call__(self, items):
        self.batches.append([_example_id(x) for item in items for x in _flatten(item)])
        return self.collator(items)


def trainable_digest(model) -> str:
    """SHA-256 over the trainable parameters (name and fp32 bytes), the same on every rank iff the
    ranks ended with the same weights."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not p.requires_grad:
            continue
        name = name.removeprefix("module.")
        h.update(name.encode())
        h.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _record_callback():
    from transformers import TrainerCallback

    class RankRecordCallback(TrainerCallback):
        """Counts consumed micro-batches; at the end writes this rank's record."""

        def __init__(self, recorder: ShardRecorder, out_dir: Path):
            self.recorder = recorder
            self.out_dir = out_dir
            self.micro_batches = 0

        def on_substep_end(self, args, state, control, **kw):
            self.micro_batches += 1

        def on_step_end(self, args, state, control, **kw):
            self.micro_batches += 1

        def on_train_end(self, args, state, control, model=None, **kw):
            write_rank_record(
                self.out_dir,
                examples=[x for b in self.recorder.batches[: self.micro_batches] for x in b],
                micro_batches=self.micro_batches,
                steps=state.global_step,
                weights_sha256=trainable_digest(model) if model is not None else None,
            )

    return RankRecordCallback


def write_rank_record(out_dir: Path, **fields) -> Path:
    """Write ``<out_dir>/distributed/rank-<r>.json`` for this process."""
    from tunewise.paths import atomic_write_text

    record = {"rank": rank(), "world_size": world_size(), **fields}
    path = Path(out_dir) / RANKS_DIR / f"rank-{rank()}.json"
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def attach(trainer, out_dir: str | Path) -> None:
    """Record this rank's shard and final weights under ``out_dir`` (only in a multi-process run).

    Call once after building the ``Trainer`` and before ``trainer.train()``.
    """
    if not is_launched():
        return
    recorder = ShardRecorder(trainer.data_collator)
    build_loader = trainer.get_train_dataloader

    def train_dataloader_with_recorder():
        # Only the training dataloader records (evaluation batches use the plain collator).
        plain = trainer.data_collator
        trainer.data_collator = recorder
        try:
            return build_loader()
        finally:
            trainer.data_collator = plain

    trainer.get_train_dataloader = train_dataloader_with_recorder
    trainer.add_callback(_record_callback()(recorder, Path(out_dir)))


@dataclass
class RankReport:
    """What the rank records of one run say."""

    world_size: int
    examples_per_rank: list[int]
    overlap: int
    weights_identical: bool
    steps: list[int]

    @property
    def ok(self) -> bool:
        return self.overlap == 0 and self.weights_identical and all(n > 0 for n in self.examples_per_rank)


def read_rank_records(run_dir: str | Path) -> list[dict]:
    """The rank records of a run, ordered by rank."""
    folder = Path(run_dir) / RANKS_DIR
    files = sorted(folder.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def check_ranks(run_dir: str | Path) -> RankReport:
    """Did the ranks train on disjoint shards and end with identical weights?"""
    records = read_rank_records(run_dir)
    if not records:
        raise TunewiseError(f"{run_dir} has no {RANKS_DIR}/rank-*.json records",
                            "it was not trained with more than one process")
    seen: dict[str, int] = {}
    overlap = 0
    for rec in records:
        for ex in set(rec["examples"]):
            if ex in seen and seen[ex] != rec["rank"]:
                overlap += 1
            seen.setdefault(ex, rec["rank"])
    digests = {rec["weights_sha256"] for rec in records}
    return RankReport(
        world_size=records[0]["world_size"],
        examples_per_rank=[len(rec["examples"]) for rec in records],
        overlap=overlap,
        weights_identical=len(digests) == 1 and None not in digests,
        steps=[rec["steps"] for rec in records],
    )
