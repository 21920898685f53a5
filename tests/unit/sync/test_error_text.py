"""What a run's error (and a failed record's reason) quotes of a vendor's answer: the status
and the vendor's own error fields, or no more than a short one-line excerpt of a body we
cannot read (sync_worker/connectors/http.py `answer_text`)."""

import json
from collections.abc import Mapping

import httpx
import pytest
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from segments_shared.destinations import MailchimpConfig
from sync_worker.connectors import mailchimp
from sync_worker.connectors.base import AuthenticationFailed, ConnectorError
from sync_worker.connectors.http import DETAILS_CHARS, EXCERPT_CHARS
from sync_worker.execution.preconditions import invalid_config
from tests.fakes import mailchimp as mailchimp_fake
from tests.fakes import sendgrid as sendgrid_fake
from tests.unit.sync.memory_limiter import MemoryLimiter
from tests.unit.sync.vendors import POLICY, mailchimp_connector, sendgrid_connector, vendor_http

# A proxy's error page: many lines, a link carrying a token, far longer than an excerpt.
PAGE = (
    "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n"
    "<p>see https://status.example.com/incident?token=abc123</p>\n"
    + "<p>upstream failed</p>\n" * 500
    + "</body></html>"
)


def answer(status: int, body: str | Mapping[str, object]) -> httpx.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    return httpx.Response(status, text=text)


def quoted(error: str, status: int) -> str:
    prefix = f"HTTP {status}: "
    assert error.startswith(prefix), error
    return error[len(prefix) :]


@pytest.mark.asyncio
async def test_an_unknown_body_is_quoted_as_a_short_excerpt_on_one_line(
    limiter: MemoryLimiter,
) -> None:
    connector = await sendgrid_connector(sendgrid_fake.SendGridState(), limiter)
    await connector.aclose()
    excerpt = quoted(connector.error_text(answer(502, PAGE)), 502)
    assert len(excerpt) <= EXCERPT_CHARS
    assert "\n" not in excerpt
    assert excerpt.startswith("<html> <head><title>502 Bad Gateway</title></head>")
    assert "token=****" in excerpt
    assert "abc123" not in excerpt


@pytest.mark.asyncio
async def test_the_vendors_own_error_fields_are_quoted_within_a_bound(
    limiter: MemoryLimiter,
) -> None:
    connector = await sendgrid_connector(sendgrid_fake.SendGridState(), limiter)
    await connector.aclose()
    one = {"errors": [{"field": "contacts[0].email", "message": "invalid email"}]}
    assert connector.error_text(answer(400, one)) == "HTTP 400: invalid email"
    many = {"errors": [{"message": f"contact {i} is invalid"} for i in range(2000)]}
    details = quoted(connector.error_text(answer(400, many)), 400)
    assert details.startswith("contact 0 is invalid; contact 1 is invalid")
    assert len(details) <= DETAILS_CHARS


@pytest.mark.asyncio
async def test_mailchimp_problem_details_say_what_is_wrong(limiter: MemoryLimiter) -> None:
    state = mailchimp_fake.MailchimpState()
    connector = await mailchimp_connector(state, limiter)
    await connector.aclose()
    problem = {"title": "Invalid Resource", "status": 400, "detail": "The name is too long."}
    assert connector.error_text(answer(400, problem)) == "HTTP 400: The name is too long."
    assert len(quoted(connector.error_text(answer(400, PAGE)), 400)) <= EXCERPT_CHARS


async def always(status: int, scope: Scope, receive: Receive, send: Send) -> None:
    await Response(PAGE, status_code=status, media_type="text/html")(scope, receive, send)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [500, 401])
async def test_a_run_ending_on_an_unknown_body_quotes_an_excerpt(
    limiter: MemoryLimiter, status: int
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await always(status, scope, receive, send)

    http = await vendor_http(
        app, "mailchimp", mailchimp.CAPABILITIES, limiter, base_url="http://mc.test/3.0"
    )
    try:
        with pytest.raises(ConnectorError) as ended:
            await http.request("GET", "/lists", describe="read the lists")
    finally:
        await http.aclose()
    error = str(ended.value)
    if status == 401:
        assert isinstance(ended.value, AuthenticationFailed)
        head = "mailchimp refused the credentials (401) on read the lists: "
    else:
        head = (
            f"mailchimp kept failing after {POLICY.attempts} attempts: read the lists: HTTP 500: "
        )
    assert error.startswith(head), error
    assert len(error) <= len(head) + EXCERPT_CHARS
    assert "\n" not in error
    assert "abc123" not in error


def test_a_stored_configuration_that_no_longer_validates_is_named_without_its_values() -> None:
    with pytest.raises(ValidationError) as invalid:
        MailchimpConfig(api_key="0123456789abcdef-secret", list_id="list1")
    error = invalid_config(invalid.value)
    assert error.startswith("the destination's configuration is invalid (api_key: ")
    assert "0123456789abcdef" not in error
