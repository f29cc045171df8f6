"""dg-locust: a Locust load test that measures CrateDB ingest in rows per second."""
