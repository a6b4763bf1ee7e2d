"""A real HTTP webhook receiver for the tests: verifies every delivery with the
``standardwebhooks`` package (the receivers' library, not ours) against each secret it is
told, and records what came.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclasses.dataclass
class Received:
    msg_id: str
    timestamp: str
    signature: str
    body: dict[str, Any]
    raw: bytes
    host: str
    #: For each secret the receiver knows: did the delivery verify with it?
    verified: dict[str, bool]
    #: The W3C trace context the delivery carried (linksvc's tracing on), if any.
    traceparent: str | None = None

    @property
    def type(self) -> str:
        return str(self.body["type"])

    @property
    def jti(self) -> str | None:
        return self.body["data"].get("jti")


class Receiver:
    """``Receiver(secrets)`` serves on 127.0.0.1 (a free port, or ``port``) until ``stop()``.

    ``answer(received) -> status`` decides the response (default 200); ``delay`` seconds are
    waited before answering; ``location`` is sent with 3xx answers. With ``trickle`` set, the
    answer is one byte every ``trickle`` seconds, without end, until the sender hangs up
    (or :meth:`stop`): each read is quick, the response never completes. ``log`` records
    ``("open", msg_id)`` when a delivery arrives and ``("closed", msg_id)`` when a trickled
    one is hung up on; ``max_held`` the most trickled deliveries held at once.
    """

    def __init__(self, secrets: list[str] | None = None, *, port: int = 0) -> None:
        self.secrets = list(secrets or [])
        self.received: list[Received] = []
        self.answer: Callable[[Received], int] = lambda r: 200
        self.delay = 0.0
        self.location: str | None = None
        self.trickle: float | None = None
        self.log: list[tuple[str, str]] = []
        self.held = 0
        self.max_held = 0
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers.items())
                verified = {}
                for s in receiver.secrets:
                    try:
                        Webhook(s).verify(raw, headers)
                        verified[s] = True
                    except WebhookVerificationError:
                        verified[s] = False
                r = Received(
                    msg_id=headers.get("webhook-id", ""),
                    timestamp=headers.get("webhook-timestamp", ""),
                    signature=headers.get("webhook-signature", ""),
                    body=json.loads(raw) if raw else {},
                    raw=raw,
                    host=headers.get("Host", ""),
                    verified=verified,
                    traceparent=self.headers.get("traceparent"),
                )
                with receiver.arrived:
                    receiver.received.append(r)
                    receiver.log.append(("open", r.msg_id))
                    receiver.arrived.notify_all()
                if receiver.trickle:
                    self._trickle(r.msg_id, receiver.trickle)
                    return
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.answer(r)
                self.send_response(status)
                if 300 <= status < 400 and receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def _trickle(self, msg_id: str, every: float) -> None:
                with receiver.arrived:
                    receiver.held += 1
                    receiver.max_held = max(receiver.max_held, receiver.held)
                try:
                    for byte in (
                        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10**6
                    ):
                        # Between bytes, watch for the sender hanging up (EOF on our side).
                        ready, _, _ = select.select([self.connection], [], [], every)
                        if ready and not self.connection.recv(1, socket.MSG_PEEK):
                            break
                        if receiver.released.is_set():
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    pass  # reset by the sender: hung up too
                finally:
                    with receiver.arrived:
                        receiver.held -= 1
                        receiver.log.append(("closed", msg_id))
                        receiver.arrived.notify_all()
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = collections.Counter(r.type for r in self.received)
                    raise AssertionError(
                        f"timed out after {timeout} s; received {len(self.received)} "
                        f"({dict(kinds)}), last {[(r.type, r.msg_id) for r in self.received[-5:]]}"
                    )
                self.arrived.wait(left)

    def wait_log(
        self, predicate: Callable[[list[tuple[str, str]]], bool], timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not predicate(self.log):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; log {self.log}")
                self.arrived.wait(left)

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)
