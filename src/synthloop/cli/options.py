"""What the commands share: the project and --json options, the consoles, opening a project, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from synthloop.console import console

if TYPE_CHECKING:
    from synthloop.loop.project import Project

out = console()  # unwrapped without a terminal (synthloop/console.py)
err = console(stderr=True)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def open_project(project: Path) -> Project:
    from synthloop.loop.project import Project

    return Project(project)


def emit(data, as_json: bool) -> bool:
    if as_json:
        print(json.dumps(data, default=str))
    return as_json


