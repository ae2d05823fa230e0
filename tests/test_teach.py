"""`synthloop teach`: the session driven through Textual's own harness (run_test + pilot.press), and the real
command in a real terminal (tmux send-keys / capture-pane), killed with SIGKILL mid-session."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import skip_or_fail

from synthloop import Project
from synthloop.learn import active

if importlib.util.find_spec("textual") is None:
    skip_or_fail("Textual is not installed: pip install 'synthloop[teach]' (make test installs it)")
from synthloop.cli.teach_app import TeachApp  # noqa: E402
from synthloop.loop.teach import TeachSession, key_map  # noqa: E402

DEADLINE = 180  # seconds; generous: two shared cores under several engineers' tests


@pytest.fixture
def teach_project(project, small_pool):
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    return project


def stored(project, source: str) -> dict[str, str]:
    """example id -> label, for the labels one source has in the store."""
    return {eid: label for src, eid, label in _label_rows(project) if src == source}


def _label_rows(project):
    import sqlalchemy as sa

    from synthloop.store import labels

    with project.store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(labels.c.source, labels.c.example_id, labels.c.label))]


def test_key_map_numbers_and_unambiguous_initials():
    assert key_map(["ham", "spam"]) == {"1": "ham", "2": "spam", "h": "ham"}  # s is skip
    keys = key_map(["positive", "negative", "neutral", "other"])
    assert keys == {"1": "positive", "2": "negative", "3": "neutral", "4": "other", "p": "positive", "o": "other"}
    assert "1" not in {k for k, v in key_map(["1star", "5star"]).items() if v == "5star"}


def test_keys_answer_accept_skip_undo_and_quit(teach_project):
    session = TeachSession(teach_project, user="alice", retrain_every=100)
    session.start()
    assert session.model_version == 1  # no model yet: the session trained one
    queue = [it.example_id for it in session.queue]
    assert set(queue) == set(teach_project.store.unlabeled_pool()[0])
    scores = [it.uncertainty for it in session.queue]
    assert scores == sorted(scores, reverse=True)  # most uncertain first
    seen = {}

    async def drive():
        app = TeachApp(session)
        async with app.run_test(size=(120, 40)) as pilot:
            first = session.current
            assert str(app.query_one("#text").content) == first.text
            await pilot.press("1")
            seen["first"] = first
            second = session.current
            await pilot.press("h")
            seen["second"] = second
            third = session.current
            await pilot.press("a")
            seen["third"] = third
            assert stored(teach_project, "human:alice") == {first.example_id: "ham", second.example_id: "ham",
                                                            third.example_id: third.suggestion}
            fourth = session.current
            await pilot.press("s")
            assert session.current.example_id != fourth.example_id
            assert fourth.example_id not in stored(teach_project, "human:alice")
            revision, current = session.revision, session.current
            await pilot.press("x", "escape", "enter", "question_mark", "9", "left")  # bound to nothing
            assert (session.revision, session.current) == (revision, current)
            await pilot.press("u")  # undoes the skip
            assert session.current == fourth
            await pilot.press("u")  # undoes the accept: the label leaves the store
            assert session.current == third
            assert third.example_id not in stored(teach_project, "human:alice")
            assert str(app.query_one("#text").content) == third.text
            await pilot.press("2")
            assert "3 labels by alice (ham 2 · spam 1)" in str(app.query_one("#status").content)
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(drive())
    assert stored(teach_project, "human:alice") == {seen["first"].example_id: "ham", seen["second"].example_id: "ham",
                                                    seen["third"].example_id: "spam"}
    assert session.answered == 3 and not session.retraining


def test_retrain_after_n_answers_reranks_and_shows_the_score(teach_project, monkeypatch):
    session = TeachSession(teach_project, user="bob", retrain_every=3)
    session.start()
    assert teach_project.store.latest_model().version == 1
    # The real training, held back until the test has used the screen while it runs (else it may be over first).
    gate, train = threading.Event(), teach_project.train
    monkeypatch.setattr(teach_project, "train", lambda *a, **k: gate.wait(DEADLINE) and train(*a, **k))

    async def drive():
        app = TeachApp(session)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("1", "2", "h")
            assert session.retraining  # started by the third answer, in the background
            status = app.query_one("#status")
            assert "retraining…" in str(status.content)
            before = session.current
            await pilot.press("s")  # the screen takes keys while the model trains
            assert session.current != before and str(app.query_one("#message").content) == "skipped"
            fourth = session.current
            await pilot.press("2")
            assert stored(teach_project, "human:bob")[fourth.example_id] == "spam"
            head = session.current
            gate.set()
            deadline = time.monotonic() + DEADLINE
            while "model v2: test accuracy" not in str(status.content):  # redrawn when the worker is done
                assert time.monotonic() < deadline, f"no retrain shown: {status.content}"
                await pilot.pause(0.1)
            assert session.current == head  # the example on the screen kept its place
            await pilot.press("ctrl+c")  # quits, like q
        assert app.return_code == 0

    asyncio.run(drive())
    latest = teach_project.store.latest_model()
    assert latest.version == 2
    assert latest.n_train == 4 + len(teach_project.task.examples())  # trained on the four answers
    _, model = teach_project.load_model(2)
    assert session.metrics == teach_project.evaluate(model)
    # The rest of the queue is ranked by the new model's uncertainty.
    rest = session.queue[1:]
    expected = active.uncertainty(session.strategy, model.predict_proba([it.text for it in rest]))
    assert np.allclose([it.uncertainty for it in rest], expected)
    assert [it.uncertainty for it in rest] == sorted((it.uncertainty for it in rest), reverse=True)


def rendered(widget) -> str:
    """What the widget draws on the screen, line by line."""
    return "\n".join(widget.render_line(y).text.rstrip() for y in range(widget.size.height))


def test_user_text_shows_as_typed_never_as_markup(tmp_path, small_pool):
    import pandas as pd

    texts = ["[bold]WIN[/bold] a [red]prize[/] now", "[link=http://evil.example]click[/link] here", "broken [/] markup [",
             ":smile: $x$ \\[escaped]"]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "markup.csv", index=False)
    project = Project.init(tmp_path / "markup", small_pool / "task.toml")
    try:
        project.import_file(tmp_path / "markup.csv")
        session = TeachSession(project, user="[b]eve[/]", retrain_every=100)
        session.start()

        async def drive():
            app = TeachApp(session)
            async with app.run_test(size=(120, 40)) as pilot:
                assert "answers stored as human:[b]eve[/]" in rendered(app.query_one("#title"))
                shown = []
                while session.current is not None:
                    text = rendered(app.query_one("#text"))
                    assert session.current.text in text, text
                    shown.append(session.current.text)
                    await pilot.press("s")
                assert sorted(shown) == sorted(texts)
                assert "Nothing left to label" in rendered(app.query_one("#text"))
                revision = session.revision
                await pilot.press("a", "1", "s")  # nothing to answer: nothing happens
                assert session.revision == revision and stored(project, session.source) == {}
                await pilot.press("u")
                assert session.current.text == shown[-1]
                await pilot.press("q")

        asyncio.run(drive())
    finally:
        project.close()


def test_cli_errors_are_one_line_and_exit_2(teach_project):
    root = str(teach_project.root)
    for args, message in (([], "needs a terminal"), (["--retrain-every", "0"], "--retrain-every"),
                          (["--user", " "], "--user NAME")):
        result = subprocess.run([sys.executable, "-m", "synthloop", "teach", "--project", root, *args],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=DEADLINE)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


# A real terminal ---------------------------------------------------------------------------------

class Tmux:
    """A tmux server of our own (its own socket): started by this test, it passes the test's environment
    (PYTHONPATH, CI, ...) to the command."""

    def __init__(self, socket):
        self.base = [shutil.which("tmux"), "-S", str(socket), "-f", os.devnull]

    def __call__(self, *args) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True, timeout=60).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "teach")

    def wait_for(self, check, what: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if self("display", "-p", "-t", "teach", "#{pane_dead}").strip() == "1":
                raise AssertionError(f"the command ended while waiting for {what}:\n{screen}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}; the screen:\n{screen}"
            time.sleep(0.1)  # the polling interval

    def shown(self, screen: str) -> tuple[str, str]:
        """(suggested label, example id) of the example on the screen."""
        match = re.search(r"model suggests (\S+) \(probability [0-9.]+\)\s+id (\S+)", screen)
        assert match, screen
        return match.group(1), match.group(2)


def test_in_tmux_answers_survive_kill_9(teach_project, tmp_path):
    if shutil.which("tmux") is None:
        skip_or_fail("tmux is not installed: apt-get install tmux (make test installs it)")
    # exec: the pane's process is synthloop itself, so its pid is the one to kill.
    command = (f"exec {shlex.quote(sys.executable)} -m synthloop teach "
               f"--project {shlex.quote(str(teach_project.root))} --user 'al[b]ice' --retrain-every 3")
    tmux = Tmux(tmp_path / "tmux.sock")
    tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", "teach", command,
         ";", "set-option", "-w", "-t", "teach", "remain-on-exit", "on")
    try:
        screen = tmux.wait_for(lambda s: "0 labels by al[b]ice" in s, "the first example")
        assert "answers stored as human:al[b]ice" in screen  # the name shows as typed, not as markup
        answers = {}
        for n, key in enumerate(["h", "2", "a", "1"], start=1):
            suggestion, example_id = tmux.shown(screen)
            tmux("send-keys", "-t", "teach", key)
            answers[example_id] = {"h": "ham", "1": "ham", "2": "spam", "a": suggestion}[key]
            screen = tmux.wait_for(lambda s, n=n: f"{n} labels by al[b]ice" in s, f"answer {n}")
        assert stored(teach_project, "human:al[b]ice") == answers
        tmux.wait_for(lambda s: "retraining…" in s or "model v2:" in s, "the retrain after three answers")

        pid = int(tmux("display", "-p", "-t", "teach", "#{pane_pid}"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"synthloop" in f.read()
        os.kill(pid, signal.SIGKILL)
        _wait_dead(tmux)
        assert stored(teach_project, "human:al[b]ice") == answers  # nothing answered is lost

        # Started again, the session counts what was stored and never shows an answered example.
        tmux("respawn-pane", "-t", "teach", command)
        screen = tmux.wait_for(lambda s: "4 labels by al[b]ice" in s, "the restarted session")
        assert tmux.shown(screen)[1] not in answers
        tmux("send-keys", "-t", "teach", "q")
        _wait_dead(tmux)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True, timeout=60)


def _wait_dead(tmux: Tmux) -> None:
    deadline = time.monotonic() + DEADLINE
    while tmux("display", "-p", "-t", "teach", "#{pane_dead}").strip() != "1":
        assert time.monotonic() < deadline, f"the process did not end:\n{tmux.screen()}"
        time.sleep(0.1)
