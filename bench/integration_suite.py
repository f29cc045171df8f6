"""Run the integration suite (tests/integration) against a real CrateDB and print its results as a Markdown table.

It runs ``python -m pytest -q tests/integration`` with ``DG_CRATEDB_URL`` (and the optional user, password and node
list) set, collects what each test's runs counted and what the database kept (the ``record_run`` properties of a
JUnit XML report) and the test durations, and prints them with the server's version, its node count and the commit,
ready for bench/RESULTS.md. Run from the repository root:

    python bench/integration_suite.py --url http://127.0.0.1:4200
    python bench/integration_suite.py --url http://127.0.0.1:4200 --user dg --password dgpass
    python bench/integration_suite.py --url http://127.0.0.1:4201 --urls http://127.0.0.1:4201,http://127.0.0.1:4202,http://127.0.0.1:4203
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ElementTree
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def server_version(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["version"]["number"]


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_DIR, text=True, capture_output=True
    ).stdout.strip()
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--urls", default="", help="the cluster's nodes, comma-separated (several-hosts test)")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    args = parser.parse_args()

    environment = {**os.environ, "DG_CRATEDB_URL": args.url, "DG_CRATEDB_URLS": args.urls}
    environment.update({"DG_CRATEDB_USER": args.user, "DG_CRATEDB_PASSWORD": args.password})
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "tests/integration", "-o", "junit_family=xunit1"]
        command += ["--junitxml", str(report)]
        started = time.monotonic()
        completed = subprocess.run(command, cwd=PROJECT_DIR, env=environment, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        print(completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else completed.stderr[-2000:])
        cases = list(ElementTree.parse(report).iter("testcase")) if report.exists() else []

    hosts = args.urls or args.url
    user = args.user or "(none: trusted superuser crate)"
    print(f"\nCrateDB {server_version(args.url)} at {hosts}, user {user}; commit {commit()}; {elapsed:.0f} s in all\n")
    print("| test | outcome | s | run: inserted / failed / in doubt -> stored |")
    print("|---|---|---:|---|")
    for case in cases:
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else "passed"
        if case.find("skipped") is not None:
            outcome = "skipped: " + (case.find("skipped").get("message") or "")
        runs = []
        for prop in case.iter("property"):
            counts = ast.literal_eval(prop.get("value"))
            extra = {k: v for k, v in counts.items() if k not in ("inserted", "failed", "in_doubt", "stored")}
            shown = f"{prop.get('name')}: {counts['inserted']:,} / {counts['failed']:,} / {counts['in_doubt']:,}"
            shown += f" -> {counts['stored']:,}" + "".join(f", {k} {v}" for k, v in extra.items())
            runs.append(shown)
        name = case.get("name").removeprefix("test_")
        print(f"| {name} | {outcome} | {float(case.get('time')):.1f} | {'; '.join(runs)} |")
    sys.exit(completed.returncode)


if __name__ == "__main__":
    main()
