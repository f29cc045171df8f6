import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)
