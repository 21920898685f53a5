"""Run one fake as a process.

    python -m tests.fakes <vendor> --port N [--host 127.0.0.1] [--api-key KEY]
        [--secret S] [--list-id ID ...] [--set NAME=VALUE ...]

`vendor` is mailchimp, sendgrid, klaviyo, commerce or webhook. `--api-key` is the credential
the fake accepts (the commerce bearer token), `--secret` the webhook signing secret,
`--list-id` a Mailchimp audience to create (default `list1`), `--set` a tunable such as
`burst_limit=1000` (see `PATCH /_fake/config`). Port 0 picks a free port. One line on stdout
says where it listens; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from starlette.applications import Starlette

from tests.fakes import commerce, klaviyo, mailchimp, sendgrid, webhook
from tests.fakes.server import serve
from tests.fakes.state import FakeState

API_ROOTS = {
    "mailchimp": "/3.0",
    "sendgrid": "/v3",
    "klaviyo": "/api",
    "commerce": "/rest/admin/v2",
    "webhook": "/",
}


def _settings(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        try:
            values[name] = float(text) if "." in text else int(text)
        except ValueError:
            raise SystemExit(f"--set {pair}: the value must be a number") from None
    return values


def _configure(state: FakeState, args: argparse.Namespace) -> None:
    if args.api_key:
        state.api_key = args.api_key
    try:
        state.set_tunables(_settings(args.set or []))
    except ValueError as error:
        raise SystemExit(f"--set: {error}") from None


def build(args: argparse.Namespace) -> Starlette:
    if args.vendor == "mailchimp":
        audiences = mailchimp.MailchimpState()
        for list_id in args.list_id or ["list1"]:
            audiences.add_list(list_id)
        _configure(audiences, args)
        return mailchimp.create_app(audiences)
    if args.vendor == "sendgrid":
        contacts = sendgrid.SendGridState()
        _configure(contacts, args)
        return sendgrid.create_app(contacts)
    if args.vendor == "klaviyo":
        profiles = klaviyo.KlaviyoState()
        _configure(profiles, args)
        return klaviyo.create_app(profiles)
    if args.vendor == "commerce":
        store = commerce.CommerceState()
        _configure(store, args)
        return commerce.create_app(store)
    receiver = webhook.WebhookState(secret=args.secret or webhook.DEFAULT_SECRET)
    _configure(receiver, args)
    return webhook.create_app(receiver)


async def run(app: Starlette, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(app, args.host, args.port) as url:
        print(f"fake {args.vendor} listening on {url} (API root {url}{API_ROOTS[args.vendor]})")
        sys.stdout.flush()
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes", description="Run one fake vendor API as a process."
    )
    parser.add_argument("vendor", choices=sorted(API_ROOTS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", help="the credential the fake accepts")
    parser.add_argument("--secret", help="the webhook signing secret")
    parser.add_argument("--list-id", action="append", help="a Mailchimp audience to create")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="a tunable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = build(args)
    asyncio.run(run(app, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
