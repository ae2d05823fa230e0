"""The terminal screen of `synthloop teach`, drawn with Textual over a synthloop.loop.teach.TeachSession.

Every text shown (examples, label names, the user's name) goes in as a rich `Text`, never as markup, so a
message containing `[bold]` or `[/]` shows as typed.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from synthloop.loop.teach import TeachSession, status_line

# How often the screen looks for a retrain that finished (the worker never touches widgets itself).
POLL_SECONDS = 0.2


class TeachApp(App):
    TITLE = "synthloop teach"
    # Ctrl+C quits like q (Textual's default only tells you to press Ctrl+Q, which quits too).
    BINDINGS = [Binding("ctrl+c", "quit", show=False, priority=True)]
    CSS = """
    #title { height: 1; background: $primary; color: $text; padding: 0 1; }
    #box { height: 1fr; border: round $accent; padding: 0 1; }
    #suggestion { height: auto; padding: 0 1; }
    #keys { height: auto; padding: 0 1; color: $text-muted; }
    #message { height: 1; padding: 0 1; }
    #status { height: auto; background: $panel; padding: 0 1; }
    """

    def __init__(self, session: TeachSession):
        super().__init__()
        self.session = session
        self._shown = -1

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with VerticalScroll(id="box"):
            yield Static(id="text")
        yield Static(id="suggestion")
        yield Static(id="keys")
        yield Static(id="message")
        yield Static(id="status")

    def on_mount(self) -> None:
        session = self.session
        self.query_one("#title", Static).update(Text(
            f"synthloop teach · {session.project.task.name} · answers stored as {session.source}", no_wrap=True))
        self.query_one("#keys", Static).update(self._legend())
        self.set_interval(POLL_SECONDS, self._poll)
        self._redraw()

    def _legend(self) -> Text:
        by_label: dict[str, list[str]] = {}
        for key, label in self.session.keys.items():
            by_label.setdefault(label, []).append(key)
        legend = Text()
        for label, keys in by_label.items():
            legend.append("/".join(keys), style="bold")
            legend.append(f" {label}   ")
        legend.append("a", style="bold")
        legend.append(" accept   ")
        legend.append("s", style="bold")
        legend.append(" skip   ")
        legend.append("u", style="bold")
        legend.append(" undo   ")
        legend.append("q", style="bold")
        legend.append(" quit")
        return legend

    def _poll(self) -> None:
        if self.session.revision != self._shown:
            self._redraw()

    def _redraw(self) -> None:
        self._shown = self.session.revision
        item = self.session.current
        text, suggestion = self.query_one("#text", Static), self.query_one("#suggestion", Static)
        if item is None:
            text.update(Text("Nothing left to label here. Press u to undo the last answer, or q to quit."))
            suggestion.update("")
        else:
            text.update(Text(item.text))
            suggestion.update(Text.assemble("model suggests ", (item.suggestion, "bold"), f" (probability "
                                            f"{item.probability:.2f})", ("   id ", "dim"), (item.example_id, "dim")))
        self.query_one("#status", Static).update(Text(status_line(self.session.status())))

    def on_key(self, event: events.Key) -> None:
        key = event.character if event.character and event.character.isprintable() else event.key
        if key.lower() == "q":
            event.stop()
            self.exit()
            return
        done = self.session.press(key)
        if done is None:
            return  # a key that means nothing here changes nothing
        event.stop()
        self.query_one("#message", Static).update(Text(done))
        self._redraw()
