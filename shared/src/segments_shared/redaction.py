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

# Where a URL starts: a scheme and `://`. The scheme is bounded so that finding one stays
# linear in the line's length.
_SCHEME = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{0,39}://")
# Where it ends: white space, a quote or an angle bracket, or where the next URL starts (a
# comma-separated list of broker URLs, a URL in another's query).
_URL_END = re.compile(r"[\s\"'<>]|" + _SCHEME.pattern)
# The usual end of a URL's authority (host and port, after any user information).
_AUTHORITY_END = re.compile(r"[/?#]")
_PORT = re.compile(r"[0-9]*")


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


def _user_info_end(rest: str) -> int:
    """The index of the `@` ending the user information in `rest` (a URL after its `://`),
    or -1 when it has none.

    People paste passwords unencoded, so a password may hold `@`, `:`, `/`, `?` or `#`, and
    the standard parse (user information ends at the last `@` before the first of `/?#`)
    would print the end of it. Yet an `@` after the host is common and is no password:
    `https://h/users/a@b.com`, `https://h/x?email=a@b.c`. So:

    - an `@` before the first of `/?#` means user information (`app:p@ss@db/x`);
    - otherwise, an `@` further on is taken for the end of a password only when the URL
      opens with `user:` and what follows the colon is not a port (`amqp://u:pa/ss@h/`,
      `https://u:p?w@h/`; but `http://h:8080/users/a@b.com` has none);
    - the user information then runs to the last `@` before the first `/` that follows the
      first `@`: `u:p@ss@db/x@y` keeps `db/x@y`, `u:pa/ss@h/users/a@b.com` keeps
      `h/users/a@b.com`. Without such a `/`, to the last `@` of all (more masked, nothing
      shown that may be a password).

    Ambiguous, and read the way URLs in logs mostly are: a password holding an `@` and then
    a `/` (`u:p@ss/x@h/` reads as host `ss`, like `u:p@h/users/a@b.com`), and a numeric
    password holding `/` (`u:12/34@h/` reads as port 12, like `h:8080/users/a@b.com`).
    """
    first_at = rest.find("@")
    if first_at < 0 or rest.startswith("["):  # none, or an IPv6 host
        return -1
    found = _AUTHORITY_END.search(rest)
    authority_end = found.start() if found else len(rest)
    if first_at > authority_end:
        _, colon, after_colon = rest[:authority_end].partition(":")
        if not colon or _PORT.fullmatch(after_colon):
            return -1
    slash = rest.find("/", first_at)
    return rest.rfind("@", 0, slash if slash >= 0 else len(rest))


def _redact_url(url: str) -> str:
    """One URL (scheme and all) with its user information and secret parameter values masked."""
    scheme_end = url.index("://") + 3
    rest = url[scheme_end:]
    at = _user_info_end(rest)
    user_info = f"{MASK}@" if at >= 0 else ""
    rest = rest[at + 1 :]
    found = re.search(r"[?#]", rest)
    if found is None:
        return url[:scheme_end] + user_info + rest
    # The query, and a fragment, which carries tokens too (OAuth's `#access_token=`).
    before, tail = rest[: found.start()], rest[found.start() :]
    parts = re.split(r"([?#])", tail)
    return url[:scheme_end] + user_info + before + "".join(_redact_query(part) for part in parts)


def redact_urls(text: str) -> str:
    """`text` with the user information and secret query values of every URL in it masked."""
    if "://" not in text:
        return text
    out = []
    position = 0
    while (start := _SCHEME.search(text, position)) is not None:
        end = _URL_END.search(text, start.end())
        stop = end.start() if end is not None else len(text)
        out.append(text[position : start.start()])
        out.append(_redact_url(text[start.start() : stop]))
        position = stop
    out.append(text[position:])
    return "".join(out)


def strip_user_info(url: str) -> str:
    """The URL with its user information masked and nothing else changed (a destination's
    URL as the API shows it: its query is the destination's own setting)."""
    start = _SCHEME.match(url)
    if start is None:
        return url
    at = _user_info_end(url[start.end() :])
    if at < 0:
        return url
    return f"{start.group()}{MASK}@{url[start.end() + at + 1 :]}"
