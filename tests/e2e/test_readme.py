"""The README's walkthrough ("From a customer to a synced segment"), run as written: its shell
blocks in order, against the three services as processes and the sandbox Mailchimp, with
curl failing on any error status. The outputs the README shows must come out."""

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes import mailchimp
from tests.fakes.server import serve
from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import running_suite
from tests.unit.deploy.sources import run_local_defaults

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## From a customer to a synced segment"
# What the README's commands address under `make run`.
API_ROOT = "http://localhost:8000"
DEV_KEY = "sk_dev_admin_key"
SANDBOX = "127.0.0.1:9101"
STARTS_THE_FAKE = re.compile(r"^\.venv/bin/python -m tests\.fakes mailchimp --port 9101\b")


def walkthrough() -> tuple[str, list[str]]:
    """The section's shell commands as one script, and the blocks of output it shows."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)
    commands = [body for language, body in blocks if language == "sh"]
    shown = [body for language, body in blocks if language == ""]
    assert commands, f"no shell block under {SECTION!r}"
    return "".join(commands), shown


def test_the_walkthrough_starts_the_sandbox_the_way_docs_sync_md_does() -> None:
    script, _ = walkthrough()
    assert any(STARTS_THE_FAKE.match(line) for line in script.splitlines())
    assert SANDBOX in script


@pytest.mark.asyncio
@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")),
    reason="the README's commands use curl and jq",
)
async def test_every_command_of_the_walkthrough_works(
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    script, shown = walkthrough()
    audience = mailchimp.MailchimpState()
    audience.add_list("list1")
    # The services as `make run` configures them, CORS included.
    cors = run_local_defaults()["SEGMENTS_CORS_ORIGINS"]
    env = {**service_env, "SEGMENTS_CORS_ORIGINS": cors}
    async with (
        running_suite(env, tmp_path, request) as suite,
        serve(mailchimp.create_app(audience)) as sandbox_url,
    ):
        lines = [
            line
            for line in script.splitlines()
            if not STARTS_THE_FAKE.match(line)  # started here, on a free port
        ]
        runnable = (
            "\n".join(lines)
            .replace(API_ROOT, suite["segment-api"].url)
            .replace(DEV_KEY, ADMIN_KEY)
            .replace(SANDBOX, sandbox_url.removeprefix("http://"))
            .replace("curl -s ", "curl -s --fail-with-body ")
        )
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            runnable,
            cwd=ROOT,
            env={**os.environ, **service_env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output_bytes, _ = await asyncio.wait_for(shell.communicate(), 120)
        except TimeoutError:
            shell.kill()
            await shell.wait()
            pytest.fail("the walkthrough did not end within 120 s")
    output = output_bytes.decode()
    assert shell.returncode == 0, output

    for block in shown:
        for part in block.split("..."):  # "..." leaves out what changes from run to run
            assert part.strip() in output, f"the README shows\n{block}but gets\n{output}"
    assert '["c-1","c-2"]' in output
    assert 'etag: "2"' in output.lower()
    assert '{"status":"succeeded","stats":{"planned_add":2,' in output
    assert "access-control-allow-origin: http://localhost:5173" in output.lower()
    members = {
        member
        for segment in audience.lists["list1"].segments.values()
        for member in segment.members
    }
    assert members == {"ada@example.com"}  # bob left by the subscription's run
