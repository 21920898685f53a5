"""A steady stream of writes across the API replicas, as a store's backend sends them, and a
ledger of what each got: every acknowledged write must be kept, no answer may be a 500, and
after a fault ends the failures must stop within seconds."""

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.fixtures.infra import ADMIN_KEY

# Failures a client sees while a replica is dead or the network is bad: not a server's 500.
UNANSWERED = 0


@dataclass
class Ledger:
    customers: dict[str, str] = field(default_factory=dict)  # external_id -> email
    orders: dict[str, str] = field(default_factory=dict)  # external_id -> customer
    statuses: Counter[int] = field(default_factory=Counter)
    # (sent at, status) of every request, in time.monotonic() seconds.
    answers: list[tuple[float, int]] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    # What the client saw when no answer came: (sent at, replica, error).
    unanswered: list[tuple[float, str, str]] = field(default_factory=list)

    def failures_after(self, moment: float) -> list[tuple[float, int]]:
        """Requests sent from `moment` on that the service failed (a 4xx is the request's own
        fault: an order for a customer whose write failed)."""
        return [
            (at, status)
            for at, status in self.answers
            if at >= moment and (status == UNANSWERED or status >= 500)
        ]

    def recovery_seconds(self, fault_ended: float) -> float:
        """From the end of a fault to the last request that failed after it."""
        failed = self.failures_after(fault_ended)
        return max((at - fault_ended for at, _ in failed), default=0.0)


class SteadyLoad:
    """Open-loop writes at `rate` per second: a customer, then an order for it, sent to the
    replicas in turn; a replica that refuses the connection is skipped, as a load balancer
    would."""

    def __init__(self, api_urls: list[str], ledger: Ledger, rate: float, tag: str) -> None:
        self.api_urls = api_urls
        self.ledger = ledger
        self.rate = rate
        self.tag = tag
        self._numbers = itertools.count()
        self._replicas = itertools.cycle(range(len(api_urls)))
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=15,
            limits=httpx.Limits(max_connections=200),
        )

    async def __aenter__(self) -> "SteadyLoad":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._requests, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        interval = 1 / self.rate
        next_at = time.monotonic()
        while True:
            n = next(self._numbers)
            task = asyncio.create_task(self._write(n))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _write(self, n: int) -> None:
        customer = f"{self.tag}-c{n // 2}"
        sent = time.monotonic()
        if n % 2 == 0:
            email = f"{customer}@example.com"
            path, body = f"/v1/customers/{customer}", {"email": email}
        else:
            order = f"{self.tag}-o{n // 2}"
            path = f"/v1/orders/{order}"
            body = {
                "customer_external_id": customer,
                "total": "10.00",
                "placed_at": "2026-12-01T10:00:00Z",
            }
        status = await self._send(path, body, sent)
        self.ledger.answers.append((sent, status))
        self.ledger.statuses[status] += 1
        if 200 <= status < 300:
            if n % 2 == 0:
                self.ledger.customers[customer] = body["email"]
            else:
                self.ledger.orders[path.rsplit("/", 1)[1]] = customer

    async def _send(self, path: str, body: dict[str, str], sent: float) -> int:
        refused: list[str] = []
        # Each replica once, from the next in turn (concurrent requests share the turn).
        first = next(self._replicas)
        for i in range(len(self.api_urls)):
            url = self.api_urls[(first + i) % len(self.api_urls)]
            try:
                response = await self._client.put(url + path, json=body)
            except httpx.ConnectError as exc:
                refused.append(f"{url}: {exc!r}")
                continue  # a dead replica: the balancer sends to the next one
            except httpx.HTTPError as exc:
                self.ledger.unanswered.append((sent, url, repr(exc)))
                return UNANSWERED
            if response.status_code >= 500 and response.status_code != 503:
                self.ledger.server_errors.append(f"{path}: {response.text[:300]}")
            return response.status_code
        self.ledger.unanswered.append((sent, "every replica", "; ".join(refused)))
        return UNANSWERED
