"""The Argilla server as synthloop talks to it: the SDK (2.x) imported on first use and quietened, and which of
its errors are worth a retry. `ArgillaLabeler` (synthloop.labelers.argilla) calls through these; so do the
review queue (argilla_queue) and the re-check dataset (recheck), without importing one another.
"""

from __future__ import annotations

import logging

from synthloop.errors import SynthloopError, Unavailable

DEFAULT_URL = "http://localhost:6900"
QUESTION = "label"
DOWN_FOR = 60.0  # seconds a failed server gets one try per call instead of the retries


class ArgillaUnreachable(Unavailable):
    """The server did not answer, even after the retries. A round carries on without it (the loop never waits
    for humans); `review push` and `review pull` stop with this error."""

    def __init__(self, url: str, what: str, tries: int, cause: str):
        self.summary = f"Argilla at {url} did not answer ({what}) after {tries} {'try' if tries == 1 else 'tries'}: {cause}"
        super().__init__(f"{self.summary}. Is the server up (`make argilla`)? Run the command again once it is; "
                         "nothing is stored or pushed twice.")


def sdk():
    try:
        import argilla as rg
        from argilla.records import _dataset_records
    except ImportError:
        raise SynthloopError("the argilla SDK is not installed: pip install 'synthloop[argilla]'") from None
    # The SDK draws a tqdm bar per log() call and warns on every lookup that finds nothing; synthloop
    # pushes in chunks under its own progress bar and treats "not found" as "create it".
    if not getattr(_dataset_records, "_synthloop_quiet", False):
        import functools

        import tqdm

        _dataset_records.tqdm = functools.partial(tqdm.tqdm, disable=True)
        _dataset_records._synthloop_quiet = True
        logging.getLogger("argilla.sdk").setLevel(logging.ERROR)
    return rg


def retryable(err: Exception) -> bool:
    import httpx
    from argilla._exceptions import ArgillaAPIError  # the SDK's documented error types live here

    if isinstance(err, httpx.TransportError):
        return True
    # Some SDK errors carry status_code=None (no HTTP response at all): not a server error.
    return isinstance(err, ArgillaAPIError) and (getattr(err, "status_code", None) or 0) >= 500
