from __future__ import annotations

import functools
import inspect
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLE, SHARED_DATA, artifact, remove_prepared_projects, skip_or_fail

from synthloop import Project


def pytest_sessionfinish(session, exitstatus):
    remove_prepared_projects()  # helpers.project_after_one_round's prepared folders


@pytest.fixture
def example_dir() -> Path:
    return EXAMPLE


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (only present beside a developer checkout)")
    return SHARED_DATA


@pytest.fixture
def project(tmp_path) -> Project:
    # Margin: the fixture's tests check margin's cached and streamed scores (cold-start, the default, is tested
    # in test_hybrid.py).
    proj = Project.init(tmp_path / "proj", EXAMPLE / "task.toml", loop={"batch_size": 10, "strategy": "margin"})
    yield proj
    proj.close()


@pytest.fixture
def small_pool(tmp_path) -> Path:
    """The first 300 pool rows and 200 test rows of the SMS sample, to keep loop tests quick."""
    import pandas as pd

    pool = pd.read_csv(EXAMPLE / "pool.csv").head(300)
    test = pd.read_csv(EXAMPLE / "test.csv").head(200)
    out = tmp_path / "data"
    out.mkdir()
    pool.to_csv(out / "pool.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    shutil.copy(EXAMPLE / "task.toml", out / "task.toml")
    return out


@pytest.fixture(scope="session")
def local_llm():
    """The real local LLM server (llama.cpp via xllamacpp + SmolLM2-135M), started once per session on a free port."""
    from llm_servers import local_llm_or_skip

    server = local_llm_or_skip(log_file=artifact("llm-server.log"))
    yield server
    server.stop()


@pytest.fixture
def llm_project(project, small_pool, local_llm):
    from synthloop.llm.serve import LOCAL_MODEL_NAME

    project.config.llm.base_url = local_llm.base_url
    project.config.llm.model = LOCAL_MODEL_NAME
    project.config.synth.subtopics = 2  # the CPU model writes slowly: enough to take the sub-topic path
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    return project


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of a real two-node Ray cluster (tests/ray_cluster.py), started once per session."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        skip_or_fail("Ray is not installed: pip install 'synthloop[ray]' to run the Ray engine tests")
    from ray_cluster import two_node_cluster

    with two_node_cluster() as address:
        yield address


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server (tests/pg_server.py), started once per session on a free port."""
    from pg_server import pg_server_or_reason

    server, reason = pg_server_or_reason(log_file=artifact("postgresql.log"))
    if server is None:
        skip_or_fail(reason)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty database on the test server (it holds the password: never print it)."""
    return pg_server.create_database()


# Which tests the `db` fixture runs on PostgreSQL too: the store's own tests (every dialect-sensitive query),
# and the tests marked `both_stores` (a representative few of the loop and kill tests: the same code paths on
# the other store, without running every loop test twice). The rest of the `db` tests run on SQLite.
BOTH_STORES_MODULES = {"test_store"}


def pytest_generate_tests(metafunc):
    if "db" in metafunc.fixturenames:
        both = metafunc.module.__name__ in BOTH_STORES_MODULES or metafunc.definition.get_closest_marker("both_stores")
        metafunc.parametrize("db", ["sqlite", "postgresql"] if both else ["sqlite"], indirect=True)


@pytest.fixture
def db(request, monkeypatch) -> str | None:
    """The store a test runs on: None for SQLite in the project folder, else a fresh PostgreSQL database's
    URL, also set as $SYNTHLOOP_DB_URL so every Project and `synthloop` subprocess the test makes uses it.
    See pytest_generate_tests for which tests get both."""
    if request.param == "sqlite":
        monkeypatch.delenv("SYNTHLOOP_DB_URL", raising=False)
        return None
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("SYNTHLOOP_DB_URL", url)
    return url



# Unit vs integration (`pytest -m unit` runs the quick, in-process part). A test is `integration` when it, one
# of its fixtures, or a function of its module that it calls starts a real process or server: a `synthloop`
# subprocess, the LLM/PostgreSQL/Argilla/Ray servers of the helper modules, an HTTP server, tmux or chromium;
# or runs on the PostgreSQL store. Everything else is `unit`. A test marked by hand keeps its own marker.
REAL_PROCESS = re.compile(r"subprocess|Popen|sys\.executable|HTTPServer|start_local_server|uvicorn|tmux|chromium|"
                          r"playwright|llm_servers|pg_server|argilla_server|ray_cluster")  # also inside longer names
_spawning: dict[str, set[str]] = {}
TESTS = Path(__file__).resolve().parent


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _in_tests(obj) -> bool:
    try:
        return Path(inspect.getfile(obj)).resolve().parent == TESTS
    except TypeError:
        return False


def _spawning_names(module) -> set[str]:
    """The functions and classes in `module`'s namespace, defined in the tests folder (there or in a helper module
    like llm_servers), that start a process, directly or through another."""
    if module.__name__ not in _spawning:
        sources = {name: _source(obj) for name, obj in vars(module).items()
                   if (inspect.isfunction(obj) or inspect.isclass(obj)) and _in_tests(obj)}
        found = {name for name, text in sources.items() if REAL_PROCESS.search(text)}
        while True:
            more = {name for name, text in sources.items() if name not in found
                    and any(re.search(rf"\b{re.escape(f)}\b", text) for f in found)}
            if not more:
                break
            found |= more
        _spawning[module.__name__] = found
    return _spawning[module.__name__]


@functools.cache  # a fixture is asked about once per test that uses it
def _starts_a_process(fn) -> bool:
    fn = inspect.unwrap(fn)
    text = _source(fn)
    if REAL_PROCESS.search(text):
        return True
    module = sys.modules.get(getattr(fn, "__module__", ""))
    return module is not None and any(re.search(rf"\b{re.escape(name)}\b", text) for name in _spawning_names(module))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    _group_for_xdist(items)
    for item in items:
        if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
            continue
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = [d for ds in (fixtures.name2fixturedefs.values() if fixtures else ()) for d in ds]
        params = getattr(getattr(item, "callspec", None), "params", {})
        # A parametrized fixture (db) is judged by its parameter: db="sqlite" starts nothing.
        integration = ("postgresql" in params.values() or _starts_a_process(item.obj)
                       or any(_starts_a_process(d.func) for d in defs if d.argname not in params))
        item.add_marker(pytest.mark.integration if integration else pytest.mark.unit)


# pytest-xdist (`make test` runs `-n 2 --dist loadgroup`): a group's tests run in one worker, the others are
# spread one by one. A module whose tests share a module-scoped fixture (an Argilla server, a trained model) is
# one group, so that fixture is made once; the tests on the session's Ray cluster are one group (with the
# module-scoped fixtures of their modules), so one worker starts one cluster. Session fixtures that are cheap to
# start twice (the local LLM, PostgreSQL) are made once per worker.
def _group_for_xdist(items) -> None:
    def fixture_names(item) -> tuple:
        info = getattr(item, "_fixtureinfo", None)
        return tuple(info.names_closure) if info else ()

    def shares_module_fixture(item) -> bool:
        info = getattr(item, "_fixtureinfo", None)
        return any(d.scope in ("module", "class", "package")
                   for ds in (info.name2fixturedefs.values() if info else ()) for d in ds)

    ray_modules = {item.module.__name__ for item in items if "ray_cluster" in fixture_names(item)}
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        shared = shares_module_fixture(item)
        if "ray_cluster" in fixture_names(item) or (shared and item.module.__name__ in ray_modules):
            item.add_marker(pytest.mark.xdist_group("ray_cluster"))
        elif shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
