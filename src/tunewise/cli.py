"""The `tunewise` command line. Each verb lives in ``tunewise/commands/<area>.py`` as a thin
wrapper over a library function; every module there exposes ``register(app)`` and is picked up
automatically.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer
from rich.console import Console

from tunewise import __version__
from tunewise.errors import TunewiseError

app = typer.Typer(
    name="tunewise",
    help="Should you fine-tune an LLM for this? Measure prompting, RAG and fine-tuning on your data.\n\n"
         "Example: [bold]tunewise demo[/] (the main job, offline, on the embedded model), then "
         "[bold]tunewise advise[/] and [bold]tunewise compare compare.yaml[/] on your own data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"tunewise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        os.environ["TUNEWISE_DEBUG"] = "1"


def _register_commands() -> None:
    import tunewise.commands as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"tunewise.commands.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one red line and exit status 1, never a traceback."""
    debug = "--debug" in (argv if argv is not None else sys.argv) or os.environ.get("TUNEWISE_DEBUG") == "1"
    try:
        # With standalone_mode=False click returns the exit code of typer.Exit instead of raising.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except TunewiseError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {e.message}", highlight=False, soft_wrap=True)
        if e.hint:
            err_console.print(f"[yellow]hint:[/] {e.hint}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("[red]aborted[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and anything unexpected
        # Usage errors (typer ships its own copy of click, so match by behaviour, not by class).
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        err_console.print(f"[bold red]error:[/] {type(e).__name__}: {msg}", highlight=False, soft_wrap=True)
        err_console.print("[yellow]hint:[/] run again with --debug for the full traceback", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
