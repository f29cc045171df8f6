"""dg-locust's locustfile: registers the options and the listeners, and declares the user classes.

The ``dg-locust`` command runs Locust with this file; ``locust -f locustfile.py`` from the repository loads the same
classes and listeners through the thin ``locustfile.py`` there. Listeners attach to the environment's own events at
``init`` (the run context first, so its ``test_start`` and ``test_stop`` run before the others', then the capacity
finder, whose result the checks read at ``test_stop``).
"""

from locust import events

from dg_locust.capacity_shape import CapacityShape
from dg_locust.checks import RunChecks
from dg_locust.history import HistoryRecorder
from dg_locust.metrics import DgMetrics
from dg_locust.options import add_options
from dg_locust.report import RunReport
from dg_locust.run import RunContext
from dg_locust.status import RunStatus
from dg_locust.users import CrateIngestUser, CrateQueryUser, QueryUserSelection
from dg_locust.webui import QueriesTab, RowsTab


@events.init_command_line_parser.add_listener
def _register_options(parser, **_kwargs):
    add_options(parser)


@events.init.add_listener
def _register_listeners(environment, runner, **_kwargs):
    context = RunContext.attach(environment, runner)
    CapacityShape.register(environment, context)  # before the checks: --min-rows-per-sec judges its result
    DgMetrics.register(environment, context)
    status = RunStatus.register(environment, context)
    history = HistoryRecorder.register(environment, context).history
    RowsTab.register(environment, context, history, status)
    QueriesTab.register(environment, context)
    RunChecks.register(environment, context)
    RunReport.register(environment, context, history, status)
    QueryUserSelection.register(environment, context)


class TemperatureUser(CrateIngestUser):
    """Sensors of the --model file (by default the shipped temperature model: a fridge temperature and a button)."""


class QueryUser(CrateQueryUser):
    """Time-series queries against the table TemperatureUser writes; opt-in: --query-users N (see users.py)."""
