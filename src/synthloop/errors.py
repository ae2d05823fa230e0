"""Errors as types, and the one place that maps them to exit statuses.

A user error is a `ValueError` (as in distilabel): the input or the project is wrong and the message names the
fix. `Unavailable` and `Locked` say "nothing was wrong with what you asked; try again later".
"""

from __future__ import annotations

# sysexits.h codes a scheduler can act on: 69 (EX_UNAVAILABLE) "a server did not answer, retry later",
# 75 (EX_TEMPFAIL) "another run is at work, nothing was done".
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_LOCKED = 0, 1, 2, 69, 75


class SynthloopError(ValueError):
    """A problem with the user's input or project; the message says how to fix it (exit status 2)."""

    exit_code = EXIT_USAGE
    label = "error"


class Unavailable(SynthloopError):
    """A server the run needs did not answer: nothing is lost, and a later run does the work (exit 69)."""

    exit_code = EXIT_UNAVAILABLE
    label = "unavailable"


class Locked(SynthloopError):
    """Another process holds the project's lock; this one did nothing (exit 75)."""

    exit_code = EXIT_LOCKED
    label = "locked"


def _network_types() -> tuple[type, ...]:
    """Other libraries' words for "a server did not answer", imported only when an error needs a status."""
    found: list[type] = [ConnectionError, TimeoutError]
    try:
        import httpx

        found.append(httpx.TransportError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import openai

        found.append(openai.APIConnectionError)  # APITimeoutError is one too
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def exit_code(error: BaseException) -> int:
    """The exit status for an error that ended a command. Our own errors carry theirs; a network error from a
    library is 69; a SynthloopError raised while a server did not answer is 69 too (a client wrapped it);
    anything else is a bug: 1."""
    if isinstance(error, SynthloopError) and type(error).exit_code != EXIT_USAGE:
        return type(error).exit_code
    network = _network_types()
    if isinstance(error, network):
        return EXIT_UNAVAILABLE
    if isinstance(error, SynthloopError):
        # Only the error this one was raised from or while handling: the SDKs' own wrapping, one level deep.
        inner = error.__cause__ or error.__context__
        return EXIT_UNAVAILABLE if isinstance(inner, network) else EXIT_USAGE
    return EXIT_FAILED
