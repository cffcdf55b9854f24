#!/usr/bin/env python3
"""Run the development web server and a worker together; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

HOST_PORT = os.environ.get("RUN_ADDR", "127.0.0.1:8000")


def main() -> int:
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
