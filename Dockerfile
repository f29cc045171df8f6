# dg-locust image: the official Locust image plus the pinned requirements and the project.
#
# With no arguments the image runs one headless, standalone test configured only by environment variables, like
# the seed data generator's Kubernetes Job (HOST, ID_START, ID_END, INGEST_SIZE, MODEL_PATH, ...). The --headless
# default lives in CMD, not in LOCUST_HEADLESS, so that any arguments (--master, --worker, ...) replace it:
# a master started with ["--master"] serves the web UI without having to switch headless off again.
#
#   docker build -t dg-locust:0.1.0 .
#   docker run --rm -e HOST=http://cratedb:4200 -e INGEST_SIZE=1000 dg-locust:0.1.0
#   docker run --rm -p 8089:8089 dg-locust:0.1.0 --master -H http://cratedb:4200
#   docker run --rm dg-locust:0.1.0 --worker --master-host <master>

# Keep this tag equal to the locust pin in requirements.txt (tests/test_deploy.py checks it).
FROM locustio/locust:2.47.0

LABEL org.opencontainers.image.title="dg-locust" \
      org.opencontainers.image.description="Locust load test measuring how many time-series rows/s CrateDB ingests" \
      org.opencontainers.image.version="0.1.0"

# Root only for the install, so it works whoever owns the base image's /opt/venv; the image runs as locust.
USER root
COPY requirements.txt /tmp/dg-locust-requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore -r /tmp/dg-locust-requirements.txt \
    && rm /tmp/dg-locust-requirements.txt

# The package itself (with its models as package data), root-owned and read-only for the locust user. A relative
# MODEL_PATH is tried from the working directory, then among the shipped models (the default
# models/temperature.json is one); an absolute MODEL_PATH (the seed mounts /temperature.json) is used as given.
COPY pyproject.toml README.md /tmp/dg-locust-src/
COPY dg_locust/ /tmp/dg-locust-src/dg_locust/
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore --no-deps /tmp/dg-locust-src \
    && rm -rf /tmp/dg-locust-src
# Locust's own entry point (the manifests call `locust`) loads the package through this thin locustfile.
COPY locustfile.py /home/locust/dg-locust/locustfile.py

USER locust
WORKDIR /home/locust

ENV LOCUST_LOCUSTFILE=/home/locust/dg-locust/locustfile.py \
    LOCUST_USERS=4 \
    LOCUST_SPAWN_RATE=4 \
    LOCUST_STOP_TIMEOUT=10

# 8089 web UI and 5557 master/worker come from the base image; 8000 is each process's Prometheus /metrics.
EXPOSE 8000

CMD ["--headless"]
