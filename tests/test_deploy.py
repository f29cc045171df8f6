import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)
from locust.argument_parser import get_parser

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dg_locust.options import (
    DEFAULT_MODEL,
    OPTION_ENV_VARS,
    SEED_HOST_ENV_VAR,
    Settings,
    add_options,
    resolve_model_path,
)

# Offline checks of how dg-locust is shipped: the Dockerfile, docker-compose.yml and the kustomizations under k8s/.
# Every kustomization is rendered with `kubectl kustomize` and each object is validated against the Kubernetes
# schemas bundled with kubernetes-validate; the compose file against the compose specification bundled with
# check-jsonschema. Nothing here needs a network, a Docker engine or a cluster.

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32.0"
IMAGE = "dg-locust"
LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
WORKLOAD_KINDS = {"Deployment", "Job"}
KUSTOMIZATIONS = sorted(path.parent.relative_to(ROOT).as_posix() for path in K8S.rglob("kustomization.yaml"))
# Included by the others, never applied alone: the kustomizations that include it label what it renders.
BUILDING_BLOCKS = {"k8s/model"}
DEPLOYABLE = [directory for directory in KUSTOMIZATIONS if directory not in BUILDING_BLOCKS]
# The seed's Job (shared/seed/datagenerator-README.md): these variables and nothing else.
SEED_ENV_VARS = {
    "ID_START",
    "ID_END",
    "HOST",
    "INGEST_MODE",
    "INGEST_SIZE",
    "MODEL_PATH",
    "INGEST_DELTA",
    "INGEST_TS",
    "TABLE_NAME",
    "SHARDS",
    "USERNAME",
    "PASSWORD",
}


# ---------------------------------------------------------------------------------------------------- helpers


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, "pyproject.toml has no project version"
    return match.group(1)


