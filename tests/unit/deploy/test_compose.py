"""docker-compose.yml, deploy/Dockerfile and .env.example agree with what the services are:
their console scripts, the variables they read, the ports they listen on, the endpoints they
answer (SPEC section 2)."""

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from segments_shared.bus.addresses import parse_broker_addresses
from tests.unit.deploy.sources import (
    DOCKERFILE,
    DOCUMENTED_VARIABLES,
    LONG_RUNNING,
    ROOT,
    SERVICES,
    Dockerfile,
    compose_command,
    compose_environment,
    console_scripts,
    env_example,
    interpolate,
    load_compose,
    load_dockerfile,
    settings_variables,
    workspace_manifests,
)

INFRASTRUCTURE = ("postgres", "rabbitmq")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return load_dockerfile()


def container_ports(service: dict[str, Any]) -> dict[int, str]:
    """Published container ports and the host side each is published on."""
    published: dict[int, str] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published[int(entry["target"])] = str(entry.get("published", ""))
        else:
            *host, container = interpolate(str(entry)).split(":")
            published[int(container.split("/")[0])] = ":".join(host)
    return published


def healthcheck_command(service: dict[str, Any]) -> str:
    check = service.get("healthcheck")
    assert check, "no health check"
    assert not check.get("disable"), "health check disabled"
    test = check["test"]
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), f"health check test must start with CMD: {test}"
    return " ".join(str(word) for word in test[1:])


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    depends_on = service.get("depends_on", {})
    if isinstance(depends_on, list):  # short form: only waits for the container to start
        return dict.fromkeys(depends_on, "service_started")
    return {
        name: str(spec.get("condition", "service_started")) for name, spec in depends_on.items()
    }


def test_every_expected_service_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = {*INFRASTRUCTURE, *SERVICES} - set(services)
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_command_is_a_declared_console_script(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, name: str
) -> None:
    command = compose_command(services[name], dockerfile)
    scripts = console_scripts()
    assert command, f"{name} runs no command"
    assert command[0] in scripts, f"{name} runs {command[0]!r}, not one of {sorted(scripts)}"
    assert command == SERVICES[name].command


def test_the_console_scripts_the_deployment_relies_on_are_declared() -> None:
    scripts = console_scripts()
    for name in ("segment-api", "sync-worker", "metrics-worker", "segments-db"):
        assert name in scripts, f"no pyproject.toml declares the console script {name}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_image_is_built_from_an_existing_dockerfile_target(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, name: str
) -> None:
    build = services[name].get("build")
    assert isinstance(build, dict), f"{name} must build deploy/Dockerfile with a target"
    assert (ROOT / build.get("context", ".")).resolve() == ROOT, "the context is the repo root"
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    stages = sorted(dockerfile.stages)
    assert build["target"] in stages, f"{name} builds {build['target']!r}, not one of {stages}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_published_port_is_the_port_the_service_is_configured_with(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, name: str
) -> None:
    spec = SERVICES[name]
    assert spec.port_variable is not None
    environment = compose_environment(services[name])
    configured = int(environment.get(spec.port_variable, str(spec.port)))
    assert configured == spec.port, f"{name} is moved off its documented port {spec.port}"
    published = container_ports(services[name])
    assert configured in published, f"{name} listens on {configured}, publishes {published}"
    assert published[configured].endswith(str(configured)), "host port differs from the docs"
    target = services[name]["build"]["target"]
    assert dockerfile.exposed(target) == {configured}, f"target {target} EXPOSEs another port"


