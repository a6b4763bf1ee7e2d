"""A small TCP proxy for tests that need a network that fails on cue.

It listens on a free port and forwards to a target. ``cut_answers(n)`` makes the next
``n`` connections deliver the client's request to the target, wait for the whole answer
(so the server has done the work), send the client only the first bytes of it and close:
an answer lost in the middle. ``refuse()`` stops listening (connection refused) and
breaks every open connection; ``resume()`` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._cuts = 0
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.connections = 0
        self.cut = 0
        self.resume()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control ----------------------------------------------------------------------------

    def cut_answers(self, n: int = 1) -> None:
        with self._lock:
            self._cuts = n

    def resume(self) -> None:
        if self._listener is not None:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def refuse(self) -> None:
        """Stop listening and break every connection now open."""
        if self._listener is not None:
            # shutdown() first: a bare close() leaves a socket that a thread blocks on in
            # accept() listening (Linux).
            self._close(self._listener)
            self._listener = None
        with self._lock:
            for conn in list(self._open):
                self._close(conn)
            self._open.clear()

    def close(self) -> None:
        self.refuse()

    # -- the work ---------------------------------------------------------------------------

    @staticmethod
    def _close(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                cut = self._cuts > 0
                self._cuts -= 1 if cut else 0
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: bool) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            self._close(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        if not cut:
            self._pipe(upstream, client)
            return
        answer = b""
        try:
            while chunk := upstream.recv(65536):
                answer += chunk
        except OSError:
            pass
        with self._lock:
            self.cut += 1
        with contextlib.suppress(OSError):
            client.sendall(answer[: min(len(answer) // 2, 40)])
        self._close(client)
        self._close(upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            self._open.discard(src)
