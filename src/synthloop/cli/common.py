"""What every CLI command shares: one error handler (errors -> one line + exit status) and the project lock.

    @app.command()
    @cli_command()                 # reads only
    def status(...): ...

    @app.command("round")
    @cli_command(writes="round")   # takes the project lock; adds --wait SECONDS
    def round_(..., project: ProjectOpt = Path(".")): ...

No traceback reaches a user: our errors print their message (they name the fix) and exit with their status
(2 bad input, 69 a server did not answer, 75 locked); anything else prints one line and where the traceback
was written. Library warnings go to the same log, not to the terminal.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from synthloop.config import STATE_DIR
from synthloop.console import console
from synthloop.errors import EXIT_FAILED, SynthloopError, failure

# The click whose ClickException typer raises: recent typer vendors it (typer._click) and no longer installs click,
# older typer uses click itself (and its typer.Exit is click's Exit). `import click` broke the CLI in a venv that
# nothing else had pulled click into (make demo's).
click_exceptions = importlib.import_module(typer.BadParameter.__module__)

err = console(stderr=True)
WaitOpt = Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for another synthloop command "
                                        "that is changing this project (default: refuse at once, exit 75).")]
STYLE = {"error": "bold red", "unavailable": "bold red", "locked": "yellow", "failed": "bold red"}


def log_path(project: Path | None) -> Path:
    """Where tracebacks and library warnings go: the project's log folder, or the temp folder if that is not
    writable (a read-only project, or no project yet)."""
    if project is not None:
        folder = Path(project) / STATE_DIR / "logs"
        try:
            folder.mkdir(exist_ok=True)
            with open(folder / "errors.log", "a", encoding="utf-8"):
                return folder / "errors.log"
        except OSError:
            pass
    return Path(tempfile.gettempdir()) / "synthloop-errors.log"


def _write_log(project: Path | None, text: str) -> Path:
    path = log_path(project)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}\n")
    except OSError:
        pass
    return path


def print_error(error: BaseException, status: int) -> None:
    kind = getattr(error, "label", "error") if isinstance(error, SynthloopError) else "unavailable"
    err.print(f"[{STYLE[kind]}]{kind}:[/] {escape(str(error))}", highlight=False, soft_wrap=True)


def cli_command(writes: str | None = None):
    """Wrap a command: map errors to exit statuses and, for a command that writes (`writes` names it in the
    lock's holder info), hold the project lock while it runs."""

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        params = list(signature.parameters.values())
        if writes:
            params.append(inspect.Parameter("wait", inspect.Parameter.KEYWORD_ONLY, default=0.0, annotation=WaitOpt))

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            wait = kwargs.pop("wait", 0.0) if writes else 0.0
            project = kwargs.get("project")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                try:
                    if writes:
                        from synthloop.loop.lock import project_lock

                        with project_lock(Path(project or ".") / STATE_DIR, writes, wait):
                            return fn(*args, **kwargs)
                    return fn(*args, **kwargs)
                except (typer.Exit, typer.Abort, click_exceptions.ClickException):
                    raise
                except KeyboardInterrupt:
                    err.print("[yellow]interrupted:[/] what was stored so far is kept; run the command again to resume")
                    raise typer.Exit(130) from None
                except Exception as raised:  # noqa: BLE001 - the one place that turns errors into exit statuses
                    error, status = failure(raised)
                    if status == EXIT_FAILED:
                        where = _write_log(project, traceback.format_exc())  # the one that was raised
                        err.print(f"[bold red]failed:[/] {escape(type(error).__name__)}: {escape(str(error))} "
                                  f"(a bug; the traceback is in {where})", highlight=False, soft_wrap=True)
                    else:
                        logging.getLogger("synthloop").debug("command failed", exc_info=True)
                        print_error(error, status)
                    raise typer.Exit(status) from None
                finally:
                    if caught:
                        _write_log(project, "\n".join(f"warning: {w.category.__name__}: {w.message} "
                                                      f"({w.filename}:{w.lineno})" for w in caught))

        wrapper.__signature__ = signature.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
