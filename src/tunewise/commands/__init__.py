"""CLI verbs. Each module defines ``register(app: typer.Typer)``; `tunewise.cli` loads them all.

Keep imports of heavy libraries (torch, transformers) inside the command functions so that
`tunewise --help` stays fast.
"""
