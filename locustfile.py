"""dg-locust: how many time-series rows per second does a CrateDB cluster ingest?

Run: locust -f locustfile.py -H http://localhost:4200  (options: see README.md, or --help once the file loads)
"""

from locust import events

from dg_locust.checks import RunChecks
from dg_locust.metrics import DgMetrics
from dg_locust.options import add_options
from dg_locust.runtime import DgRuntime
from dg_locust.users import CrateIngestUser
from dg_locust.webui import RowsTab


@events.init_command_line_parser.add_listener
def _register_options(parser, **_kwargs):
    add_options(parser)


@events.init.add_listener
def _register_runtime(environment, runner, **_kwargs):
    DgRuntime.register(environment, runner)
    DgMetrics.register(environment)
    RowsTab.register(environment)
    RunChecks.register(environment)


class TemperatureUser(CrateIngestUser):
    """Sensors of the --model file (by default models/temperature.json: a fridge temperature and a button)."""
