"""Runs dg-locust as a person would (``python -m locust -f locustfile.py ...``) and collects what it left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(
    r"^dg summary: inserted=(\d+) failed=(\d+) in_doubt=(\d+) rows_per_s=([\d.]+) batch_size=(\d+)$", re.M
)


@dataclass
class LocustResult:
    exit_code: int
    stdout: str
    stderr: str
    report: list | None  # the --json-file report, one entry per request name

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def summary(self) -> dict[str, float]:
        found = SUMMARY.findall(self.stdout)
        assert len(found) == 1, f"expected exactly one summary line, got {found}\n{self.output[-3000:]}"
        inserted, failed, in_doubt, rows_per_s, batch_size = found[0]
        return {
            "inserted": int(inserted),
            "failed": int(failed),
            "in_doubt": int(in_doubt),
            "rows_per_s": float(rows_per_s),
            "batch_size": int(batch_size),
        }

    @property
    def reported_rows(self) -> int:
        """Rows Locust counted: the sum of ``total_content_length`` over the JSON report."""
        return sum(entry["total_content_length"] for entry in self.report or [])


def run_locust(args: list[str], tmp_path: Path, *, env: dict | None = None, timeout: float = 120) -> LocustResult:
    report_prefix = tmp_path / "report"
    command = [sys.executable, "-m", "locust", "-f", str(PROJECT_DIR / "locustfile.py"), "--json-file"]
    command += [str(report_prefix), "--prometheus-port", "0", *args]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    environment.update(env or {})
    completed = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )
    report_file = report_prefix.with_suffix(".json")
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return LocustResult(completed.returncode, completed.stdout, completed.stderr, report)
