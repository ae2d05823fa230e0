"""Names that pick code (strategy, model, labeler), from the command line or synthloop.toml: anything that is not
one of the choices is refused with exit 2 and one line listing them, before anything is stored or called.
`--strategy os.system` used to import os.system and call it with the pool (exit 1, "a bug")."""

from __future__ import annotations

import sqlite3

import pytest
from forkserver import run_synthloop
from helpers import EXAMPLE

from synthloop import Project
from synthloop.errors import SynthloopError, UnknownChoice
from synthloop.learn.active import get_strategy

CHOICES = "cold-start, least-confident, margin, entropy, ranked-batch, random"


def cli(*args, cwd):
    return run_synthloop(*args, cwd=cwd, timeout=300)


def one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def imported(tmp_path):
    Project.init(tmp_path / "p", EXAMPLE / "task.toml", loop={"batch_size": 5}).close()
    proj = Project(tmp_path / "p")
    proj.import_file(EXAMPLE / "pool.csv", label_col="label", gold=True)
    proj.close()
    return tmp_path / "p"


def stored(root) -> tuple[int, int]:
    with sqlite3.connect(root / ".synthloop" / "store.db") as db:
        return (db.execute("SELECT COUNT(*) FROM queries").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0])


@pytest.mark.parametrize("name", ["os.system", "os:system", "subprocess.call", "builtins.eval", "os", "nothere.pick",
                                  "synthloop.learn.active.STRATEGIES", ".margin", "margin."])
def test_a_name_that_is_no_strategy_is_refused_before_it_is_called(name):
    with pytest.raises(UnknownChoice, match=CHOICES) as raised:
        get_strategy(name)
    assert isinstance(raised.value, SynthloopError) and repr(name) in str(raised.value)


def test_a_function_of_your_own_is_still_a_strategy():
    from synthloop.learn import active

    assert get_strategy("synthloop.learn.active:margin") is active.margin
    assert get_strategy("synthloop.learn.active.random_sampling") is active.random_sampling


def test_query_strategy_os_system_exits_2_naming_the_choices_and_stores_nothing(imported):
    proc = cli("query", "--strategy", "os.system", cwd=imported)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert "'os.system' is not a query strategy" in line and CHOICES in line
    assert stored(imported) == (0, 0)
    proc = cli("query", "--strategy", "margn", cwd=imported)
    assert proc.returncode == 2 and "unknown strategy 'margn'" in one_line(proc) and CHOICES in proc.stderr
    assert stored(imported) == (0, 0)


@pytest.mark.parametrize("key, value, message", [
    ("strategy", "os.system", "'os.system' is not a query strategy"),
    ("labeler", "os.system", "unknown labeler 'os.system'"),
    ("name", "os.system", "unknown model 'os.system'"),
])
def test_config_values_that_name_no_choice_exit_2_and_store_nothing(imported, key, value, message):
    config = imported / "synthloop.toml"
    text = config.read_text()
    old = {"strategy": 'strategy = "cold-start"', "labeler": 'labeler = "oracle"', "name": 'name = "hybrid-lr"'}[key]
    assert old in text
    config.write_text(text.replace(old, f'{key} = "{value}"', 1))
    for command in (["round"], ["query"]):
        proc = cli(*command, cwd=imported)
        assert proc.returncode == 2, proc.stderr
        assert message in one_line(proc)
    assert stored(imported) == (0, 0)


@pytest.mark.parametrize("option, message", [
    ("--strategy", "'os.system' is not a query strategy"),
    ("--labeler", "unknown labeler 'os.system'"),
    ("--model", "unknown model 'os.system'"),
])
def test_options_that_name_no_choice_exit_2(imported, tmp_path, option, message):
    proc = cli("init", tmp_path / "q", "--task", EXAMPLE / "task.toml", option, "os.system", cwd=tmp_path)
    assert proc.returncode == 2 and message in one_line(proc)
    assert not (tmp_path / "q" / "synthloop.toml").exists()
    if option == "--labeler":
        proc = cli("round", "--labeler", "os.system", cwd=imported)
        assert proc.returncode == 2 and message in one_line(proc)
        assert stored(imported) == (0, 0)
