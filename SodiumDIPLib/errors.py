"""Error types shared by the engine, the CLI and the worker.

InputError is the user's fault (bad file, bad parameter): the CLI exits with status 2 and prints its
message on one line. Everything else is an internal error (exit 1).
"""


class InputError(ValueError):
    """Bad input: the message names what was wrong and what is expected."""


class Cancelled(Exception):
    """Raised inside an optimiser when the caller asked it to stop (the best result so far is kept)."""
