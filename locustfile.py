"""dg-locust: how many time-series rows per second does a CrateDB cluster ingest?

Run: locust -f locustfile.py -H http://localhost:4200, or, installed, dg-locust -H http://localhost:4200
(options: see README.md). Everything lives in the package: this file only loads dg_locust/locustfile.py.
"""

from dg_locust.locustfile import QueryUser, TemperatureUser  # noqa: F401  (Locust finds the user classes here)
