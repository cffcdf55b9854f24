"""The benchmarks' own PostgreSQL database, created anew beside DATABASE_URL's."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent


def fresh_database(name: str) -> str | None:
    """Drop and create database `name` and point this process (and Django, once set up) at it.

    Returns the original DATABASE_URL (to drop `name` again at the end), or
    None after saying why not: the benchmarks need PostgreSQL.
    """
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print(
            "bench: DATABASE_URL must point at PostgreSQL (use scripts/with_postgres.py, or make bench-*)",
            file=sys.stderr,
        )
        return None
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    os.environ["DATABASE_URL"] = urlunparse(urlparse(url)._replace(path=f"/{name}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workflowsite.settings")
    # The benchmarks' stages name bench.handlers (worker processes inherit this).
    os.environ.setdefault("TASKS_HANDLER_MODULES", "tasks_app.demo,bench.handlers")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    sys.path.insert(0, str(ROOT))
    return url
