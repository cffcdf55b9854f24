"""A TCP proxy between a worker process and PostgreSQL that can lose a pipelined batch on purpose.

It reads the frontend side of the wire protocol (message type byte plus
length), so it can tell a pipeline (two or more Execute messages before one
Sync: a worker's completion and claim together) from the one-statement
round trips around it. Armed with a fault, it cuts the connection at that
pipeline:

- "request": drops the pipeline unsent and closes both sides (the server never ran it);
- "reply": sends it, waits for the server's whole answer (ReadyForQuery: the
  transaction committed), drops the answer and closes both sides;
- "hold": sends it, waits for the answer, holds it and sets `holding`, then
  closes both sides once `release` is set (a test restarts the server meanwhile).

Threads, not asyncio: the test process keeps its own synchronous Django connection.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

Fault = Literal["request", "reply", "hold"]

# Untyped messages a client may send before its StartupMessage (the rest are typed).
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


@dataclass
class Frontend:
    """Splits the client's byte stream into protocol messages, however the reads cut it."""

    buffer: bytearray = field(default_factory=bytearray)
    started: bool = False

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """(type, whole message) for every complete message so far; type b"" for the untyped startup ones."""
        self.buffer += data
        out = []
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return out
                (length,) = struct.unpack("!I", self.buffer[:4])
                if len(self.buffer) < length:
                    return out
                (code,) = struct.unpack("!I", self.buffer[4:8])
                self.started = code not in (SSL_REQUEST, GSSENC_REQUEST)
                kind, size = b"", length
            else:
                if len(self.buffer) < 5:
                    return out
                (length,) = struct.unpack("!I", self.buffer[1:5])
                kind, size = bytes(self.buffer[:1]), 1 + length
                if len(self.buffer) < size:
                    return out
            out.append((kind, bytes(self.buffer[:size])))
            del self.buffer[:size]


# Extended-protocol messages a client batches up to a Sync (or a Flush): held until then.
EXTENDED = {b"P", b"B", b"D", b"E", b"C"}


class Link:
    """One client connection and its server connection."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.muted = False  # the server's answers are read and dropped
        self.answered = threading.Event()  # a ReadyForQuery arrived while muted

    def close(self) -> None:
        for s in (self.client, self.server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class PipelineProxy:
    """Listens on 127.0.0.1 (`port`) and forwards to `target`; `arm(fault)` cuts the next pipeline."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.pipelines = 0  # pipelines seen (cut or not)
        self.cut = 0  # pipelines cut
        self.holding = threading.Event()
        self.release = threading.Event()
        self._fault: Fault | None = None
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, fault: Fault) -> None:
        """Cut the next pipeline any client sends, this way."""
        with self._lock:
            self._fault = fault

    @property
    def armed(self) -> bool:
        return self._fault is not None

    def close(self) -> None:
        self._closed = True
        self.release.set()
        self.listener.close()

    def _take_fault(self) -> Fault | None:
        with self._lock:
            fault, self._fault = self._fault, None
            self.pipelines += 1
            return fault

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()  # the server is down: the client is refused, as it would be
                continue
            link = Link(client, server)
            threading.Thread(target=self._replies, args=(link,), daemon=True).start()
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()

    def _requests(self, link: Link) -> None:
        parser = Frontend()
        segment: list[bytes] = []  # extended-protocol messages since the last Sync or Flush
        executes = 0
        try:
            while True:
                data = link.client.recv(65536)
                if not data:
                    return
                for kind, message in parser.feed(data):
                    segment.append(message)
                    if kind in EXTENDED:
                        executes += kind == b"E"
                        continue
                    if kind == b"S" and executes >= 2 and (fault := self._take_fault()) is not None:
                        self._cut(fault, b"".join(segment), link)
                        return
                    link.server.sendall(b"".join(segment))
                    segment.clear()
                    if kind == b"S":
                        executes = 0
        except OSError:
            return
        finally:
            link.close()

    def _cut(self, fault: Fault, pipeline: bytes, link: Link) -> None:
        """Lose the pipeline or its answer, then cut both sides."""
        if fault != "request":
            link.muted = True
            link.server.sendall(pipeline)
            link.answered.wait(timeout=60)  # ReadyForQuery: the server committed (or rolled back)
            if fault == "hold":
                self.holding.set()
                self.release.wait(timeout=120)
        self.cut += 1
        link.close()

    def _replies(self, link: Link) -> None:
        seen = b""
        try:
            while True:
                data = link.server.recv(65536)
                if not data:
                    return
                if not link.muted:
                    link.client.sendall(data)
                    continue
                seen = seen[-5:] + data
                if b"Z\x00\x00\x00\x05" in seen:
                    link.answered.set()
        except OSError:
            return
        finally:
            link.answered.set()
            link.close()
