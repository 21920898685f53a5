"""What the deployment files are checked against, read from the repository itself: the console
scripts the workspace declares, the stages of deploy/Dockerfile, the settings each service
reads (SPEC section 2) and docker-compose.yml's variable interpolation."""

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from metrics_worker.settings import MetricsWorkerSettings
from segment_api.settings import ApiSettings
from segments_shared.config import DatabaseSettings
from sync_worker.settings import SyncWorkerSettings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S_DIR = ROOT / "deploy" / "k8s"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
RUN_LOCAL = ROOT / "deploy" / "run-local.sh"

# SPEC section 2, plus the log level every service reads.
DOCUMENTED_VARIABLES = frozenset(
    {
        "SEGMENTS_DATABASE_URL",
        "SEGMENTS_AMQP_URL",
        "SEGMENTS_BUS_PREFIX",
        "SEGMENTS_API_PORT",
        "SEGMENTS_SYNC_WORKER_PORT",
        "SEGMENTS_METRICS_WORKER_PORT",
        "SEGMENTS_BOOTSTRAP_API_KEY",
        "SEGMENTS_SECRET_KEY",
        "SEGMENTS_CORS_ORIGINS",
        "SEGMENTS_ALLOW_PRIVATE_DESTINATIONS",
        "SEGMENTS_STORE_CURRENCY",
        "SEGMENTS_LOG_LEVEL",
    }
)


@dataclass(frozen=True)
class Service:
    """A service of the suite as the specification describes it."""

    name: str
    command: tuple[str, ...]
    settings: type[BaseSettings]
    port_variable: str | None = None
    port: int | None = None


SERVICES = {
    service.name: service
    for service in (
        Service("segment-api", ("segment-api",), ApiSettings, "SEGMENTS_API_PORT", 8000),
        Service(
            "sync-worker", ("sync-worker",), SyncWorkerSettings, "SEGMENTS_SYNC_WORKER_PORT", 8001
        ),
        Service(
            "metrics-worker",
            ("metrics-worker",),
            MetricsWorkerSettings,
            "SEGMENTS_METRICS_WORKER_PORT",
            8002,
        ),
        Service("migrate", ("segments-db", "upgrade"), DatabaseSettings),
    )
}
LONG_RUNNING = ("segment-api", "sync-worker", "metrics-worker")


def settings_variables(settings: type[BaseSettings]) -> dict[str, str | None]:
    """Each environment variable the settings class reads, with its default (None: unset)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    variables: dict[str, str | None] = {}
    for name, info in settings.model_fields.items():
        default = info.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        variables[(prefix + name).upper()] = None if default is None else str(default)
    return variables


def console_scripts() -> dict[str, str]:
    """Every console script declared by the workspace root and its members."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    files = [ROOT / "pyproject.toml"]
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        files += sorted(ROOT.glob(f"{pattern}/pyproject.toml"))
    scripts: dict[str, str] = {}
    for path in files:
        project = tomllib.loads(path.read_text()).get("project", {})
        scripts.update(project.get("scripts", {}))
    return scripts


def workspace_manifests() -> list[str]:
    """The pyproject.toml of every workspace member, relative to the root."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return sorted(
        str(path.relative_to(ROOT))
        for pattern in root["tool"]["uv"]["workspace"]["members"]
        for path in ROOT.glob(f"{pattern}/pyproject.toml")
    )


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


class Dockerfile:
    """The stages of a Dockerfile and what each inherits from the stage it is built on."""

    def __init__(self, text: str) -> None:
        self.stages: dict[str, Stage] = {}
        joined = re.sub(r"\\\n", " ", text)
        current: Stage | None = None
        for raw in joined.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            keyword = keyword.upper()
            if keyword == "FROM":
                words = [word for word in rest.split() if not word.startswith("--")]
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
                current = Stage(name or f"#{len(self.stages)}", words[0])
                self.stages[current.name] = current
            elif current is not None:
                current.instructions.append((keyword, rest.strip()))

    def chain(self, target: str) -> list[Stage]:
        """The target and the stages it is built on, nearest first."""
        stages = [self.stages[target]]
        while stages[-1].base in self.stages:
            stages.append(self.stages[stages[-1].base])
        return stages

    def last(self, target: str, keyword: str) -> str | None:
        for stage in self.chain(target):
            values = [rest for kw, rest in stage.instructions if kw == keyword]
            if values:
                return values[-1]
        return None

    def command(self, target: str) -> tuple[str, ...]:
        cmd = self.last(target, "CMD")
        assert cmd is not None, f"stage {target} has no CMD"
        assert cmd.startswith("["), f"stage {target}: CMD must be in exec form to get SIGTERM"
        words: list[str] = json.loads(cmd)
        return tuple(words)

    def exposed(self, target: str) -> set[int]:
        return {
            int(port.split("/")[0])
            for stage in self.chain(target)
            for kw, rest in stage.instructions
            if kw == "EXPOSE"
            for port in rest.split()
        }


def load_dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE.read_text())


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


_INTERPOLATION = re.compile(
    r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)"
)


def interpolate(value: str) -> str:
    """What compose makes of a value when none of the variables it names is set."""

    def replace(match: re.Match[str]) -> str:
        if match.group("bare") is not None:
            return ""
        op = match.group("op") or ""
        assert "?" not in op, f"{match.group(0)} is mandatory: compose fails without it"
        return (match.group("arg") or "") if "-" in op else ""

    return _INTERPOLATION.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment (map or list form), interpolated."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {
        str(key): interpolate("" if value is None else str(value)) for key, value in raw.items()
    }


def compose_command(service: dict[str, Any], dockerfile: Dockerfile) -> tuple[str, ...]:
    """The command a compose service runs: its own, or its image target's CMD."""
    command = service.get("command")
    if isinstance(command, str):
        return tuple(shlex.split(command))
    if isinstance(command, list):
        return tuple(str(word) for word in command)
    target = service["build"]["target"]
    return dockerfile.command(str(target))


def env_example() -> dict[str, str | None]:
    """The variables .env.example lists: value, or None where it is shown commented out."""
    listed: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)", line)
        if match:
            name = match.group("name")
            assert name not in listed, f"{name} is listed twice in .env.example"
            listed[name] = None if match.group("comment") else match.group("value")
    return listed


def readme_settings() -> list[str]:
    """The variables the README's settings table lists, one row each, in its order."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names += re.findall(r"`(SEGMENTS_[A-Z0-9_]+)`", cells[1])
    return names


def run_local_defaults() -> dict[str, str]:
    """What deploy/run-local.sh (`make run`) sets each variable to when it is unset or empty:
    its lines `export NAME="${NAME:-value}"`."""
    pattern = re.compile(r'^export (?P<name>\w+)="\$\{(?P=name):-(?P<value>[^}]*)\}"$', re.M)
    return {m.group("name"): m.group("value") for m in pattern.finditer(RUN_LOCAL.read_text())}
