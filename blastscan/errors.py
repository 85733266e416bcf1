"""The one error class for expected failures (bad input, missing weights, empty dataset).

The CLI turns a :class:`BlastscanError` into a single line ``error: <what>: <why>`` and a non-zero
exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BlastscanError(Exception):
    """An expected failure a user can act on.

    Parameters
    ----------
    what : str
        The thing that is wrong, usually a file or option (``"data/x.png"``, ``"--features"``).
    why : str
        What is wrong with it and, where possible, how to fix it.
    """

    def __init__(self, what: str, why: str | None = None):
        self.what = str(what)
        self.why = why
        super().__init__(self.what if why is None else f"{self.what}: {why}")
