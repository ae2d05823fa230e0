"""`synthloop report`, registered in cli.py with `app.command()(report)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from synthloop.errors import SynthloopError


def report(project: Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")] = Path("."),
           out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the report (default .synthloop/reports).")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the report's data as JSON.")] = False,
           no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip timing the compact model.")] = False):
    """Write report.html (self-contained), report.md and report.json: learning curves, label quality, cost and savings."""
    from synthloop.project import Project
    from synthloop.report import build_report

    try:
        proj = Project(project)
        try:
            data = build_report(proj, out_dir=out, measure_latency=not no_latency)
        finally:
            proj.close()
    except SynthloopError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(data, default=str))
    else:
        for kind, path in data["paths"].items():
            print(f"{kind}: {path}")
