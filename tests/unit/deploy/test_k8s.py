"""deploy/k8s: the manifests parse, every workload runs the right image target, and its probes,
ports and Prometheus annotations point at the endpoints the service answers (SPEC section 2);
each service has a disruption budget that keeps one pod, segment-api an autoscaler, and the
network policies let through what the services need and nothing else (tests/unit/deploy/
netpol.py evaluates them)."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.netpol import Address, Pod, allows, policy_types, selects
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


def kustomization(documents: dict[Path, list[dict[str, Any]]]) -> dict[str, Any]:
    return documents[K8S_DIR / "kustomization.yaml"][0]


def desired_replicas(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> int:
    """A Deployment's replicas, or its autoscaler's minimum when one scales it."""
    for (kind, _), scaler in objects.items():
        target = scaler["spec"]["scaleTargetRef"] if kind == "HorizontalPodAutoscaler" else None
        if target and target["kind"] == "Deployment" and target["name"] == name:
            return int(scaler["spec"].get("minReplicas", 1))
    return int(objects[("Deployment", name)]["spec"].get("replicas", 1))


def budget_allows(budget: dict[str, Any], replicas: int) -> int:
    """Pods a PodDisruptionBudget lets go at once out of `replicas` healthy ones."""
    spec = budget["spec"]

    def count(value: int | str, round_up: bool) -> int:
        if isinstance(value, int):
            return value
        share = int(value.rstrip("%")) * replicas
        return -(-share // 100) if round_up else share // 100

    if "maxUnavailable" in spec:
        return count(spec["maxUnavailable"], round_up=True)
    return replicas - count(spec["minAvailable"], round_up=True)


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_each_service_has_a_disruption_budget_that_keeps_one_pod_and_lets_drains_through(
    objects: dict[tuple[str, str], dict[str, Any]], name: str
) -> None:
    labels = objects[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
    budgets = [
        budget
        for (kind, _), budget in objects.items()
        if kind == "PodDisruptionBudget" and selects(budget["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1, f"{name}: {len(budgets)} PodDisruptionBudgets select its pods"
    budget = budgets[0]
    assert budget["apiVersion"] == "policy/v1"
    for (kind, other), deployment in objects.items():
        if kind == "Deployment" and other != name:
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert not selects(budget["spec"]["selector"], pod_labels), f"also selects {other}"
    replicas = desired_replicas(objects, name)
    allowed = budget_allows(budget, replicas)
    # Zero would block every node drain for good; all of them would leave nothing running.
    assert 1 <= allowed < replicas, f"{name}: {allowed} of {replicas} may go at once"


def test_segment_api_is_scaled_by_a_cpu_autoscaler(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    scaler = objects[("HorizontalPodAutoscaler", "segment-api")]
    assert scaler["apiVersion"] == "autoscaling/v2"
    target = scaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "segment-api",
    )
    deployment = objects[("Deployment", "segment-api")]
    # A `replicas` in the manifest would undo the autoscaler's choice at every apply.
    assert "replicas" not in deployment["spec"]
    assert scaler["spec"]["minReplicas"] >= 2
    assert scaler["spec"]["maxReplicas"] > scaler["spec"]["minReplicas"]
    container = only_container(deployment)
    resources = [m["resource"] for m in scaler["spec"]["metrics"] if m["type"] == "Resource"]
    assert {resource["name"] for resource in resources} >= {"cpu"}
    for resource in resources:
        if resource["target"]["type"] == "Utilization":
            # Utilization is a share of the request: without one it is never computed.
            assert resource["name"] in container["resources"]["requests"], resource["name"]
            assert 0 < resource["target"]["averageUtilization"] <= 100


# Peers of the services, inside and outside the cluster.
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
ELSEWHERE = Pod("default", {"app": "shop"})
CLUSTER_DNS = Pod("kube-system", {"k8s-app": "kube-dns"})
DATABASE_IN_CLUSTER = Pod("data", {"app": "postgresql"})
DATABASE_OUTSIDE = Address("10.20.0.5")
INTERNET = Address("198.51.100.7")
VENDOR = Address("203.0.113.10")
VENDOR_IPV6 = Address("2001:db8::10")
NOT_VENDORS = (
    Address("10.1.2.3"),
    Address("172.20.0.9"),
    Address("192.168.1.1"),
    Address("169.254.169.254"),
    Address("100.64.0.1"),
    Address("fd00::1"),
)


@pytest.fixture(scope="module")
def namespace(documents: dict[Path, list[dict[str, Any]]]) -> str:
    name = kustomization(documents)["namespace"]
    assert isinstance(name, str)
    return name


@pytest.fixture(scope="module")
def policies(
    objects: dict[tuple[str, str], dict[str, Any]], namespace: str
) -> list[dict[str, Any]]:
    found = [policy for (kind, _), policy in objects.items() if kind == "NetworkPolicy"]
    for policy in found:
        assert policy["apiVersion"] == "networking.k8s.io/v1"
        assert policy["metadata"]["namespace"] == namespace, policy["metadata"]["name"]
    return found


@pytest.fixture(scope="module")
def pods(objects: dict[tuple[str, str], dict[str, Any]], namespace: str) -> dict[str, Pod]:
    """The pod of every workload, as the policies see it."""
    found: dict[str, Pod] = {}
    for (kind, name), workload in objects.items():
        if kind not in ("Deployment", "Job"):
            continue
        ports = {
            port["name"]: int(port["containerPort"])
            for port in only_container(workload).get("ports", [])
            if "name" in port
        }
        labels = workload["spec"]["template"]["metadata"]["labels"]
        found[name] = Pod(namespace, labels, ports)
    assert set(LONG_RUNNING) <= set(found)
    return found


def test_every_pod_is_closed_by_default(
    policies: list[dict[str, Any]], pods: dict[str, Pod]
) -> None:
    closed = [
        policy
        for policy in policies
        if not policy["spec"]["podSelector"]
        and set(policy_types(policy)) == {"Ingress", "Egress"}
        and not policy["spec"].get("ingress")
        and not policy["spec"].get("egress")
    ]
    assert closed, "no policy denies by default"
    for name, pod in pods.items():
        assert not allows(policies, "Ingress", pod, ELSEWHERE, 12345), name
        assert not allows(policies, "Egress", pod, INTERNET, 12345), name


def test_the_api_is_open_to_all_and_the_workers_to_prometheus_alone(
    policies: list[dict[str, Any]], pods: dict[str, Pod]
) -> None:
    api = pods["segment-api"]
    for peer in (INTERNET, ELSEWHERE, PROMETHEUS, pods["sync-worker"]):
        assert allows(policies, "Ingress", api, peer, SERVICES["segment-api"].port or 0), peer
    assert not allows(policies, "Ingress", api, INTERNET, 5432)
    for name in ("sync-worker", "metrics-worker"):
        worker = pods[name]
        port = SERVICES[name].port
        assert port is not None
        assert allows(policies, "Ingress", worker, PROMETHEUS, port), name
        for peer in (INTERNET, ELSEWHERE, api):
            assert not allows(policies, "Ingress", worker, peer, port), (name, peer)
        assert not allows(policies, "Ingress", worker, PROMETHEUS, port + 1000), name
    for name in set(pods) - set(LONG_RUNNING):
        for peer in (INTERNET, ELSEWHERE, PROMETHEUS):
            assert not allows(policies, "Ingress", pods[name], peer, 8000), (name, peer)


def test_every_pod_reaches_dns_and_the_database_and_the_services_the_broker(
    policies: list[dict[str, Any]], pods: dict[str, Pod]
) -> None:
    for name, pod in pods.items():
        for protocol in ("UDP", "TCP"):
            assert allows(policies, "Egress", pod, CLUSTER_DNS, 53, protocol), (name, protocol)
        for database in (DATABASE_OUTSIDE, DATABASE_IN_CLUSTER):
            assert allows(policies, "Egress", pod, database, 5432), (name, database)
        assert allows(policies, "Egress", pod, DATABASE_IN_CLUSTER, 6432), name  # PgBouncer
        reaches_broker = allows(policies, "Egress", pod, INTERNET, 5672)
        assert reaches_broker == (name in LONG_RUNNING), name
        assert not allows(policies, "Egress", pod, INTERNET, 8080), name


def test_only_sync_worker_reaches_vendors_and_only_over_https_to_public_addresses(
    policies: list[dict[str, Any]], pods: dict[str, Pod]
) -> None:
    worker = pods["sync-worker"]
    for vendor in (VENDOR, VENDOR_IPV6):
        assert allows(policies, "Egress", worker, vendor, 443), vendor
    assert not allows(policies, "Egress", worker, VENDOR, 80)
    for address in NOT_VENDORS:
        assert not allows(policies, "Egress", worker, address, 443), address
    for name, pod in pods.items():
        if name != "sync-worker":
            assert not allows(policies, "Egress", pod, VENDOR, 443), name
