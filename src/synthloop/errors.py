"""The one exception users see: its message names the problem and the fix."""


class SynthloopError(Exception):
    """A problem with the user's input or project; the message says how to fix it."""
