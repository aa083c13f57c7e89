"""The trickle's client, run in its own process by bench.stream: POSTs one request body per line of a
file on a fixed schedule (open loop: request i is due `i / rate` seconds after the start, whatever the
answers' pace) over keep-alive HTTP/1.1 connections, and records when each 202 came back.

    python -m bench.trickle_client URL API_KEY RATE CONNECTIONS BODIES_FILE

Prints one JSON object: `acked` (per body, the wall-clock time of its 202, or null), `statuses` (answers
by status), `sent` (bodies written), `first_sent` / `last_sent` (wall-clock), `latencies` (seconds from
each request's due time to its answer, sorted). Plain asyncio streams and the standard library only, so
it does not import the bridge.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        """Send `request` (a whole HTTP request) and return the answer's status; retried once on a fresh
        connection if the kept-alive one was closed (a retry is safe: event ids make intake idempotent)."""
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(request)
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> int:
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:] if line)}
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def trickle(url: str, api_key: str, rate: float, connections: int, bodies: list[bytes]) -> dict:
    """Send `bodies` at `rate` per second over `connections`; returns what the module docstring lists."""
    parts = urlsplit(url)
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
    requests = [head.format(length=len(body)).encode() + body for body in bodies]
    acked: list[float | None] = [None] * len(bodies)
    sent_at: list[float] = []
    latencies: list[float] = []
    statuses: Counter = Counter()
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def connection() -> None:
        http = Connection(parts.hostname, parts.port)
        while (index := await queue.get()) is not None:
            sent_at.append(time.time())
            status = await http.post(requests[index])
            statuses[status] += 1
            if status == 202:
                acked[index] = time.time()
            latencies.append(loop.time() - (start + index / rate))
        http.close()

    tasks = [asyncio.create_task(connection()) for _ in range(connections)]
    for index in range(len(requests)):  # on schedule: a late answer delays no later request's dispatch
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(index)
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return {"acked": acked, "statuses": statuses, "sent": len(sent_at), "first_sent": min(sent_at),
            "last_sent": max(sent_at), "latencies": sorted(latencies)}


def main(argv: list[str]) -> None:
    url, api_key, rate, connections, path = argv
    with open(path, "rb") as lines:
        bodies = [line.rstrip(b"\n") for line in lines]
    print(json.dumps(asyncio.run(trickle(url, api_key, float(rate), int(connections), bodies))))


if __name__ == "__main__":
    main(sys.argv[1:])
