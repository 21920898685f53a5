"""A TCP proxy before PostgreSQL that records the name of every statement its clients prepare
(the Parse messages of the wire protocol): how a test sees that nothing named, which would
outlive its transaction behind PgBouncer, is prepared (docs/operations.md#behind-pgbouncer).

It refuses TLS (answers "N" to the client's SSLRequest) so that it can read the messages."""

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


class StatementNames:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.names: list[str] = []
        self.parsed = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        """Listens on a free loopback port, which it yields."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            server, to_server = await asyncio.open_connection(*self.target)
        except OSError:
            to_client.close()
            return
        pumps = [
            asyncio.create_task(self._frontend(client, to_client, to_server)),
            asyncio.create_task(_copy(server, to_client)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            to_server.close()
            to_client.close()

    async def _frontend(
        self,
        client: asyncio.StreamReader,
        to_client: asyncio.StreamWriter,
        to_server: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # startup: untyped messages, the first ones perhaps asking for TLS
                header = await client.readexactly(8)
                length, code = struct.unpack("!ii", header)
                body = await client.readexactly(length - 8)
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    to_client.write(b"N")
                    continue
                to_server.write(header + body)
                break
            while True:  # typed messages: a type byte, a length, the body
                header = await client.readexactly(5)
                body = await client.readexactly(struct.unpack("!i", header[1:])[0] - 4)
                if header[:1] == b"P":
                    self.parsed += 1
                    name = body[: body.index(b"\0")].decode()
                    if name:
                        self.names.append(name)
                to_server.write(header + body)
                await to_server.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
