"""A loopback chaos FHIR server and a counting sink, on real sockets (threads, no framework).

``ChaosServer`` answers every request according to its current ``mode`` (set by the test):
slow, hanging, error statuses, HTML, truncated or NaN JSON, a streamed 50 MB body, an endless
``next`` chain, a redirect, a connection reset mid-body... It records each request's path and
``Authorization`` header, the bytes it managed to send, and whether the client closed the
connection. ``Sink`` only counts connections and ``Authorization`` headers: a test asserts it
was never contacted.

Both bind ``127.0.0.1:0``; :meth:`close` releases hanging handlers and joins every thread.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SEARCHSET_EMPTY = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
MB = 1024 * 1024


@dataclass
class Seen:
    """One request the chaos server read."""

    method: str
    target: str
    headers: dict[str, str]
    mode: str
    bytes_sent: int = 0
    client_closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def _read_request(conn: socket.socket) -> tuple[str, str, dict[str, str]] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 256 * 1024:
            return None
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


class _Base:
    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self.release.is_set():  # the wake-up connection of close()
                conn.close()
                return
            with self.lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.release.set()
        try:  # wake accept()
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


class Sink(_Base):
    """Counts connections; records Authorization headers; answers 200 with an empty searchset."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = _read_request(conn)
            except OSError:
                return
            if request is None:
                return
            with self.lock:
                self.authorizations.append(request[2].get("authorization"))
            body = json.dumps(SEARCHSET_EMPTY).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )


Handler = Callable[["ChaosServer", socket.socket, Seen], None]


