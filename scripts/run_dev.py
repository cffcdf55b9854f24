#!/usr/bin/env python3
"""Run the development web server and a worker together; Ctrl-C stops both."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

HOST_PORT = os.environ.get("RUN_ADDR", "127.0.0.1:8000")


def parse_addr(addr: str) -> tuple[str, int]:
    """RUN_ADDR as runserver reads it: "PORT", "HOST:PORT" or "[IPv6]:PORT"."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"RUN_ADDR={addr!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return host.strip("[]") or "127.0.0.1", int(port)


def address_problem(addr: str) -> str | None:
    """Why runserver could not listen on `addr`, or None. Checked first: runserver would fail
    after the worker started, and the "Open http://..." line would point at someone else's server."""
    try:
        host, port = parse_addr(addr)
    except ValueError as exc:
        return str(exc)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As runserver binds (SO_REUSEADDR): a port left in TIME_WAIT is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                free = f"{host}:{port + 1}" if family == socket.AF_INET else f"[{host}]:{port + 1}"
                return (
                    f"{addr} is already in use (another `make run`?): stop it, or use another: RUN_ADDR={free} make run"
                )
            return f"cannot listen on {addr}: {exc.strerror or exc}; set RUN_ADDR=HOST:PORT (e.g. 127.0.0.1:8000)"
    return None


def main() -> int:
    problem = address_problem(HOST_PORT)
    if problem:
        print(f"make run: {problem}", file=sys.stderr)
        return 1
    py = sys.executable
    user = os.environ.get("DEV_ADMIN_USER", "admin")
    password = os.environ.get("DEV_ADMIN_PASSWORD", "admin")
    print(f"\n  Open http://{HOST_PORT}/ and log in as {user} / {password}")
    print("  Ctrl-C stops the web server and the worker.\n", flush=True)
    # Own sessions: Ctrl-C reaches only this script, which stops each child
    # once (a second signal would make the worker exit without finishing).
    procs = [
        subprocess.Popen([py, "manage.py", "run_worker", "--worker-id", "dev-worker"], start_new_session=True),
        subprocess.Popen([py, "manage.py", "runserver", "--noreload", HOST_PORT], start_new_session=True),
    ]

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # If either process exits, stop the other.
    while all(p.poll() is None for p in procs):
        time.sleep(0.2)
    stop(signal.SIGTERM, None)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
