"""A TCP proxy for the client's end-to-end tests that breaks connections on purpose, as a flaky network or load
balancer would: it cuts the socket after N bytes of request body, or lets one request through and drops its
response (the server did the work; the client never hears about it)."""

from __future__ import annotations

import socket
import threading


class FaultyProxy:
    """Forwards 127.0.0.1:<port> to ``target_port``. ``cut_after`` (once): close the connection after that
    many client→server bytes. ``drop_response_to`` (once): forward the request whose bytes contain this
    marker, then close the connection instead of forwarding the server's response."""

    def __init__(self, target_port: int, *, cut_after: int | None = None, drop_response_to: bytes | None = None):
        self.target_port = target_port
        self.cut_after, self.drop_response_to = cut_after, drop_response_to
        self.sent_upstream = 0
        self.cuts = 0
        self.dropped_responses = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"armed": False}
            threading.Thread(target=self._upstream, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(upstream, client, state), daemon=True).start()

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _upstream(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self.cut_after is not None and self.sent_upstream + len(data) > self.cut_after:
                        keep = self.cut_after - self.sent_upstream
                        upstream.sendall(data[:keep])
                        self.sent_upstream += keep
                        self.cut_after = None
                        self.cuts += 1
                        self._shut(client, upstream)
                        return
                    self.sent_upstream += len(data)
                    if self.drop_response_to is not None and self.drop_response_to in data:
                        state["armed"] = True
                        self.drop_response_to = None
                upstream.sendall(data)
        except OSError:
            pass
        self._shut(client, upstream)

    def _downstream(self, upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := upstream.recv(65536):
                if state["armed"]:
                    with self._lock:
                        self.dropped_responses += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        self._shut(client, upstream)
