"""No log line prints a URL's user information or secret query values
(segments_shared/redaction.py, applied by the JSON log formatter to every line)."""

import io
import json
import logging

import pytest

from segments_shared.observability import JsonFormatter
from segments_shared.redaction import redact_urls, strip_user_info


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "POST https://user:s3cret@hooks.example.com/in?token=abc123&page=2 done",
            "POST https://****@hooks.example.com/in?token=****&page=2 done",
        ),
        (
            "GET http://127.0.0.1:9101/3.0/lists?api_key=k-us1&count=10",
            "GET http://127.0.0.1:9101/3.0/lists?api_key=****&count=10",
        ),
        (
            "amqp://guest:guest@localhost:5672/ and postgresql+asyncpg://app:pw@db/segments",
            "amqp://****@localhost:5672/ and postgresql+asyncpg://****@db/segments",
        ),
        (
            "https://s3.example.com/f.csv?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
            "&Expires=60&access_token=t;apikey=k&secret=s&password=p",
            "https://s3.example.com/f.csv?X-Amz-Signature=****&X-Amz-Credential=****"
            "&Expires=60&access_token=****;apikey=****&secret=****&password=****",
        ),
        # Nothing secret: unchanged.
        (
            "https://api.example.com/v3/users/a@b.com?page=2",
            "https://api.example.com/v3/users/a@b.com?page=2",
        ),
        ("no url at all, just a@b.com", "no url at all, just a@b.com"),
    ],
)
def test_urls_are_redacted_in_text(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


def test_a_destination_url_shown_keeps_its_query() -> None:
    assert (
        strip_user_info("https://u:p@crm.example.com/h?token=abc")
        == "https://****@crm.example.com/h?token=abc"
    )
    assert strip_user_info("https://crm.example.com/h") == "https://crm.example.com/h"


def test_no_log_line_prints_a_urls_credentials() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    log = logging.getLogger("tests.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        # As httpx logs every request, with the URL as an argument.
        log.warning(
            'HTTP Request: %s %s "%s"',
            "POST",
            "https://ops:hunter2@crm.example.com/in?token=abc123",
            "HTTP/1.1 200 OK",
            extra={"target": "https://x.example/?api_key=k-us1"},
        )
        try:
            raise RuntimeError("cannot reach amqp://guest:topsecret@broker:5672/")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for secret in ("hunter2", "ops:", "abc123", "k-us1", "topsecret"):
        assert secret not in stream.getvalue(), secret
    first = json.loads(lines[0])
    assert first["message"] == (
        'HTTP Request: POST https://****@crm.example.com/in?token=**** "HTTP/1.1 200 OK"'
    )
    assert first["target"] == "https://x.example/?api_key=****"
    assert "amqp://****@broker:5672/" in json.loads(lines[1])["exception"]
