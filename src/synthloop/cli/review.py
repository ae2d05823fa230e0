"""`synthloop review push|pull|status`: human review in Argilla; registered in cli.py with add_typer."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from synthloop.cli.common import cli_command
from synthloop.console import console
from synthloop.errors import SynthloopError

review_app = typer.Typer(help="Human review in Argilla (URL from $ARGILLA_API_URL, key from $ARGILLA_API_KEY).",
                         no_args_is_help=True)
out = console()  # unwrapped without a terminal (synthloop/console.py)
err = console(stderr=True)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _run(project: Path, fn):
    from synthloop.loop.project import Project

    proj = Project(project)
    try:
        return fn(proj)
    finally:
        proj.close()


@review_app.command("push")
@cli_command(writes="review push")
def push(project: ProjectOpt = Path("."),
         all_pending: Annotated[bool, typer.Option("--all-pending", help="Send every pending query to Argilla, "
                                                   "whichever labeler it was routed to.")] = False,
         recheck: Annotated[int, typer.Option("--recheck", help="Instead, send the N stored labels the model "
                                              "doubts most to the '-recheck' dataset for a second look.")] = 0,
         quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
         as_json: JsonOpt = False):
    """Send the pending queries to Argilla: records with suggestions and metadata. Safe to re-run."""
    from synthloop.loop.review import push as push_
    from synthloop.loop.review import push_suspicious

    if recheck < 0:
        raise SynthloopError("--recheck needs a positive number of labels")
    with Progress(TextColumn("pushing"), BarColumn(), MofNCompleteColumn(), console=err,
                  disable=quiet or as_json) as progress:
        bar = progress.add_task("push", total=None)

        def on_chunk(done, total):
            progress.update(bar, completed=done, total=total)

        if recheck:
            result = _run(project, lambda p: push_suspicious(p, recheck, on_chunk=on_chunk))
        else:
            result = _run(project, lambda p: push_(p, reroute=all_pending, on_chunk=on_chunk))
    if as_json:
        print(json.dumps(asdict(result)))
    else:
        out.print(f"{result.pushed} records in Argilla dataset [bold]{escape(result.dataset)}[/] at {escape(result.url)}")


@review_app.command("pull")
@cli_command(writes="review pull")
def pull(project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Store the labels reviewers submitted (majority of annotators; ties stay pending). Safe to re-run."""
    from synthloop.loop.review import pull as pull_

    result = _run(project, pull_)
    if as_json:
        print(json.dumps(asdict(result)))
        return
    out.print(f"{result.examples} examples labeled ({result.added} new label rows)")
    if result.rechecked:
        out.print(f"{result.rechecked} label rows from re-checks")
    if result.waiting:
        out.print(f"{result.waiting} records wait for more annotators")
    if result.ties:
        out.print(f"[yellow]{len(result.ties)} ties left pending[/] (annotators disagree evenly): "
                  + escape(", ".join(result.ties[:10])) + (" ..." if len(result.ties) > 10 else ""))


@review_app.command("status")
@cli_command()
def status(project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Progress of the review dataset: records done and pending, per annotator."""
    from synthloop.loop.review import status as status_

    data = _run(project, status_)
    if as_json:
        print(json.dumps(data, default=str))
        return
    out.print(f"dataset [bold]{escape(data['dataset'])}[/] ({escape(data['workspace'])}) at {escape(data['url'])}: "
              f"{data.get('completed', 0)} of {data.get('total', 0)} records done, "
              f"{data['pending_in_store']} queries waiting in the store")
    annotators = data.get("annotators") or {}
    if not annotators:
        out.print("no annotators in the workspace and no responses yet: add some with `[argilla] annotators`")
        return
    # pending: records this annotator has not submitted or discarded yet (drafts count as pending)
    columns = ("submitted", "draft", "discarded", "pending")
    table = Table("annotator", *columns)
    for user, counts in annotators.items():
        table.add_row(escape(user), *(str(counts[k]) for k in columns))
    out.print(table)
