"""The throwaway PostgreSQL server of scripts/with_postgres.py, stopped and started by tests."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def restart_postgres(*, down_for: float) -> None:
    """Stop the test server (-m fast: sessions are cut), leave it down `down_for` s, start it again.

    Like `pg_ctl restart`, but with a pause: a bare restart takes ~0.2 s, which can fall
    between two of the worker's queries, and Django's connection health check then
    reconnects without the worker ever meeting an error. Down for a second, it always does.
    """
    bindir, data = os.environ.get("TEST_PG_BINDIR"), os.environ.get("TEST_PG_DATA")
    if not bindir or not data:
        pytest.skip("needs the server of scripts/with_postgres.py (TEST_PG_BINDIR, TEST_PG_DATA)")
    run_as = {"user": os.environ.get("TEST_PG_USER") or None}
    # The options it was started with (port, socket folder...), as `pg_ctl restart` reuses them.
    words = shlex.split(Path(data, "postmaster.opts").read_text())[1:]
    options = [w for i, w in enumerate(words) if w != "-D" and (i == 0 or words[i - 1] != "-D")]
    log = os.path.join(os.path.dirname(data), "server.log")  # -l: the server must not hold our pipes open
    pg_ctl = f"{bindir}/pg_ctl"
    quiet: dict[str, Any] = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 90}
    subprocess.run([pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "60", "stop"], **quiet, **run_as)
    time.sleep(down_for)
    subprocess.run(
        [pg_ctl, "-D", data, "-l", log, "-o", shlex.join(options), "-w", "-t", "60", "start"], **quiet, **run_as
    )
