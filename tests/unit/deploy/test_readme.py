"""What the README promises a newcomer about settings and `make run`, held to the files that
make it true: .env.example, the settings classes and deploy/run-local.sh."""

from collections import Counter

from tests.unit.deploy.sources import (
    SERVICES,
    env_example,
    readme_settings,
    run_local_defaults,
    settings_variables,
)

# The dev servers of the usual frontend tool chains: React and Next.js, Vite, Angular, and
# 8080 (Vue CLI, webpack-dev-server and many others), by name and by address.
LOCAL_FRONTEND_ORIGINS = {
    f"http://{host}:{port}"
    for host in ("localhost", "127.0.0.1")
    for port in (3000, 5173, 4200, 8080)
}


def test_readme_lists_every_setting_of_env_example_once() -> None:
    listed = readme_settings()
    twice = [name for name, count in Counter(listed).items() if count > 1]
    assert not twice, f"the README's settings table lists {twice} more than once"
    missing = set(env_example()) - set(listed)
    assert not missing, f"the README's settings table (## Configuration) lacks {sorted(missing)}"
    read: set[str] = set()
    for service in SERVICES.values():
        read |= set(settings_variables(service.settings))
    unknown = set(listed) - read
    assert not unknown, f"the README lists settings no service reads: {sorted(unknown)}"


def test_make_run_allows_the_usual_local_frontend_origins() -> None:
    origins = set(run_local_defaults()["SEGMENTS_CORS_ORIGINS"].split(","))
    assert origins == LOCAL_FRONTEND_ORIGINS
