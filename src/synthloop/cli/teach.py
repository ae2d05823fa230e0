"""`synthloop teach`: label the pool in the terminal (synthloop.loop.teach); registered in cli.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from synthloop.cli.common import cli_command
from synthloop.console import console
from synthloop.errors import SynthloopError

err = console(stderr=True)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")]


@cli_command(writes="teach")  # one writer at a time: a round or nightly waits for it (exit 75)
def teach(user: Annotated[str | None, typer.Option(help="Who is labeling; answers are stored as human:NAME "
                                                      "(default: $USER).")] = None,
          retrain_every: Annotated[int, typer.Option(min=1, help="Train a new model version in the background "
                                                     "after this many answers.")] = 10,
          project: ProjectOpt = Path(".")):
    """Label the pool yourself, one text at a time, most uncertain first: keys 1..k (or a label's initial)
    answer, a accepts the model's suggestion, s skips, u undoes, q quits. Each answer is stored at once."""
    try:
        from synthloop.cli.teach_app import TeachApp
    except ImportError as e:
        if (e.name or "").split(".")[0] != "textual":
            raise
        raise SynthloopError("synthloop teach needs Textual: pip install 'synthloop[teach]'") from None
    from synthloop.loop.project import Project
    from synthloop.loop.teach import TeachSession

    proj = Project(project)
    try:
        session = TeachSession(proj, user=user, retrain_every=retrain_every)
        # Checked after the options, so bad input says what is wrong with it wherever it runs.
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise SynthloopError("synthloop teach needs a terminal (stdin and stdout); without one, label in "
                                 "Argilla with `synthloop review push`")
        with err.status("loading the model and ranking the pool"):
            session.start()
        if session.current is None:
            err.print("nothing to label: every pool example has a label or a pending query", highlight=False)
            return
        TeachApp(session).run()
        if session.retraining:
            with err.status("finishing the model being trained"):
                session.wait()
    finally:
        proj.close()
    err.print(f"{session.answered} answers stored as {escape(session.source)} this session; "
              f"latest model v{session.model_version}", highlight=False)