def locust_pin() -> str:
    match = re.search(r"^locust==(\S+)\s*$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert match, "requirements.txt must pin locust==<version>"
    return match.group(1)


@functools.cache
def render(directory: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize <directory>` renders (cached: every test reads the same output)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed, so the kustomizations under k8s/ cannot be rendered")
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def invalid(obj: dict) -> str | None:
    """Why Kubernetes would refuse the object (strict: unknown fields too), or None."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{error.message} at {'.'.join(str(part) for part in error.absolute_path) or 'the top'}"
    return None


def workloads(directory: str) -> list[dict]:
    return [obj for obj in render(directory) if obj["kind"] in WORKLOAD_KINDS]


def workload(directory: str, name: str) -> dict:
    found = [obj for obj in workloads(directory) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{directory} renders {len(found)} workloads named {name}"
    return found[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def container(obj: dict) -> dict:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1, f"{obj['kind']}/{obj['metadata']['name']} should run exactly one container"
    return containers[0]


def env_of(cont: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in cont.get("env", [])}


def configmap(directory: str, name: str) -> dict:
    found = [obj for obj in render(directory) if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{directory} renders no ConfigMap {name}"
    return found[0]


def env_var_names(directory: str, cont: dict) -> set[str]:
    """Every variable a container gets: its env entries plus the keys of the ConfigMaps it takes whole."""
    names = set(env_of(cont))
    for source in cont.get("envFrom", []):
        assert "prefix" not in source, "envFrom with a prefix would rename the variables"
        if "configMapRef" in source:
            names |= set(configmap(directory, source["configMapRef"]["name"]).get("data", {}))
        else:
            pytest.fail(f"envFrom {source} is neither checked nor expected")
    return names


def env_value(directory: str, cont: dict, name: str) -> str:
    """The value a container sees for a plain (not secret) variable: env wins over envFrom, as in Kubernetes."""
    if name in env_of(cont):
        return env_of(cont)[name]["value"]
    for source in cont.get("envFrom", []):
        data = configmap(directory, source["configMapRef"]["name"]).get("data", {})
        if name in data:
            return data[name]
    raise AssertionError(f"{directory}: container {cont['name']} does not get {name}")


def dg_containers(directory: str) -> list[tuple[dict, dict]]:
    return [
        (obj, cont)
        for obj in workloads(directory)
        for cont in pod_spec(obj)["containers"]
        if cont["image"].split(":")[0].rsplit("/", 1)[-1] == IMAGE
    ]


@functools.cache
def locust_env_vars() -> frozenset[str]:
    """The environment variables Locust's own argument parser reads, taken from the installed Locust."""
    return frozenset(action.env_var for action in get_parser()._actions if getattr(action, "env_var", None) is not None)


def variables_the_program_reads() -> frozenset[str]:
    return OPTION_ENV_VARS | {SEED_HOST_ENV_VAR} | locust_env_vars()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[key] = value.strip('"')
    return env


def dockerfile_cmd() -> list[str]:
    cmds = [rest for keyword, rest in dockerfile_instructions() if keyword == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    return json.loads(cmds[-1])


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dg_compose_services() -> dict[str, dict]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image", "").split(":")[0] == IMAGE or "build" in service
    }


def parse_like_the_image(monkeypatch, args: list[str], env: dict[str, str]):
    """Parse the way `locust` inside the image does: Locust's parser plus dg-locust's options, with the image's
    ENV and the given environment only, and args as the container's arguments (the image's CMD when empty)."""
    for name in variables_the_program_reads():
        monkeypatch.delenv(name, raising=False)
    for name, value in {**dockerfile_env(), **env}.items():
        monkeypatch.setenv(name, value)
    parser = get_parser()
    add_options(parser)
    return parser.parse_args(args=args or dockerfile_cmd())


# ---------------------------------------------------------------------------------------------------- Kubernetes


def test_every_kustomization_is_found():
    assert {"k8s/base", "k8s/overlays/interactive", "k8s/overlays/headless", "k8s/seed-job"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_renders_objects_valid_for_kubernetes(directory):
    objects = render(directory)
    assert objects, f"{directory} renders nothing"
    problems = [f"{obj['kind']}/{obj['metadata']['name']}: {problem}" for obj in objects if (problem := invalid(obj))]
    assert not problems, f"{directory} renders objects Kubernetes {KUBERNETES_VERSION} would refuse: {problems}"


@pytest.mark.parametrize("path", sorted(K8S.rglob("secret.example.yaml")), ids=lambda p: p.parent.name)
def test_example_secret_is_valid_holds_placeholders_and_is_never_deployed(path):
    secret = yaml.safe_load(path.read_text())
    assert invalid(secret) is None, invalid(secret)
    assert secret["kind"] == "Secret"
    assert all(value.startswith("CHANGE-ME") for value in secret["stringData"].values())
    for directory in KUSTOMIZATIONS:
        assert not [obj for obj in render(directory) if obj["kind"] == "Secret"], f"{directory} deploys a Secret"


@pytest.mark.parametrize("directory", DEPLOYABLE)
def test_every_object_and_pod_carries_the_standard_labels(directory):
    for obj in render(directory):
        labelled = [("", obj["metadata"].get("labels", {}))]
        if obj["kind"] in WORKLOAD_KINDS:
            labelled.append((" pod template", obj["spec"]["template"]["metadata"].get("labels", {})))
        # ConfigMaps serve every component, so only they go without one.
        expected = [label for label in LABELS if obj["kind"] != "ConfigMap" or not label.endswith("/component")]
        for where, labels in labelled:
            missing = [label for label in expected if label not in labels]
            assert not missing, f"{directory}: {obj['kind']}/{obj['metadata']['name']}{where} lacks {missing}"
            assert labels["app.kubernetes.io/name"] == "dg-locust"
            assert labels["app.kubernetes.io/version"] == project_version()
            if "app.kubernetes.io/component" in labels:
                assert labels["app.kubernetes.io/component"] in {"master", "worker", "standalone"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_selectors_match_their_pods_and_leave_out_changing_labels(directory):
    objects = render(directory)
    pods = [obj["spec"]["template"]["metadata"]["labels"] for obj in objects if obj["kind"] in WORKLOAD_KINDS]
    for obj in objects:
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        elif obj["kind"] == "Service":
            selector = obj["spec"]["selector"]
            assert any(selector.items() <= labels.items() for labels in pods), f"Service {obj} selects no pod"
        else:
            continue
        assert "app.kubernetes.io/version" not in selector, "selectors are immutable; a version in them blocks upgrades"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_credentials_come_only_from_secrets(directory):
    for obj, cont in dg_containers(directory):
        env = env_of(cont)
        for name in ("USERNAME", "PASSWORD"):
            assert name in env, f"{directory}: {obj['metadata']['name']} does not set {name}"
            assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{directory}: {name} must come from a Secret"
    for obj in render(directory):
        if obj["kind"] == "ConfigMap":
            assert not {"USERNAME", "PASSWORD"} & set(obj.get("data", {})), "credentials in a ConfigMap"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_containers_have_probes_resources_and_metrics(directory):
    for obj, cont in dg_containers(directory):
        where = f"{directory}: {obj['kind']}/{obj['metadata']['name']}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(cont.get("resources", {}).get(kind, {})), f"{where}: no {kind}"
        assert "readinessProbe" in cont, f"{where}: no readiness probe"
        headless_master = "--headless" in cont.get("args", []) and "--master" in cont.get("args", [])
        # The one exception: a liveness kill of a headless master would lose the run's result.
        assert ("livenessProbe" in cont) != headless_master, f"{where}: liveness probe where it does not belong"
        ports = {port["containerPort"] for port in cont["ports"]}
        assert 8000 in ports, f"{where}: /metrics port 8000 not declared"
        annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", where
        assert annotations.get("prometheus.io/port") == "8000", where
        assert annotations.get("prometheus.io/path") == "/metrics", where
        assert pod_spec(obj)["securityContext"]["runAsNonRoot"] is True, where


def probe_target(cont: dict, probe: str) -> tuple[int, str | None]:
    """(port number, HTTP path or None for TCP) of a probe, with named ports resolved."""
    spec = cont[probe]
    action = spec.get("httpGet") or spec.get("tcpSocket")
    port = action["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in cont["ports"] if p.get("name") == port)
    return port, spec.get("httpGet", {}).get("path")


def test_interactive_master_serves_the_web_ui_and_workers_find_it():
    directory = "k8s/overlays/interactive"
    master = workload(directory, "dg-locust-master")
    assert master["kind"] == "Deployment"
    args = container(master)["args"]
    assert "--master" in args and "--headless" not in args
    assert probe_target(container(master), "readinessProbe") == (8089, "/")
    assert probe_target(container(master), "livenessProbe") == (8089, "/")

    service = next(obj for obj in render(directory) if obj["kind"] == "Service")
    assert {port["port"] for port in service["spec"]["ports"]} == {5557, 8089, 8000}
    worker = workload(directory, "dg-locust-worker")
    assert worker["kind"] == "Deployment" and worker["spec"]["replicas"] >= 1
    worker_args = container(worker)["args"]
    assert "--worker" in worker_args
    assert worker_args[worker_args.index("--master-host") + 1] == service["metadata"]["name"]
    assert probe_target(container(worker), "readinessProbe") == (8000, "/metrics")
    assert probe_target(container(worker), "livenessProbe") == (8000, "/metrics")


def test_headless_run_is_made_of_jobs_that_end_and_never_restart():
    directory = "k8s/overlays/headless"
    assert not [obj for obj in render(directory) if obj["kind"] == "Deployment"], "a Deployment restarts when done"
    master = workload(directory, "dg-locust-master")
    assert master["kind"] == "Job"
    assert master["spec"]["backoffLimit"] == 0
    assert pod_spec(master)["restartPolicy"] == "Never"
    args = container(master)["args"]
    for flag in ("--master", "--headless", "--run-time", "--expect-workers"):
        assert flag in args, f"headless master lacks {flag}"
    assert args[args.index("--stop-timeout") + 1] == "10", "in-flight batches need --stop-timeout 10"
    assert probe_target(container(master), "readinessProbe") == (5557, None)

    expected_workers = int(args[args.index("--expect-workers") + 1])
    worker = workload(directory, "dg-locust-worker")
    assert worker["kind"] == "Job"
    assert pod_spec(worker)["restartPolicy"] == "Never"
    assert worker["spec"]["parallelism"] == worker["spec"]["completions"] == expected_workers
    assert worker["spec"]["backoffLimitPerIndex"] == 0, "a replaced worker would join the run as an extra one"


def test_seed_job_runs_our_image_with_only_the_seeds_environment():
    directory = "k8s/seed-job"
    [job] = workloads(directory)
    cont = container(job)
    assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert "args" not in cont and "command" not in cont, "the seed's Job passes no arguments"
    assert set(env_of(cont)) == SEED_ENV_VARS and "envFrom" not in cont
    assert env_of(cont)["MODEL_PATH"]["value"] == "/temperature.json"
    assert env_of(cont)["USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "datagenerator", "key": "crate_user"}
    assert env_of(cont)["PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "datagenerator", "key": "crate_password"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_model_path_points_at_the_mounted_model(directory):
    model = resolve_model_path(DEFAULT_MODEL).read_text()
    for obj, cont in dg_containers(directory):
        model_path = env_value(directory, cont, "MODEL_PATH")
        volumes = {volume["name"]: volume for volume in pod_spec(obj)["volumes"]}
        for mount in cont["volumeMounts"]:
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                continue
            key = mount["subPath"] if "subPath" in mount else os.path.relpath(model_path, mount["mountPath"])
            target = mount["mountPath"] if "subPath" in mount else f"{mount['mountPath']}/{key}"
            if target == model_path:
                assert configmap(directory, source["name"])["data"][key] == model
                break
        else:
            pytest.fail(f"{directory}: MODEL_PATH {model_path} of {obj['metadata']['name']} is not a mounted model")


def test_k8s_model_is_a_byte_identical_copy_of_the_default_model():
    shipped = resolve_model_path(DEFAULT_MODEL)
    assert (K8S / "model" / "temperature.json").read_bytes() == shipped.read_bytes(), (
        f"k8s/model/temperature.json differs from {shipped}: cp dg_locust/models/temperature.json k8s/model/"
    )


# ---------------------------------------------------------------------------------------------------- environment


def unknown_variables(set_by: dict[str, set[str]]) -> dict[str, list[str]]:
    known = variables_the_program_reads()
    return {where: sorted(names - known) for where, names in set_by.items() if names - known}


def test_every_variable_the_manifests_set_is_one_the_program_reads():
    set_by = {}
    for directory in KUSTOMIZATIONS:
        for obj, cont in dg_containers(directory):
            set_by[f"{directory} {obj['kind']}/{obj['metadata']['name']}"] = env_var_names(directory, cont)
    assert set_by, "no dg-locust container found in k8s/"
    assert not unknown_variables(set_by), f"variables nothing reads (a typo?): {unknown_variables(set_by)}"


def test_every_variable_the_image_and_compose_set_is_one_the_program_reads():
    set_by = {"Dockerfile": set(dockerfile_env())}
    for name, service in dg_compose_services().items():
        set_by[f"docker-compose.yml service {name}"] = set(service.get("environment", {}))
    assert not unknown_variables(set_by), f"variables nothing reads (a typo?): {unknown_variables(set_by)}"


def test_seed_job_environment_parses_into_a_headless_run_with_the_seeds_settings(monkeypatch):
    [job] = workloads("k8s/seed-job")
    env = {name: entry.get("value", "placeholder") for name, entry in env_of(container(job)).items()}
    options = parse_like_the_image(monkeypatch, container(job).get("args", []), env)
    assert options.headless and not options.master and not options.worker
    assert options.locustfile == "/home/locust/dg-locust/locustfile.py"
    assert int(options.num_users) >= 1 and float(options.stop_timeout) == 10
    options.model = str(resolve_model_path(DEFAULT_MODEL))  # /temperature.json exists only inside the pod
    settings = Settings.from_options(options)
    assert (settings.id_start, settings.id_end) == (1, 500)
    assert settings.ingest_mode == "fast" and settings.ingest_size == 2_400_000
    assert settings.ingest_ts == 1600163743.5 and settings.ingest_delta == 0.5
    assert (settings.table, settings.shards) == ("doc.timeseries2", 28)


def test_master_and_worker_arguments_parse_into_the_intended_roles(monkeypatch):
    interactive = container(workload("k8s/overlays/interactive", "dg-locust-master"))
    options = parse_like_the_image(monkeypatch, interactive["args"], {})
    assert options.master and not options.headless, "the interactive master must serve the web UI"

    headless = container(workload("k8s/overlays/headless", "dg-locust-master"))
    options = parse_like_the_image(monkeypatch, headless["args"], {})
    assert options.master and options.headless and options.expect_workers >= 1

    worker = container(workload("k8s/overlays/interactive", "dg-locust-worker"))
    options = parse_like_the_image(monkeypatch, worker["args"], {})
    assert options.worker and options.master_host == "dg-locust-master"


# ---------------------------------------------------------------------------------------------------- Docker


def test_dockerfile_extends_the_pinned_locust_image_and_runs_as_locust():
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms == [f"locustio/locust:{locust_pin()}"], "FROM must be the official image of the pinned locust"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] == "locust"
    copies = " ".join(rest for keyword, rest in instructions if keyword == "COPY")
    for source in ("requirements.txt", "pyproject.toml", "locustfile.py", "dg_locust/"):
        assert re.search(rf"(^|\s){re.escape(source)}\s", copies), f"the Dockerfile does not copy {source}"
    env = dockerfile_env()
    assert env["LOCUST_LOCUSTFILE"] == "/home/locust/dg-locust/locustfile.py"
    assert f"COPY locustfile.py {env['LOCUST_LOCUSTFILE']}" in [f"COPY {rest}" for _, rest in instructions]
    # Headless by CMD, not by LOCUST_HEADLESS: any arguments (--master) must bring the web UI back.
    assert "LOCUST_HEADLESS" not in env and dockerfile_cmd() == ["--headless"]
    assert "8000" in " ".join(rest for keyword, rest in instructions if keyword == "EXPOSE").split()
    assert f'org.opencontainers.image.version="{project_version()}"' in (ROOT / "Dockerfile").read_text()


def test_dockerignore_keeps_the_context_small_but_the_image_complete():
    patterns = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in "#"
    }
    assert {".git", ".venv", "tests", "bench"} <= patterns
    assert not {"requirements.txt", "pyproject.toml", "locustfile.py", "dg_locust"} & patterns
    assert "!README.md" in patterns, "pip install of the package needs README.md (its long description)"


# ---------------------------------------------------------------------------------------------------- compose


def test_compose_file_follows_the_compose_specification():
    # check-jsonschema ships the compose specification's schema: nothing is downloaded.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_a_web_ui_master_scalable_workers_and_a_healthy_cratedb():
    services = compose()["services"]
    cratedb = services["cratedb"]
    assert re.fullmatch(r"crate:6\.\d+\.\d+", cratedb["image"]), "pin a full CrateDB 6.x tag"
    assert "-Cdiscovery.type=single-node" in cratedb["command"]
    assert "http://localhost:4200/" in cratedb["healthcheck"]["test"]

    master, worker = services["master"], services["worker"]
    assert "--master" in master["command"] and "--headless" not in master["command"]
    assert master["command"][master["command"].index("--host") + 1] == "http://cratedb:4200"
    assert "8089:8089" in master["ports"]
    assert master["depends_on"]["cratedb"]["condition"] == "service_healthy"
    assert worker["command"][worker["command"].index("--master-host") + 1] == "master"
    # Fixed host ports or names would stop `docker compose up --scale worker=N`.
    assert "ports" not in worker and "container_name" not in worker
    for service in (master, worker):
        assert "./dg_locust/models:/home/locust/models:ro" in service["volumes"]
        assert service["image"] == f"{IMAGE}:{project_version()}"


def test_compose_monitoring_scrapes_every_dg_locust_process_on_port_8000():
    configs = {name: yaml.safe_load(config["content"]) for name, config in compose()["configs"].items()}
    [job] = configs["prometheus"]["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    assert set(discovery["names"]) == set(dg_compose_services()) and discovery["port"] == 8000
    assert configs["grafana-datasource"]["datasources"][0]["url"] == "http://prometheus:9090"
    services = compose()["services"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
