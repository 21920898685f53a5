"""Keeping credentials carried in URLs out of logs and errors
(docs/vendors.md#urls-in-logs-and-errors).

A URL may hold a password (`https://user:pass@host/`, `amqp://guest:guest@broker/`) or a
token in its query (`?token=...`, `?api_key=...`, a signed link's `signature`). Every log line
and every run error passes URLs through `redact_urls`, which keeps the rest of the URL, so
that the line still says where a request went.
"""

import re

MASK = "****"
# Query parameters whose values are secrets: names that hold any of these words.
SECRET_PARAMETER_WORDS = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "sig",
    "auth",
    "credential",
)

_URL = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)"
    r"(?P<userinfo>[^\s/?#@\"'<>]*@)?"
    r"(?P<host>[^\s/?#\"'<>]*)"
    r"(?P<path>[^\s?#\"'<>]*)"
    r"(?:\?(?P<query>[^\s#\"'<>]*))?"
)


def secret_parameter(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_PARAMETER_WORDS)


def _redact_query(query: str) -> str:
    parts = []
    for part in re.split(r"([&;])", query):
        name, equals, value = part.partition("=")
        if equals and value and secret_parameter(name):
            part = f"{name}={MASK}"
        parts.append(part)
    return "".join(parts)


def _redact(match: re.Match[str]) -> str:
    userinfo = f"{MASK}@" if match["userinfo"] else ""
    query = match["query"]
    rest = "" if query is None else "?" + _redact_query(query)
    return f"{match['scheme']}{userinfo}{match['host']}{match['path']}{rest}"


def redact_urls(text: str) -> str:
    """`text` with the user information and secret query values of every URL in it masked."""
    if "://" not in text:
        return text
    return _URL.sub(_redact, text)


def strip_user_info(url: str) -> str:
    """The URL with its user information masked and nothing else changed (a destination's
    URL as the API shows it: its query is the destination's own setting)."""
    match = _URL.match(url)
    if match is None or not match["userinfo"]:
        return url
    return f"{match['scheme']}{MASK}@{url[match.end('userinfo') :]}"
