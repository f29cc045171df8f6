"""The ``dg-locust`` command (and ``python -m dg_locust``): Locust with dg-locust's packaged locustfile.

``dg-locust ARGS`` is ``locust -f <the package's locustfile.py> ARGS``: every Locust and dg-locust option works as
with ``locust``. A ``-f`` / ``--locustfile`` among the arguments, or ``LOCUST_LOCUSTFILE`` in the environment, wins
(for a locustfile of your own that subclasses ``CrateIngestUser``).
"""

from __future__ import annotations

import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)

import os
import sys
from pathlib import Path

PACKAGED_LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def locust_arguments(args: list[str], environ: dict[str, str]) -> list[str]:
    """The arguments for Locust: ``args`` with the packaged locustfile unless one was chosen."""
    chosen = environ.get("LOCUST_LOCUSTFILE") or any(
        arg in ("-f", "--locustfile") or arg.startswith("--locustfile=") or (arg.startswith("-f") and len(arg) > 2)
        for arg in args
    )
    return list(args) if chosen else ["-f", str(PACKAGED_LOCUSTFILE), *args]


def main(argv: list[str] | None = None) -> None:
    from locust.main import main as locust_main

    args = sys.argv[1:] if argv is None else argv
    sys.argv = ["dg-locust", *locust_arguments(args, dict(os.environ))]
    locust_main()


if __name__ == "__main__":
    main()
