#!/usr/bin/env python3
"""Run a command against a throwaway PostgreSQL server.

    python scripts/with_postgres.py -- pytest -q
    python scripts/with_postgres.py --durable -- python bench/http_throughput.py
    python scripts/with_postgres.py --durable --profile -- python bench/throughput.py --profile

Finds the server binaries (initdb, pg_ctl) on PATH or under
/usr/lib/postgresql/*/bin, initialises a cluster in a temporary folder,
starts it on a free port of 127.0.0.1, runs the command with DATABASE_URL
pointing at it, then stops the server and removes the folder. The exit
status is the command's. The server trades durability for speed (fsync,
synchronous_commit and full_page_writes off) unless --durable asks for
production's defaults, as benchmarks should. --profile loads
pg_stat_statements and auto_explain (statements over 50 ms logged with their
plans to server.log beside the data folder, $TEST_PG_DATA/../server.log),
for benchmarks that report where the server's time goes. As root (CI), the server runs
as the `postgres` user (or `nobody`), since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile


def find_bindir() -> str | None:
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return os.path.dirname(os.path.realpath(on_path))
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[3]) if p.split("/")[3].isdigit() else 0,
    )
    return os.path.dirname(candidates[-1]) if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    sys.exit("with_postgres: running as root and neither 'postgres' nor 'nobody' exists to run the server")


def main(argv: list[str]) -> int:
    durable = profile = False
    if "--" in argv:
        durable = "--durable" in argv[: argv.index("--")]
        profile = "--profile" in argv[: argv.index("--")]
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print(__doc__)
        return 2
    bindir = find_bindir()
    if bindir is None:
        print(
            "with_postgres: PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
            "/usr/lib/postgresql/*/bin. Install them, e.g. `apt-get install postgresql`.",
            file=sys.stderr,
        )
        return 3
    user = server_user()
    tmp = tempfile.mkdtemp(prefix="wf-pg-")
    data = os.path.join(tmp, "data")
    os.chmod(tmp, 0o755)
    if user:
        ent = pwd.getpwnam(user)
        os.chown(tmp, ent.pw_uid, ent.pw_gid)
    port = free_port()
    log = os.path.join(tmp, "server.log")
    try:
        subprocess.run(
            [
                f"{bindir}/initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8" if has_c_utf8() else "--locale=C",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            user=user,  # None: the current user (subprocess's default)
        )
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp} -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if profile:
            options += (
                " -c shared_preload_libraries=pg_stat_statements,auto_explain -c pg_stat_statements.track=all"
                " -c auto_explain.log_min_duration=50 -c auto_explain.log_nested_statements=on"
            )
        subprocess.run(
            [f"{bindir}/pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
            user=user,
        )
        url = f"postgres://postgres@127.0.0.1:{port}/postgres"
        env = dict(os.environ, DATABASE_URL=url, TEST_PG_BINDIR=bindir, TEST_PG_DATA=data, TEST_PG_USER=user or "")
        print(f"with_postgres: PostgreSQL ({bindir}) on 127.0.0.1:{port}", flush=True)
        return subprocess.call(argv, env=env)
    except subprocess.CalledProcessError as exc:
        print(f"with_postgres: could not start PostgreSQL: {exc}", file=sys.stderr)
        if os.path.exists(log):
            print(open(log).read()[-3000:], file=sys.stderr)
        return 3
    finally:
        subprocess.run(
            [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=user,
        )
        shutil.rmtree(tmp, ignore_errors=True)


def has_c_utf8() -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower()
    return "c.utf8" in out or "c.utf-8" in out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
