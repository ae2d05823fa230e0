"""Every command in the docs runs, as a reader would run it, and prints what the docs say it prints.

The convention (docs/development.md says it for writers):
- A ```console block is a terminal session: a line `$ COMMAND` is run by bash (`synthloop` and `python` are
  this interpreter), the lines after it, up to the next `$ `, are its expected output (stdout and stderr
  together, as a terminal shows them), then `[exit N]` when the status is not 0. In an expected line `…`
  matches any text (timings, paths, figures that vary); a line that is only `...` matches any lines.
- The blocks of one page run in order in one temp folder that holds a copy of `examples/`, so `cd` and
  `export` carry over from one command to the next, as in one terminal.
- A ```python block runs with this interpreter in a fresh folder with a copy of `examples/` and must exit 0; when the next block is
  a ```text block marked `<!-- output of the block above -->`, its lines are its expected output.
- A ```bash/```sh/```console/```python block that cannot run here (it needs a running Argilla server, GPT-4o,
  a cluster, or takes many minutes) is marked `<!-- not run: WHY -->` on the line before it. Each one is
  reported as a skipped test with its reason, and MAX_NOT_RUN keeps that list short.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import forkserver
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# Pages whose blocks another session owns and has not moved to this convention yet; each is reported as a
# skipped test with its reason. Remove a page from here once its output lines carry `…` where they vary.
NOT_CONVERTED: dict[str, str] = {}
# Marked `<!-- not run: ... -->` blocks over every page: keep the list short. 15: docs/nightly.md's cluster,
# Batch API and Argilla examples joined the list when its walk became a test.
MAX_NOT_RUN = 15
SHELL = {"console", "bash", "sh", "shell", "zsh"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
OUTPUT_MARK = "<!-- output of the block above -->"
COMMAND_TIMEOUT = 600


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    body: list[str]
    marker: str  # the HTML comment on the line before the fence ("" if none)

    @property
    def not_run(self) -> str | None:
        found = NOT_RUN.search(self.marker)
        return found.group(1) if found else None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)
    exit: int = 0


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(`{3,})\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, start = opening.group(1), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence)), len(lines))
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        found.append(Block(str(page.relative_to(ROOT)), start + 1, opening.group(2).lower(), lines[start + 1:end],
                           before.strip() if before.strip().startswith("<!--") else ""))
        i = end + 1
    return found


def commands_of(block: Block) -> list[Command]:
    commands: list[Command] = []
    for line in block.body:
        if line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif not commands:
            raise AssertionError(f"{block.where}: a console block starts with `$ COMMAND`, not {line!r}")
        elif commands[-1].text.endswith("\\") and not commands[-1].expected:
            commands[-1].text += "\n" + line  # a command continued on the next line
        elif re.fullmatch(r"\[exit \d+\]", line.strip()):
            commands[-1].exit = int(line.strip()[6:-1])
        else:
            commands[-1].expected.append(line.rstrip())
    return commands


def expected_pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*".join(re.escape(piece) for piece in line.split("…")) + r"[ \t]*\n")
    return re.compile("".join(parts))


def check_output(where: str, what: str, expected: list[str], output: str) -> None:
    lines = [line.rstrip() for line in output.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while expected and not expected[-1]:
        expected = expected[:-1]
    text = "".join(line + "\n" for line in lines)
    if expected_pattern(expected).fullmatch(text):
        return
    diff = "\n".join(difflib.unified_diff(expected, lines, "the docs", "what it printed", lineterm=""))
    raise AssertionError(f"{where}: `{what}` printed something else than the docs say (… and ... are wildcards):\n"
                         f"{diff}")


def session_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A reader's folder: a copy of examples/, and `synthloop`/`python` on PATH meaning this interpreter."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    # `synthloop` forked from tests/forkserver.py's server when it runs (the CLI's imports done once), else a new Python.
    cli = forkserver.shim_command() or f'"{sys.executable}" -m synthloop'
    for name, command in (("synthloop", cli), ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "SYNTHLOOP_PROJECT", "SYNTHLOOP_DB_URL")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OPENBLAS_NUM_THREADS="1", HOME=str(tmp_path),
               **forkserver.environment())
    return tmp_path, env


def run_command(where: str, command: Command, cwd: Path, env: dict[str, str], state: Path) -> tuple[Path, dict]:
    """Run one `$ ` line in bash; return the folder and environment it left (so `cd` and `export` carry over)."""
    script = f'{command.text}\n__rc=$?\npwd > "{state}/cwd"\nenv -0 > "{state}/env"\nexit $__rc\n'
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, timeout=COMMAND_TIMEOUT)
    assert done.returncode == command.exit, (
        f"{where}: `{command.text}` exited {done.returncode}, the docs say {command.exit}:\n{done.stdout[-3000:]}")
    check_output(where, command.text, command.expected, done.stdout)
    new_env = dict(item.split("=", 1) for item in (state / "env").read_text().split("\0") if "=" in item)
    return Path((state / "cwd").read_text().strip()), new_env


def python_dir(root: Path, block: Block) -> Path:
    """A fresh folder with a copy of examples/ for one Python block (it may create the projects the shell
    blocks did: the README's quick start and its Python API both make `spam`)."""
    folder = root / f"python-{block.line}"
    shutil.copytree(ROOT / "examples", folder / "examples")
    return folder


def run_python(where: str, code: str, expected: list[str] | None, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, timeout=COMMAND_TIMEOUT)
    assert done.returncode == 0, f"{where}: the Python block failed:\n{done.stderr[-3000:]}"
    if expected is not None:
        check_output(where, "the Python block", expected, done.stdout)


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks_of(page) if (b.lang in SHELL or b.lang == "python") and b.not_run is None]


