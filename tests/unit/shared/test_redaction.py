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
        ("https://h/x?email=a@b.c", "https://h/x?email=a@b.c"),
        (
            "http://localhost:9101/3.0/users/a@b.com?page=2",
            "http://localhost:9101/3.0/users/a@b.com?page=2",
        ),
        ("file:///tmp/a@b and http://[::1]:80/a@b", "file:///tmp/a@b and http://[::1]:80/a@b"),
        # Passwords pasted unencoded: every character of them masked.
        ("postgresql+asyncpg://app:p@ss@db/x", "postgresql+asyncpg://****@db/x"),
        ("amqp://u:pa/ss@h/", "amqp://****@h/"),
        ("https://u:p?w@h/", "https://****@h/"),
        ("https://u:p#w@h/x?page=2", "https://****@h/x?page=2"),
        ("https://u:p:w@h:8443/x", "https://****@h:8443/x"),
        ("amqp://u:a/b?c#d@e:f@h/vhost", "amqp://****@h/vhost"),
        ("https://:p@h/ and https://u:@h/", "https://****@h/ and https://****@h/"),
        # User information and an @ in the path or query: the host stays.
        ("https://u:p@h/users/a@b.com?e=c@d.e", "https://****@h/users/a@b.com?e=c@d.e"),
        ("amqp://u:pa/ss@h/x?email=a@b.c", "amqp://****@h/x?email=a@b.c"),
        # Several URLs in one line, a list of broker nodes, a URL in another's query.
        (
            "from https://a:b@h1/x to 'postgresql://c:d@e@h2/db', \"amqp://f:g@h3\"",
            "from https://****@h1/x to 'postgresql://****@h2/db', \"amqp://****@h3\"",
        ),
        (
            "amqp://u:p@h1:5672/,amqp://u:p@h2:5672/",
            "amqp://****@h1:5672/,amqp://****@h2:5672/",
        ),
        (
            "amqps://u:p@ss@h1,amqps://v:q/r@h2:5671,amqps://h3",
            "amqps://****@h1,amqps://****@h2:5671,amqps://h3",
        ),
        (
            "https://h/login?next=https://u:p@in/x?token=t",
            "https://h/login?next=https://****@in/x?token=****",
        ),
        # A token in the fragment (OAuth's implicit flow).
        ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=****&state=1"),
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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@ss@h/x", "https://****@h/x"),
        ("https://u:pa/ss@h/x?token=abc", "https://****@h/x?token=abc"),
        ("https://u:p?w@h/", "https://****@h/"),
        ("https://u:p#w@h/", "https://****@h/"),
        ("https://u:p@h/users/a@b.com", "https://****@h/users/a@b.com"),
        ("https://h/x?email=a@b.c", "https://h/x?email=a@b.c"),
        ("https://h:8443/users/a@b.com", "https://h:8443/users/a@b.com"),
    ],
)
def test_a_password_is_masked_whole_whatever_it_holds(url: str, shown: str) -> None:
    assert strip_user_info(url) == shown


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
