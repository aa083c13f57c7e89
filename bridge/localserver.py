"""The plumbing the bridge's local stand-ins for its peers share (`bridge sink` for Amplitude, `bridge
platform-server` for the messaging platform): a threaded HTTP/1.1 keep-alive server on a daemon thread,
JSON answers, bodies framed by Content-Length only, and serving a command until SIGTERM or SIGINT."""
from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import orjson

log = logging.getLogger(__name__)


class LocalServer:
    """A stand-in server: `start()` serves on a daemon thread, `stop()` releases the port; also a
    context manager. A subclass sets `label` (for thread names and errors), `handler` (a JsonHandler
    subclass, which reaches the server object as `self.owner`) and `request_queue_size`."""

    label = "local server"
    handler: type[JsonHandler]
    request_queue_size = 128

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. http://127.0.0.1:54321."""
        if self._server is None:
            raise RuntimeError(f"the {self.label} is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Listen and serve on a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError(f"the {self.label} is already started")
        self._server = _Server((self.host, self.port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.label.replace(' ', '-')}-{self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and release the port; requests in flight may still finish. Idempotent."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: LocalServer):
        self.request_queue_size = owner.request_queue_size
        super().__init__(address, owner.handler)
        self.owner = owner

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (after a timeout, say) is routine; anything else is a bug worth a trace."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("%s: client %s went away", self.owner.label, client_address)
        else:
            log.exception("%s: error handling a request from %s", self.owner.label, client_address)


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive and JSON answers. A subclass says how its peer words an error
    (`error_body`) and handles its paths."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    @property
    def owner(self):
        """The LocalServer this request came to."""
        return self.server.owner

    def error_body(self, status: int, message: str) -> object:
        """The peer's error body for `status` with `message`."""
        raise NotImplementedError

    def read_body(self) -> bytes | None:
        """The request body, or None after answering a request whose body cannot be framed (chunked,
        411; a Content-Length that is not a number, 400), the connection then closed."""
        if "Transfer-Encoding" in self.headers:
            self.send_json(411, self.error_body(411, "Length required"), close=True)
            return None
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            self.send_json(400, self.error_body(400, "Invalid Content-Length"), close=True)
            return None
        return self.rfile.read(int(length))

    def send_json(self, status: int, body: object, close: bool = False,
                  headers: Mapping[str, str] | None = None) -> None:
        content = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args) -> None:
        log.debug(format, *args)


def serve_until_signal(server: Callable[[], LocalServer]) -> int:
    """Start `server()`, print its URL as the first line, and serve until SIGTERM or SIGINT; exit code 0."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    with server() as running:
        print(running.url, flush=True)
        stopping.wait()
    return 0
