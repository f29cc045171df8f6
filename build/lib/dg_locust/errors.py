"""Every error meant for a person, and the exit code each kind of ending gives.

A ``DgError`` carries one line that names the input and says what to change; it is shown as it is, never with a
traceback (tracebacks are for bugs). The exit codes are the process's: Locust exits with
``environment.process_exit_code`` when it is set.

| code | meaning |
|---|---|
| 2 (``EXIT_BAD_INPUT``) | bad input (options, model file), wrong credentials, an unreachable database |
| 3 (``EXIT_THRESHOLD``) | a CI threshold failed (``--min-rows-per-sec``, ``--max-fail-ratio``) |
| 4 (``EXIT_VERIFY``) | ``--verify`` found fewer or more rows in the table than the ledger allows |
| 5 (``EXIT_NO_ROWS``) | the run ended and the database acknowledged no row at all |
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_THRESHOLD = 3
EXIT_VERIFY = 4
EXIT_NO_ROWS = 5


class DgError(ValueError):
    """A problem a person must fix; ``str(error)`` is one line naming it."""


class OptionError(DgError):
    """A bad option value; the message names the option and what to change."""


class ModelError(DgError):
    """A model file that cannot be used; the message names the file, the key and the fix."""
