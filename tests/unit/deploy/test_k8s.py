"""deploy/k8s: the manifests parse, every workload runs the right image target, and its probes,
ports and Prometheus annotations point at the endpoints the service answers (SPEC section 2)."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.sources import (
    DOCUMENTED_VARIABLES,
    K8S_DIR,
    LONG_RUNNING,
    SERVICES,
    Dockerfile,
    load_dockerfile,
    settings_variables,
)

SECRET_TEMPLATE = "secret.example.yaml"


def load_documents() -> dict[Path, list[dict[str, Any]]]:
    documents: dict[Path, list[dict[str, Any]]] = {}
    for path in sorted(K8S_DIR.glob("*.y*ml")):
        with path.open() as stream:
            documents[path] = [document for document in yaml.safe_load_all(stream) if document]
    return documents


@pytest.fixture(scope="module")
def documents() -> dict[Path, list[dict[str, Any]]]:
    return load_documents()


@pytest.fixture(scope="module")
def objects(documents: dict[Path, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path, docs in documents.items():
        for document in docs:
            if document["kind"] == "Kustomization":
                continue
            key = (str(document["kind"]), str(document["metadata"]["name"]))
            assert key not in found, f"{key} is defined twice ({path.name})"
            found[key] = document
    return found


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return load_dockerfile()


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"{container['name']} declares no port named {port!r}")


def image_target(image: str) -> str:
    """segments/segment-api:0.1.0 -> segment-api, the deploy/Dockerfile target it is built from."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def test_manifests_parse_into_kubernetes_objects(
    documents: dict[Path, list[dict[str, Any]]],
) -> None:
    assert documents, "deploy/k8s holds no manifests"
    for path, docs in documents.items():
        assert docs, f"{path.name} is empty"
        for document in docs:
            assert isinstance(document, dict), path.name
            assert document.get("apiVersion"), path.name
            assert document.get("kind"), path.name
            if document["kind"] != "Kustomization":
                assert document["metadata"]["name"], path.name


def test_kustomization_applies_everything_but_the_secret_template(
    documents: dict[Path, list[dict[str, Any]]],
) -> None:
    kustomization = documents[K8S_DIR / "kustomization.yaml"][0]
    resources = set(kustomization["resources"])
    for resource in resources:
        assert (K8S_DIR / resource).is_file(), f"kustomization lists missing {resource}"
    manifests = {path.name for path in documents} - {"kustomization.yaml"}
    assert SECRET_TEMPLATE in manifests, "a Secret template is expected"
    assert SECRET_TEMPLATE not in resources, "the template's placeholders must never be applied"
    assert manifests - {SECRET_TEMPLATE} == resources, "a manifest is left out of kustomization"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_deployment_probes_and_scraping_point_at_the_service_port(
    objects: dict[tuple[str, str], dict[str, Any]], name: str
) -> None:
    service = SERVICES[name]
    deployment = objects[("Deployment", name)]
    pod = deployment["spec"]["template"]
    container = only_container(deployment)
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    listens = int(env.get(str(service.port_variable)) or str(service.port))
    assert listens == service.port
    assert listens in {int(port["containerPort"]) for port in container["ports"]}

    expected_paths = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe not in container:
            assert probe == "startupProbe", f"{name} has no {probe}"
            continue
        check = container[probe]["httpGet"]
        assert check["path"] == expected_paths.get(probe, "/healthz"), f"{name} {probe}"
        assert resolve_port(container, check["port"]) == listens, f"{name} {probe} port"

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    assert int(annotations["prometheus.io/port"]) == listens
    # The service may take 30 s to stop after SIGTERM (SPEC section 2).
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_service_routes_to_the_pods_port(
    objects: dict[tuple[str, str], dict[str, Any]], name: str
) -> None:
    deployment = objects[("Deployment", name)]
    service = objects[("Service", name)]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= labels.items(), f"Service {name} selects no pod of its Deployment"
    assert selector.items() <= deployment["spec"]["selector"]["matchLabels"].items()
    container = only_container(deployment)
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert resolve_port(container, target) == SERVICES[name].port


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_workload_runs_its_image_target_as_non_root(
    objects: dict[tuple[str, str], dict[str, Any]], dockerfile: Dockerfile, name: str
) -> None:
    workloads = [
        workload
        for (kind, _), workload in objects.items()
        if kind in ("Deployment", "Job")
        and image_target(only_container(workload)["image"]) in dockerfile.stages
        and dockerfile.command(image_target(only_container(workload)["image"]))
        == SERVICES[name].command
    ]
    assert len(workloads) == 1, f"one workload should run {SERVICES[name].command}"
    workload = workloads[0]
    assert workload["kind"] == ("Job" if name == "migrate" else "Deployment")
    container = only_container(workload)
    if "command" in container or "args" in container:
        run = [*container.get("command", []), *container.get("args", [])]
        assert tuple(run) == SERVICES[name].command
    pod_security = workload["spec"]["template"]["spec"].get("securityContext", {})
    assert pod_security.get("runAsNonRoot") is True
    user = dockerfile.last(image_target(container["image"]), "USER")
    assert user is not None
    assert str(pod_security.get("runAsUser", user.split(":")[0])) == user.split(":")[0]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_environment_comes_from_the_config_map_and_the_secret(
    objects: dict[tuple[str, str], dict[str, Any]],
    documents: dict[Path, list[dict[str, Any]]],
    dockerfile: Dockerfile,
    name: str,
) -> None:
    sources = {
        "configMapKeyRef": objects[("ConfigMap", "segments-config")]["data"],
        "secretKeyRef": documents[K8S_DIR / SECRET_TEMPLATE][0]["stringData"],
    }
    names = {"configMapKeyRef": "segments-config", "secretKeyRef": "segments-secrets"}
    reads = settings_variables(SERVICES[name].settings)
    for (kind, _), workload in objects.items():
        if kind not in ("Deployment", "Job"):
            continue
        container = only_container(workload)
        if dockerfile.command(image_target(container["image"])) != SERVICES[name].command:
            continue
        assert "envFrom" not in container, "give each service only the variables it reads"
        for item in container.get("env", []):
            variable = item["name"]
            assert variable in DOCUMENTED_VARIABLES, f"{name} sets undocumented {variable}"
            assert variable in reads, f"{name} does not read {variable}"
            for ref_kind, ref in item.get("valueFrom", {}).items():
                assert ref_kind in sources, f"{name} {variable}: unexpected {ref_kind}"
                assert ref["name"] == names[ref_kind], f"{name} {variable}"
                assert ref["key"] in sources[ref_kind], f"{name} {variable}: no {ref['key']}"
        assert "SEGMENTS_DATABASE_URL" in {item["name"] for item in container.get("env", [])}
