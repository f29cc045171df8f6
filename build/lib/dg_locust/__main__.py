"""``python -m dg_locust ARGS``: the same as the ``dg-locust`` command (see ``cli``)."""

from dg_locust.cli import main

main()