@pytest.mark.parametrize("name", [*INFRASTRUCTURE, *LONG_RUNNING])
def test_long_running_service_has_a_health_check(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    command = healthcheck_command(services[name])
    if name == "postgres":
        assert "pg_isready" in command
    elif name == "rabbitmq":
        assert re.search(r"rabbitmq-diagnostics\s+(-q\s+)?ping", command)


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_health_check_asks_the_readiness_endpoint_on_the_service_port(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    command = healthcheck_command(services[name])
    # The runtime image is python:slim: no curl, no wget.
    assert not re.search(r"\b(curl|wget)\b", command), command
    assert re.match(r"python3?\s+-c\s", command), f"check with python's urllib: {command}"
    assert "urllib.request" in command
    urls = re.findall(r"https?://[^\s'\"]+", command)
    assert len(urls) == 1, f"one URL expected in {command}"
    url = urlsplit(urls[0])
    assert url.hostname in ("127.0.0.1", "localhost")
    port = compose_environment(services[name]).get(
        str(SERVICES[name].port_variable), str(SERVICES[name].port)
    )
    assert url.port == int(port), f"{name} listens on {port}, its check asks {url.port}"
    assert url.path == "/readyz"


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
        "rabbitmq": "service_healthy",
    }
    for name, service in services.items():
        for dependency, condition in dependencies(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert dependency in expected, f"{name} should not wait for {dependency}"
            assert condition == expected[dependency], (
                f"{name} waits for {dependency} with {condition}, not {expected[dependency]}"
            )
    assert dependencies(services["migrate"]) == {"postgres": "service_healthy"}
    for name in LONG_RUNNING:
        assert {"migrate", "rabbitmq"} <= set(dependencies(services[name])), name


def test_restart_policies(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), name
    # `no` unquoted is YAML's false; compose wants the string.
    assert services["migrate"].get("restart", "no") in ("no", "on-failure")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_environment_holds_only_documented_variables_the_service_reads(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    environment = compose_environment(services[name])
    reads = settings_variables(SERVICES[name].settings)
    for variable in environment:
        assert variable in DOCUMENTED_VARIABLES, f"{name} sets undocumented {variable}"
        assert variable in reads, f"{name} does not read {variable}"


def test_services_share_one_database_broker_and_secret(
    services: dict[str, dict[str, Any]],
) -> None:
    environments = {name: compose_environment(services[name]) for name in SERVICES}
    database = environments["migrate"]["SEGMENTS_DATABASE_URL"]
    assert urlsplit(database).hostname == "postgres", "the database is the postgres service"
    for name in LONG_RUNNING:
        environment = environments[name]
        assert environment["SEGMENTS_DATABASE_URL"] == database, f"{name} uses another database"
        assert urlsplit(environment["SEGMENTS_AMQP_URL"]).hostname == "rabbitmq", name
    # What segment-api encrypts, sync-worker must decrypt.
    secret = environments["segment-api"].get("SEGMENTS_SECRET_KEY")
    assert secret, "segment-api needs SEGMENTS_SECRET_KEY to accept destinations"
    assert environments["sync-worker"].get("SEGMENTS_SECRET_KEY") == secret
    assert environments["segment-api"].get("SEGMENTS_BOOTSTRAP_API_KEY")
    prefixes = {environments[name].get("SEGMENTS_BUS_PREFIX", "segments") for name in LONG_RUNNING}
    assert len(prefixes) == 1, f"the services must share one bus prefix, not {prefixes}"


def test_infrastructure_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("rabbitmq", "/var/lib/rabbitmq")):
        mounts = {
            str(volume).split(":")[1]: str(volume).split(":")[0]
            for volume in compose["services"][name].get("volumes", [])
        }
        assert path in mounts, f"{name} keeps no data volume at {path}"
        assert mounts[path] in declared, f"{name}'s {mounts[path]} is not a named volume"


def test_image_installs_the_locked_workspace_as_a_non_root_user(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    syncs = [
        (stage, index)
        for stage in dockerfile.stages.values()
        for index, (keyword, rest) in enumerate(stage.instructions)
        if keyword == "RUN" and "uv sync" in rest
    ]
    assert syncs, "the image installs nothing with uv"
    for stage, index in syncs:
        assert "--locked" in stage.instructions[index][1], "install exactly what uv.lock pins"
        assert "--no-dev" in stage.instructions[index][1], "no test tools in the image"
    # The first `uv sync --locked` checks the lock against every member's manifest: all of them
    # must have been copied in by then.
    stage, first = syncs[0]
    copied = {
        source.rstrip("/")
        for keyword, rest in stage.instructions[:first]
        if keyword == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
        if not source.startswith("--")
    }
    for manifest in ["pyproject.toml", "uv.lock", *workspace_manifests()]:
        assert manifest in copied, f"deploy/Dockerfile does not COPY {manifest} before uv sync"
    for name in SERVICES:
        target = str(services[name]["build"]["target"])
        user = dockerfile.last(target, "USER")
        assert user is not None, f"target {target} runs as root"
        assert user.split(":")[0] not in ("root", "0"), f"target {target} runs as root"


def test_env_example_lists_every_variable_with_its_default() -> None:
    listed = env_example()
    missing = DOCUMENTED_VARIABLES - set(listed)
    assert not missing, f".env.example lacks {sorted(missing)}"
    read: dict[str, str | None] = {}
    for service in SERVICES.values():
        read.update(settings_variables(service.settings))
    unknown = set(listed) - set(read)
    assert not unknown, f".env.example lists variables no service reads: {sorted(unknown)}"
    undocumented = set(read) - set(listed)
    assert not undocumented, f"document {sorted(undocumented)} in .env.example"
    for variable, value in listed.items():
        default = read[variable]
        if default is None:  # unset by default: shown commented out, never as an empty value
            assert value is None, f"{variable} is unset by default: comment it out"
        else:
            assert value == default, f"{variable}: .env.example says {value!r}, default {default!r}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("${UNSET_VARIABLE:-fallback}", "fallback"),
        ("${UNSET_VARIABLE-fallback}", "fallback"),
        ("${UNSET_VARIABLE:+other}", ""),
        ("a${UNSET_VARIABLE}b$$c", "ab$c"),
    ],
)
def test_interpolation_reads_values_the_way_compose_does(value: str, expected: str) -> None:
    assert interpolate(value) == expected


CLUSTER_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
CLUSTER_CONF = ROOT / "deploy" / "rabbitmq" / "cluster.conf"


def in_profile(service: dict[str, Any], profile: str) -> bool:
    return profile in (service.get("profiles") or [])


def rabbitmq_conf(text: str) -> dict[str, str]:
    """RabbitMQ's sysctl-like format: `key = value`, `#` comments."""
    settings = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_the_cluster_profile_is_three_rabbitmq_nodes_that_find_each_other(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    clustered = sorted(name for name, service in services.items() if in_profile(service, "cluster"))
    assert clustered == list(CLUSTER_NODES)
    for name in (*INFRASTRUCTURE, *SERVICES):  # a plain `docker compose up` is unchanged
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    nodes = {name: services[name] for name in CLUSTER_NODES}
    hostnames = {name: node.get("hostname") for name, node in nodes.items()}
    assert hostnames == {name: name for name in CLUSTER_NODES}, "a stable node name each"
    cookies = {compose_environment(node).get("RABBITMQ_ERLANG_COOKIE") for node in nodes.values()}
    assert len(cookies) == 1, "one shared cookie"
    assert cookies.pop(), "a cookie set"
    published = set()
    declared = set(compose.get("volumes") or {})
    for name, node in nodes.items():
        assert str(node["image"]).startswith("rabbitmq:"), name
        assert re.search(r"rabbitmq-diagnostics\s+(-q\s+)?ping", healthcheck_command(node))
        mounts = {
            str(volume).split(":")[1]: str(volume).split(":")[0] for volume in node["volumes"]
        }
        assert mounts["/var/lib/rabbitmq"] in declared, f"{name} keeps no named data volume"
        conf = [source for target, source in mounts.items() if target.startswith("/etc/rabbitmq/")]
        assert [(ROOT / source).resolve() for source in conf] == [CLUSTER_CONF], name
        ports = container_ports(node)
        assert ports[5672].startswith("127.0.0.1:"), f"{name}: AMQP on loopback only"
        published.add(ports[5672])
    assert len(published) == 3, "each node on a host port of its own"
    data = {str(nodes[name]["volumes"][0]).split(":")[0] for name in CLUSTER_NODES}
    assert len(data) == 3, "each node keeps its own data"

    settings = rabbitmq_conf(CLUSTER_CONF.read_text())
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {v for k, v in settings.items() if k.startswith("cluster_formation.classic_config.")}
    assert listed == {f"rabbit@{hostname}" for hostname in hostnames.values()}


def test_the_services_can_be_pointed_at_the_cluster(
    services: dict[str, dict[str, Any]],
) -> None:
    """By SEGMENTS_COMPOSE_AMQP_URL, with the URL docs/operations.md gives, which names every
    node of the profile."""
    for name in LONG_RUNNING:
        raw = str(services[name]["environment"]["SEGMENTS_AMQP_URL"])
        assert raw.startswith("${SEGMENTS_COMPOSE_AMQP_URL:-"), name
    operations = (ROOT / "docs" / "operations.md").read_text()
    documented = re.findall(r"SEGMENTS_COMPOSE_AMQP_URL=(\S+) docker compose", operations)
    assert documented, "docs/operations.md shows no SEGMENTS_COMPOSE_AMQP_URL"
    for url in documented:
        wheres = [address.where for address in parse_broker_addresses(url)]
        assert wheres == [f"{node}:5672" for node in CLUSTER_NODES]
    published = [container_ports(services[node])[5672] for node in CLUSTER_NODES]
    from_host = re.findall(r"(?<![A-Z_])SEGMENTS_AMQP_URL=(\S+) make run", operations)
    assert from_host, "docs/operations.md shows no SEGMENTS_AMQP_URL for `make run`"
    for url in from_host:
        wheres = [address.where for address in parse_broker_addresses(url)]
        assert wheres == published
