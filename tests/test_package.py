import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)

import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from cratedb_double import DoubleProcess, count_rows
from support import PROJECT_DIR, SUMMARY, clean_environment

from dg_locust.cli import PACKAGED_LOCUSTFILE, locust_arguments


def test_the_command_adds_the_packaged_locustfile_unless_one_is_chosen():
    assert locust_arguments(["--headless", "-u", "2"], {}) == ["-f", str(PACKAGED_LOCUSTFILE), "--headless", "-u", "2"]
    assert locust_arguments(["-f", "mine.py"], {}) == ["-f", "mine.py"]
    assert locust_arguments(["--locustfile=mine.py"], {}) == ["--locustfile=mine.py"]
    assert locust_arguments(["-fmine.py"], {}) == ["-fmine.py"]
    assert locust_arguments(["--headless"], {"LOCUST_LOCUSTFILE": "mine.py"}) == ["--headless"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel and installed into a folder of its own (its dependencies are this venv's)."""
    work = tmp_path_factory.mktemp("package")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = work / "source"
    shutil.copytree(PROJECT_DIR / "dg_locust", source / "dg_locust", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if built.returncode and "Could not find a version that satisfies the requirement setuptools" in built.stderr:
        pytest.skip("no package index reachable to fetch the build backend (setuptools)")
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("dg_locust-*.whl")
    target = work / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return wheel, target


def test_the_wheel_carries_the_models_and_the_locustfile(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"dg_locust/locustfile.py", "dg_locust/models/temperature.json", "dg_locust/models/factory.json"} <= names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_installed_command_runs_a_test_from_anywhere(installed, tmp_path):
    _, target = installed
    # Run outside the repository, so only the installed copy of dg_locust can be imported.
    env = clean_environment({"PYTHONPATH": str(target)})
    imported = subprocess.run(
        [sys.executable, "-c", "import dg_locust; print(dg_locust.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.startswith(str(target)), imported.stdout
    with DoubleProcess(tmp_path / "crate.sqlite") as double:
        for command in ([str(target / "bin" / "dg-locust")], [sys.executable, "-m", "dg_locust"]):
            args = ["--headless", "-u", "2", "-r", "2", "-t", "3s", "-H", double.url, "--prometheus-port", "0"]
            result = subprocess.run(
                [*command, *args, "--model", "factory"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            (inserted,) = [int(found[0]) for found in SUMMARY.findall(result.stdout)]
            assert inserted > 0
        assert count_rows(double.db_path, "doc.machine_readings") > 0


def test_the_installed_command_reports_bad_input_in_one_line(installed, tmp_path):
    _, target = installed
    result = subprocess.run(
        [str(target / "bin" / "dg-locust"), "--headless", "-H", "http://127.0.0.1:1", "--model", "nosuchmodel"],
        cwd=tmp_path,
        env=clean_environment({"PYTHONPATH": str(target)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "Starting Locust" not in line]
    assert len(lines) == 1 and re.fullmatch(r"dg-locust: model nosuchmodel: file not found; .+", lines[0]), lines
