"""deploy/ describes what the code runs: one image, four real services, probes on the real health routes, and
Kubernetes objects an operator can drain, scale and roll without losing a service. Static: no Docker, no cluster."""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from services.feedback.settings import Settings as FeedbackSettings
from services.lead_intake.settings import Settings as LeadIntakeSettings
from services.routing.settings import Settings as RoutingSettings
from services.scoring.settings import Settings as ScoringSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRET_EXAMPLE = "secret.example.yaml"
# The services' own defaults are the one source of truth for their ports.
PORTS = {
    settings.model_fields["service_name"].default: settings.model_fields["port"].default
    for settings in (LeadIntakeSettings, ScoringSettings, RoutingSettings, FeedbackSettings)
}
SERVICES = sorted(PORTS)
# Services that consume topics: their replicas beyond the partition count would idle.
CONSUMERS = sorted(name for name in SERVICES if (ROOT / "services" / name / "handlers.py").exists())
MULTI_REPLICA = ("scoring", "routing")


def service_packages() -> list[str]:
    """Every package under services/ runnable as `python -m services.<name>`."""
    return sorted(path.parent.name for path in (ROOT / "services").glob("*/__main__.py"))


def k8s_name(service: str) -> str:
    """Kubernetes object names are DNS labels: lead_intake -> lead-intake."""
    return service.replace("_", "-")


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def objects(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object kustomization.yaml applies."""
    return [doc for resource in kustomization["resources"] for doc in load_documents(K8S / resource)]


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name."""
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a label selector matches a set of labels."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """The one container of a Baton pod."""
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


# --- the services themselves ----------------------------------------------------------------------------------


def test_the_settings_name_every_runnable_service() -> None:
    assert SERVICES == service_packages() == ["feedback", "lead_intake", "routing", "scoring"]


# --- Kubernetes -------------------------------------------------------------------------------------------------


def test_every_manifest_parses_and_is_applied_except_the_secret_example(kustomization: dict[str, Any]) -> None:
    files = sorted(path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    for name in files:
        for doc in load_documents(K8S / name):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
    assert sorted(kustomization["resources"]) == sorted(set(files) - {SECRET_EXAMPLE})


def test_the_namespace_is_the_one_everything_lands_in(
    kustomization: dict[str, Any], objects: list[dict[str, Any]]
) -> None:
    assert list(of_kind(objects, "Namespace")) == [kustomization["namespace"]]


def test_each_service_has_a_deployment_service_pdb_and_hpa(objects: list[dict[str, Any]]) -> None:
    expected = sorted(k8s_name(service) for service in SERVICES)
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert sorted(of_kind(objects, kind)) == expected, kind


@pytest.mark.parametrize("service", SERVICES)
def test_the_deployment_runs_the_real_service_module(service: str, objects: list[dict[str, Any]]) -> None:
    container = container_of(of_kind(objects, "Deployment")[k8s_name(service)])
    assert container["command"] == ["python", "-m", f"services.{service}"]
    assert service in service_packages()
    assert [port["containerPort"] for port in container["ports"]] == [PORTS[service]]
    assert container["image"].split(":")[0] == "baton" and not container["image"].endswith(":latest")


@pytest.mark.parametrize("service", SERVICES)
def test_probes_use_readyz_for_readiness_and_healthz_for_liveness(service: str, objects: list[dict[str, Any]]) -> None:
    container = container_of(of_kind(objects, "Deployment")[k8s_name(service)])
    port_names = {port["name"] for port in container["ports"]} | {port["containerPort"] for port in container["ports"]}
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        assert container[probe]["httpGet"]["path"] == path, probe
        assert container[probe]["httpGet"]["port"] in port_names, probe


@pytest.mark.parametrize("service", SERVICES)
def test_pods_run_as_non_root_on_a_read_only_root_with_a_writable_tmp(
    service: str, objects: list[dict[str, Any]]
) -> None:
    pod = of_kind(objects, "Deployment")[k8s_name(service)]["spec"]["template"]["spec"]
    container = container_of(of_kind(objects, "Deployment")[k8s_name(service)])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    tmp = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]


@pytest.mark.parametrize("service", SERVICES)
def test_pods_declare_resources_and_spread_over_nodes(service: str, objects: list[dict[str, Any]]) -> None:
    deployment = of_kind(objects, "Deployment")[k8s_name(service)]
    resources = container_of(deployment)["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[bound].keys(), bound
    pod = deployment["spec"]["template"]["spec"]
    spread = pod.get("topologySpreadConstraints", [])
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread) or "podAntiAffinity" in pod.get(
        "affinity", {}
    )
    for constraint in spread:
        assert selects(constraint["labelSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("service", SERVICES)
def test_service_and_pdb_select_the_deployments_pods(service: str, objects: list[dict[str, Any]]) -> None:
    name = k8s_name(service)
    deployment = of_kind(objects, "Deployment")[name]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    k8s_service = of_kind(objects, "Service")[name]
    assert selects(k8s_service["spec"]["selector"], labels)
    assert [port["port"] for port in k8s_service["spec"]["ports"]] == [PORTS[service]]
    pdb = of_kind(objects, "PodDisruptionBudget")[name]
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)


@pytest.mark.parametrize("service", SERVICES)
def test_the_hpa_scales_the_deployment_on_cpu_and_never_blocks_a_drain(
    service: str, objects: list[dict[str, Any]]
) -> None:
    hpa = of_kind(objects, "HorizontalPodAutoscaler")[k8s_name(service)]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": k8s_name(service)}
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    # minAvailable 1 with a single replica would block every node drain.
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    deployment = of_kind(objects, "Deployment")[k8s_name(service)]
    assert deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("service", MULTI_REPLICA)
def test_scoring_and_routing_run_two_replicas(service: str, objects: list[dict[str, Any]]) -> None:
    assert of_kind(objects, "Deployment")[k8s_name(service)]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("service", CONSUMERS)
def test_consumers_never_scale_past_the_partitions(service: str, objects: list[dict[str, Any]]) -> None:
    """Replicas share one consumer group per service: a replica beyond the partition count gets no partition."""
    config = of_kind(objects, "ConfigMap")["baton-config"]["data"]
    partitions = {int(config[f"BATON_{name.upper()}_TOPIC_PARTITIONS"]) for name in SERVICES}
    assert len(partitions) == 1, "every service creates every topic: they must agree on the partition count"
    assert of_kind(objects, "HorizontalPodAutoscaler")[k8s_name(service)]["spec"]["maxReplicas"] <= partitions.pop()


def test_workloads_read_config_and_secrets_that_exist(objects: list[dict[str, Any]]) -> None:
    config_maps = set(of_kind(objects, "ConfigMap"))
    secrets = set(of_kind(load_documents(K8S / SECRET_EXAMPLE), "Secret"))
    workloads = [*of_kind(objects, "Deployment").values(), *of_kind(objects, "Job").values()]
    for workload in workloads:
        for source in container_of(workload)["envFrom"]:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps
            else:
                assert source["secretRef"]["name"] in secrets


def test_the_config_map_holds_no_secret_and_the_secret_only_placeholders(objects: list[dict[str, Any]]) -> None:
    config = of_kind(objects, "ConfigMap")["baton-config"]["data"]
    assert "KAFKA_BOOTSTRAP_SERVERS" in config
    assert not [key for key in config if re.search(r"DATABASE_URL|PASSWORD|ADMIN_KEY|SECRET", key)]
    secret = of_kind(load_documents(K8S / SECRET_EXAMPLE), "Secret")["baton-secrets"]
    assert set(secret["stringData"]) == {"DATABASE_URL", "BATON_ADMIN_KEY"}
    assert all("REPLACE_ME" in value for value in secret["stringData"].values())
    assert secret["stringData"]["DATABASE_URL"].startswith("postgresql+asyncpg://")


def test_the_migration_job_runs_the_baton_command_from_the_same_image(objects: list[dict[str, Any]]) -> None:
    job = of_kind(objects, "Job")["baton-migrate"]
    container = container_of(job)
    assert container["command"][:2] == ["baton", "migrate"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'baton = "services.cli:main"' in pyproject
    assert container["image"] == container_of(of_kind(objects, "Deployment")["routing"])["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_baton_has_a_migrate_command(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["migrate", "--help"])
    assert exit_info.value.code == 0
    assert "--service" in capsys.readouterr().out


# --- compose ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return loaded


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_compose_runs_the_four_services_kafka_and_postgres(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*SERVICES, "kafka", "postgres"}


@pytest.mark.parametrize("service", SERVICES)
def test_compose_services_come_from_the_one_image_and_wait_for_their_dependencies(
    service: str, compose: dict[str, Any]
) -> None:
    spec = compose["services"][service]
    assert spec["environment"]["BATON_SERVICE"] == service
    # compose resolves the context from the compose file and the Dockerfile from the context.
    assert (DEPLOY / spec["build"]["context"] / spec["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (DEPLOY / spec["build"]["context"]).resolve() == ROOT
    assert {spec["image"] for spec in (compose["services"][name] for name in SERVICES)} == {spec["image"]}
    assert spec["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert "/readyz" in spec["healthcheck"]["test"]
    assert spec["ports"] == [f"127.0.0.1:{PORTS[service]}:{PORTS[service]}"]
    assert spec["read_only"] is True and "/tmp" in spec["tmpfs"]


def test_compose_kafka_runs_kraft_with_consistent_listeners(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = {key: str(value) for key, value in kafka["environment"].items()}
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not [key for key in env if "ZOOKEEPER" in key]

    def names(listeners: str) -> set[str]:
        return {listener.split("://")[0] for listener in listeners.split(",")}

    protocols = {pair.split(":")[0] for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert names(env["KAFKA_ADVERTISED_LISTENERS"]) | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]} == names(
        env["KAFKA_LISTENERS"]
    )
    assert names(env["KAFKA_LISTENERS"]) <= protocols
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in names(env["KAFKA_ADVERTISED_LISTENERS"])
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert len(env["CLUSTER_ID"]) == 22  # a base64 UUID
    assert "healthcheck" in kafka


def test_compose_postgres_and_the_env_example_agree(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:15(\.\d+)?(-[a-z]+)?", postgres["image"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    env = env_file(DEPLOY / "compose.env.example")
    user, password, database = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    assert env["DATABASE_URL"] == f"postgresql+asyncpg://{user}:{password}@postgres:5432/{database}"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "replace" in env["BATON_ADMIN_KEY"].lower()
    assert len({env[f"BATON_{name.upper()}_TOPIC_PARTITIONS"] for name in SERVICES}) == 1


# --- the image --------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined and comments dropped."""
    lines = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
    logical = ""
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            instruction, _, arguments = logical.strip().partition(" ")
            yield instruction.upper(), arguments.strip()
        logical = ""


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions grouped by build stage (the last is the image)."""
    grouped: list[list[tuple[str, str]]] = [[]]
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            grouped.append([])
        grouped[-1].append((instruction, arguments))
    return grouped


def test_the_image_is_multi_stage_on_pinned_slim_python() -> None:
    args = dict(arguments.split("=", 1) for instruction, arguments in stages()[0] if instruction == "ARG")
    bases = [arguments.split()[0] for stage in stages()[1:] for instruction, arguments in stage[:1]]
    resolved = [re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], base) for base in bases]
    assert len(resolved) >= 2
    assert resolved[-1] == "python:3.11-slim"
    for image in resolved:
        assert ":" in image and not image.endswith(":latest"), image


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck_on_healthz() -> None:
    final = stages()[-1]
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    healthchecks = [arguments for instruction, arguments in final if instruction == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]


def test_the_final_stage_installs_no_build_tools() -> None:
    runs = " ".join(arguments for instruction, arguments in stages()[-1] if instruction == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|\bmake\b", runs)
    assert "--no-index" in runs  # only the builder's wheels


def test_every_file_the_image_copies_exists_and_passes_the_dockerignore() -> None:
    sources = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "COPY" and "--from=" not in arguments:
            words = [word for word in shlex.split(arguments) if not word.startswith("--")]
            sources += words[:-1]
    assert sources
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, source


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("baton_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_entrypoint_and_healthcheck_know_every_service_and_its_port() -> None:
    assert load_healthcheck().DEFAULT_PORTS == PORTS
    entrypoint = (DEPLOY / "docker-entrypoint.sh").read_text(encoding="utf-8")
    listed = re.search(r'^services="([^"]+)"', entrypoint, re.MULTILINE)
    assert listed is not None and sorted(listed.group(1).split()) == SERVICES


def test_the_healthcheck_finds_the_service_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    healthcheck = load_healthcheck()
    monkeypatch.setenv("BATON_SERVICE", "routing")
    assert healthcheck.running_service() == "routing"


def test_no_deployment_file_pulls_a_latest_tag() -> None:
    files = [DEPLOY / "Dockerfile", DEPLOY / "compose.yaml", *sorted(K8S.glob("*.yaml"))]
    assert not [path.name for path in files if re.search(r":latest\b", path.read_text(encoding="utf-8"))]