class ChaosServer(_Base):
    """Misbehaves per ``mode``; ``redirect_to`` / ``foreign_next`` name the sink's origin."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 3.0
        self.redirect_to = "http://127.0.0.1:9/"
        self.seen: list[Seen] = []
        super().__init__()

    def reset(self, mode: str) -> None:
        with self.lock:
            self.mode = mode
            self.seen.clear()

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                request = _read_request(conn)
                if request is None:
                    return
                method, target, headers = request
                with self.lock:
                    seen = Seen(method, target, headers, self.mode)
                    self.seen.append(seen)
                try:
                    HANDLERS[seen.mode](self, conn, seen)
                finally:
                    seen.done.set()
            except OSError:
                return

    # -- helpers ---------------------------------------------------------------------------

    def send(self, conn: socket.socket, seen: Seen, data: bytes) -> None:
        conn.sendall(data)
        seen.bytes_sent += len(data)

    def respond(
        self,
        conn: socket.socket,
        seen: Seen,
        status: str,
        body: bytes,
        content_type: str = "application/fhir+json",
        extra: str = "",
    ) -> None:
        head = (
            f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
        )
        self.send(conn, seen, head.encode() + body)

    def wait_for_client_close(self, conn: socket.socket, seen: Seen, limit: float) -> None:
        """Hold the connection without answering until the client closes it (or release)."""
        conn.settimeout(0.05)
        end = time.monotonic() + limit
        while not self.release.is_set() and time.monotonic() < end:
            try:
                if conn.recv(1) == b"":
                    seen.client_closed = True
                    return
            except TimeoutError:
                continue
            except OSError:
                seen.client_closed = True
                return


def _bundle_for(seen: Seen) -> dict[str, object]:
    path = seen.path.rstrip("/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[-2] and parts[-2][0].isupper():  # a read: Type/id
        return {"resourceType": parts[-2], "id": parts[-1]}
    return SEARCHSET_EMPTY


def _ok(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    server.respond(conn, seen, "200 OK", json.dumps(_bundle_for(seen)).encode())


def _slow(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    server.wait_for_client_close(conn, seen, server.delay)
    if not seen.client_closed and not server.release.is_set():
        try:
            _ok(server, conn, seen)
        except OSError:
            seen.client_closed = True


def _hang(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    server.wait_for_client_close(conn, seen, 30.0)


def _status(code: int, reason: str, extra: str = "") -> Handler:
    def handler(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "exception", "diagnostics": reason}],
        }
        server.respond(conn, seen, f"{code} {reason}", json.dumps(body).encode(), extra=extra)

    return handler


def _html(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    page = b"<!doctype html><html><body><h1>Maintenance</h1></body></html>"
    server.respond(conn, seen, "200 OK", page, "text/html; charset=utf-8")


def _truncated_json(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    body = b'{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resou'
    server.respond(conn, seen, "200 OK", body)


def _short_body(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    """Content-Length promises more than is sent, then a clean close."""
    body = json.dumps(SEARCHSET_EMPTY).encode()
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\n"
        f"content-length: {len(body) + 500}\r\nconnection: close\r\n\r\n"
    )
    server.send(conn, seen, head.encode() + body)


def _text_plain(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    server.respond(conn, seen, "200 OK", json.dumps(SEARCHSET_EMPTY).encode(), "text/plain")


def _nan(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    body = b'{"resourceType": "Bundle", "type": "searchset", "total": NaN, "entry": []}'
    server.respond(conn, seen, "200 OK", body)


def _wrong_type(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    server.respond(conn, seen, "200 OK", b'{"resourceType": "Binary", "id": "x"}')


ENTRY = (
    b'{"resource": {"resourceType": "Condition", "id": "c", "code": {"text": "'
    + b"x" * 900
    + b'"}}},'
)
HUGE_TOTAL = 50 * MB


def _huge(declared: bool) -> Handler:
    def handler(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
        head = "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\nconnection: close\r\n"
        head += (
            f"content-length: {HUGE_TOTAL}\r\n\r\n"
            if declared
            else "transfer-encoding: chunked\r\n\r\n"
        )
        server.send(conn, seen, head.encode())
        piece = b'{"resourceType": "Bundle", "type": "searchset", "entry": [' + ENTRY * 64
        chunk = ENTRY * 64
        conn.settimeout(5)
        try:
            while seen.bytes_sent < HUGE_TOTAL and not server.release.is_set():
                data = piece if seen.bytes_sent < 1024 else chunk
                if declared:
                    server.send(conn, seen, data)
                else:
                    frame = f"{len(data):x}\r\n".encode() + data + b"\r\n"
                    conn.sendall(frame)
                    seen.bytes_sent += len(data)
        except OSError:
            seen.client_closed = True

    return handler


def _next_chain(foreign: bool) -> Handler:
    def handler(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
        if foreign:
            target = server.redirect_to.rstrip("/") + seen.path + "?page=2"
        else:
            page = len([s for s in server.requests() if s.path == seen.path]) + 1
            target = f"{server.origin}{seen.path}?_page={page}"
        bundle = dict(SEARCHSET_EMPTY)
        bundle["link"] = [{"relation": "next", "url": target}]
        server.respond(conn, seen, "200 OK", json.dumps(bundle).encode())

    return handler


def _redirect(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    location = server.redirect_to.rstrip("/") + seen.target
    server.respond(conn, seen, "302 Found", b"", extra=f"location: {location}\r\n")


def _reset(server: ChaosServer, conn: socket.socket, seen: Seen) -> None:
    head = "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 10000\r\n\r\n"
    server.send(conn, seen, head.encode() + b'{"resourceType": "Bundle", "type": "searchset"')
    time.sleep(0.05)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST


HANDLERS: dict[str, Handler] = {
    "ok": _ok,
    "slow": _slow,
    "hang": _hang,
    "500": _status(500, "Internal Server Error"),
    "502": _status(502, "Bad Gateway"),
    "503": _status(503, "Service Unavailable", "retry-after: 1\r\n"),
    "429": _status(429, "Too Many Requests", "retry-after: 1\r\n"),
    "401": _status(401, "Unauthorized", 'www-authenticate: Bearer error="invalid_token"\r\n'),
    "403": _status(403, "Forbidden"),
    "html": _html,
    "truncated-json": _truncated_json,
    "short-body": _short_body,
    "text-plain": _text_plain,
    "nan": _nan,
    "wrong-type": _wrong_type,
    "huge-chunked": _huge(declared=False),
    "huge-declared": _huge(declared=True),
    "next-chain": _next_chain(foreign=False),
    "next-foreign": _next_chain(foreign=True),
    "redirect": _redirect,
    "reset": _reset,
}
