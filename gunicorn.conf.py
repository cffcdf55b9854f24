"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py`.

One gunicorn serves the pages, the admin, the API, hooks, /metrics and the
static files (whitenoise); workers are separate processes (`run_worker`).
Every value can be overridden from the environment.
"""

from __future__ import annotations

import multiprocessing
import os

wsgi_app = "workflowsite.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Threads, not only processes: requests mostly wait on PostgreSQL. Each thread
# may hold one database connection (DB_CONN_MAX_AGE), so the web tier opens up
# to workers x threads connections: size max_connections / PgBouncer for it.
workers = int(os.environ.get("GUNICORN_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 9)))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
# Recycle processes now and then (bounded memory growth), not all at once.
max_requests = 5000
max_requests_jitter = 500
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
# Trust X-Forwarded-* only from the reverse proxy in front of gunicorn.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