def every_not_run() -> list[Block]:
    return [b for page in PAGES for b in blocks_of(page)
            if (b.lang in SHELL or b.lang == "python") and b.not_run is not None]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if page_id(p) not in NOT_CONVERTED], ids=page_id)
def test_the_commands_of_a_page_print_what_it_says(page, tmp_path):
    blocks = blocks_of(page)
    unmarked = [b.where for b in blocks if b.lang in SHELL - {"console"} and b.not_run is None]
    assert not unmarked, (f"shell blocks that no test runs: {unmarked}; make each a ```console block with its "
                          "output, or mark it `<!-- not run: WHY -->`")
    todo = runnable(page)
    if not todo:
        return  # nothing to run: the check above (no unmarked shell block) is the test
    cwd, env = session_dir(tmp_path)
    state = tmp_path / ".state"
    state.mkdir()
    for block in todo:
        if block.lang == "python":
            following = blocks[blocks.index(block) + 1:blocks.index(block) + 2]
            expected = following[0].body if following and following[0].marker == OUTPUT_MARK else None
            run_python(block.where, "\n".join(block.body), expected, python_dir(tmp_path, block), env)
            continue
        for command in commands_of(block):
            cwd, env = run_command(block.where, command, cwd, env, state)


@pytest.mark.parametrize("page", sorted(NOT_CONVERTED))
def test_pages_not_converted_yet(page):
    assert (ROOT / page).exists(), f"{page} is listed in NOT_CONVERTED but does not exist"
    pytest.skip(f"{page}: not run: {NOT_CONVERTED[page]}")


def test_the_not_run_list_stays_short():
    blocks = every_not_run()
    listing = "\n".join(f"  {b.where}: {b.not_run}" for b in blocks)
    print(f"{len(blocks)} blocks in the docs are not run:\n{listing}")
    assert len(blocks) <= MAX_NOT_RUN, f"{len(blocks)} blocks are marked not run (at most {MAX_NOT_RUN}):\n{listing}"


@pytest.mark.parametrize("block", every_not_run(), ids=lambda b: b.where)
def test_blocks_marked_not_run(block):
    pytest.skip(f"{block.where}: not run: {block.not_run}")


def test_the_matcher_takes_wildcards_and_refuses_other_output():
    # The checker itself: `…` inside a line, `...` for any lines, and anything else must match exactly.
    check_output("t", "x", ["a …s", "...", "end"], "a 1.5 s\nnoise\nmore\nend\n")
    check_output("t", "x", ["a", "...", "b"], "a\nb\n")
    for wrong in ("a 1.5 s\nend\nextra\n", "b 1.5 s\nend\n", "a 1.5 s\n"):
        with pytest.raises(AssertionError, match="printed something else"):
            check_output("t", "x", ["a …s", "...", "end"], wrong)


def transcript(page: Path, out: Path) -> None:
    """Run a page's blocks as the test does and print each `$ ` line with what it printed, to paste into the
    page (then put `…` where a figure varies). `python tests/test_docs.py README.md`."""
    cwd, env = session_dir(out)
    state = out / ".state"
    state.mkdir()
    for block in runnable(page):
        print(f"--- {block.where} ({block.lang})")
        if block.lang == "python":
            done = subprocess.run([sys.executable, "-c", "\n".join(block.body)], cwd=python_dir(out, block), env=env,
                                  text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            print(done.stdout + (f"[exit {done.returncode}]\n" if done.returncode else ""), end="")
            continue
        for command in commands_of(block):
            script = f'{command.text}\n__rc=$?\npwd > "{state}/cwd"\nenv -0 > "{state}/env"\nexit $__rc\n'
            done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
            print(f"$ {command.text}\n{done.stdout}" + (f"[exit {done.returncode}]\n" if done.returncode else ""), end="",
                  flush=True)
            env = dict(item.split("=", 1) for item in (state / "env").read_text().split("\0") if "=" in item)
            cwd = Path((state / "cwd").read_text().strip())


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        transcript((Path.cwd() / sys.argv[1]).resolve(), Path(tmp))
