"""The CLI's error contract and output, shared by `waferscale.cli` and its sub-commands.

Every command body runs under `guard` (see `waferscale.cli` for the contract: a user
mistake is one ``error:`` line and exit 2, a bug one line and exit 1 with the traceback
only under ``--debug``, ``--json`` one strict JSON document even on error). Kept apart from
`waferscale.cli` so that the command modules (``cli_gpu``, ``cli_train``, ...) and the
main CLI that registers them import it, not each other.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

try:  # Typer >= 0.2x vendors its own click; older ones use click itself
    from typer._click import exceptions as _cx
    from typer._click.globals import get_current_context as _current_context
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as _cx  # type: ignore[no-redef]
    from click import get_current_context as _current_context  # type: ignore[no-redef]

from waferscale import strict_json
from waferscale.errors import WaferscaleError

console = Console(stderr=False)

#: Every command's ``--json`` flag.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


class _Debug:
    """Whether errors print their traceback (``--debug`` or ``WAFERSCALE_DEBUG=1``)."""

    on = False


DEBUG = _Debug()


def _emit(data: Any) -> None:
    """One strict JSON document on stdout: a figure that is not a finite number is null,
    and ``non_finite`` (added to a dict) says which were and what they were."""
    sys.stdout.write(strict_json.dumps(data, indent=2) + "\n")


def _one_line(text: str, limit: int = 2000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _fail(code: int, message: str, kind: str, json_out: bool) -> None:
    """The error contract's output (module docstring): one line on stderr, and with
    ``--json`` one JSON document on stdout."""
    line = _one_line(message)
    if json_out:
        _emit({"error": {"message": line, "type": kind, "exit_code": code}})
    typer.echo(f"error: {line}", err=True)


def _json_requested() -> bool:
    ctx = _current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("json_out"))


def _guard(fn: Callable[[], None]) -> None:
    """Run a command's body under the error contract (module docstring)."""
    try:
        fn()
    except (typer.Exit, typer.Abort, _cx.ClickException):
        raise
    except WaferscaleError as exc:
        if DEBUG.on:
            traceback.print_exc()
        _fail(2, str(exc), type(exc).__name__, _json_requested())
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _fail(130, "interrupted (Ctrl-C)", "KeyboardInterrupt", _json_requested())
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if DEBUG.on:
            traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        _fail(1, f"internal error: {type(exc).__name__}: {_one_line(str(exc), 300)} at "
                 f"{Path(where.filename).name}:{where.lineno} (a bug in waferscale; run again "
                 f"with --debug for the traceback)", type(exc).__name__, _json_requested())
        raise typer.Exit(1) from None


__all__ = ["DEBUG", "JsonOpt", "console", "strict_json"]
