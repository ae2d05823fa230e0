"""`synthloop requeue`: failed or skipped examples back into the pool, orphaned queries to a labeler that
exists; registered in cli.py with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from synthloop.cli.common import cli_command
from synthloop.console import console

out = console()  # unwrapped without a terminal, like the main CLI (synthloop/console.py)


@cli_command(writes="requeue")  # one writer at a time: a round or nightly waits for it (exit 75)
def requeue(failed: Annotated[bool, typer.Option("--failed", help="Make examples whose query failed selectable again.")] = False,
            skipped: Annotated[bool, typer.Option("--skipped", help="Make examples whose query was skipped selectable again.")] = False,
            labeler: Annotated[str | None, typer.Option(help="Where pending queries of a labeler that no longer "
                                                           "exists go (default: the project's labeler).")] = None,
            project: Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")] = Path("."),
            as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False):
    """Put failed/skipped examples back in the pool and re-route queries of unknown labelers."""
    from synthloop.loop.project import Project

    proj = Project(project)
    try:
        result = proj.requeue(failed=failed, skipped=skipped, labeler=labeler)
    finally:
        proj.close()
    if as_json:
        print(json.dumps(result))
        return
    for what, n in sorted(result["requeued"].items()):
        out.print(f"{n} back in the pool ({escape(what)})", highlight=False)
    if not result["requeued"]:
        out.print("nothing requeued" + ("" if failed or skipped else " (add --failed and/or --skipped)"))
    if result["rerouted"]:
        out.print(f"{result['rerouted']} pending queries of unknown labelers now go to {escape(result['rerouted_to'])}",
                  highlight=False)
