"""The CLI: help with examples, one-line errors with non-zero exit, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tunewise.cli import app, main


def run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out + out.err


def _leaf_commands(group, prefix=()):
    import typer.main

    click_group = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, cmd in click_group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_command_has_help_with_example():
    leaves = list(_leaf_commands(app))
    assert {("models",), ("chat",), ("config", "validate")} <= {p for p, _ in leaves}
    for path, cmd in leaves:
        assert cmd.help and "Example:" in cmd.help and "tunewise" in cmd.help, f"{' '.join(path)} lacks an example"


def test_groups_have_examples_and_every_summary_is_one_line():
    """`tunewise --help` and each group's help show an example too; a command's summary (its first
    paragraph, what the group's list shows) is one sentence, not lines broken mid-sentence."""
    import typer.main

    root = typer.main.get_command(app)
    groups = [root] + [c for c in root.commands.values() if hasattr(c, "commands")]
    assert len(groups) >= 4  # tunewise, config, data, rag
    for g in groups:
        assert g.help and "Example:" in g.help and "tunewise" in g.help, f"{g.name} lacks an example"
    for path, cmd in _leaf_commands(app):
        first = cmd.help.strip().split("\n\n")[0]
        assert "\n" not in first, f"{' '.join(path)}: summary broken over lines: {first!r}"


def test_help_runs(capsys):
    code, out = run_cli(capsys, "--help")
    assert code == 0 and "chat" in out and "models" in out


def test_unknown_model_one_line_error(capsys):
    code, out = run_cli(capsys, "chat", "no-such-model", "--prompt", "hi")
    assert code == 1
    assert "error: unknown model 'no-such-model'" in out and "Traceback" not in out


def test_missing_file_error(capsys, tmp_path):
    code, out = run_cli(capsys, "chat", str(tmp_path / "missing.gguf"), "--prompt", "hi")
    assert code == 1 and "does not exist" in out and "Traceback" not in out


def test_config_validate(capsys, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("base_model: smollm2-135m\nlora_r: 8\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: -3\nlearning_rat: 0.1\nmethod: magic\n")
    code, out = run_cli(capsys, "config", "validate", str(good))
    assert code == 0 and "valid" in out and "warning" not in out
    there = tmp_path / "d.jsonl"
    there.write_text("{}\n")
    named = tmp_path / "named.yaml"
    named.write_text(f"datasets:\n  - path: {there}\n  - path: {tmp_path / 'gone.jsonl'}\n")
    code, out = run_cli(capsys, "config", "validate", str(named))
    flat = " ".join(out.split())
    assert code == 0 and "is valid" in flat  # the schema is fine; a missing file is a warning, not a failure
    assert f"datasets[1].path: {tmp_path / 'gone.jsonl'} does not exist" in flat and "datasets[0]" not in flat
    code, out = run_cli(capsys, "config", "validate", str(good), str(bad))
    assert code == 1
    for key in ("lora_r", "learning_rat", "learning_rate", "method"):
        assert key in out
    assert "3 problem(s)" in out and "Traceback" not in out
    code, out = run_cli(capsys, "config", "validate", str(good), "--set", "lora_r=0")
    assert code == 1 and "lora_r" in out


def test_models_lists_embedded(capsys):
    code, out = run_cli(capsys, "models")
    assert code == 0 and "smollm2-135m" in out
    code, out = run_cli(capsys, "models", "--clear", "nothing-here")
    assert code == 1 and "no cached model" in out


def test_chat_one_shot_on_tiny_model(capsys, tiny_model_dir):
    code, out = run_cli(capsys, "chat", str(tiny_model_dir), "--prompt", "Hello", "--max-new-tokens", "5")
    assert code == 0 and "tokens" in out


def test_chat_speculation_needs_a_known_mode(capsys, tiny_model_dir):
    code, out = run_cli(capsys, "chat", str(tiny_model_dir), "--prompt", "Hello", "--speculative", "eagle")
    assert code != 0 and "--speculative 'eagle' is not known" in out and "ngram" in out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "tunewise.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("tunewise ")


@pytest.mark.e2e
def test_chat_paris_cli(embedded_model):
    import os
    import shutil

    exe = shutil.which("tunewise") or os.path.join(os.path.dirname(sys.executable), "tunewise")
    out = subprocess.run(
        [exe, "chat", "smollm2-135m", "--prompt", "What is the capital of France?"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
