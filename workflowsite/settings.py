"""Settings for workflowsite.

Deploy-time values come from the environment (see .env.example). Unset
variables give a zero-setup development configuration: DEBUG on, a SQLite file
in the project, a development secret key.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from tasks_app import limits
from workflowsite.env import env_bool, env_choice, env_float, env_int, env_list, env_rate, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
if not DEBUG and (SECRET_KEY == DEV_SECRET_KEY or not SECRET_KEY.strip()):
    # Refuse to serve production traffic with a key that is in the repository,
    # or with none at all (`SECRET_KEY=` in an env file sets it to "").
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "axes",
    "tasks_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # The viewer's time zone from the "tz" cookie (tz.js), for every page's times.
    "tasks_app.middleware.ViewerTimezoneMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "workflowsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "workflowsite.wsgi.application"

# DATABASE_URL picks the database; unset means a SQLite file in the project.
try:
    DATABASES = {
        "default": dj_database_url.parse(
            env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
            conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
            conn_health_checks=True,
        )
    }
except ValueError as exc:  # an unknown scheme, a port that isn't a number; the URL itself holds the password
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        # BEGIN IMMEDIATE takes SQLite's single write lock at the start of every
        # transaction, so a read-then-write block can never fail half-way with
        # "database is locked" when another process wrote in between.
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests that start worker processes need a test database that other
    # processes can open, so it is a file rather than ":memory:"; one per
    # test run, so concurrent runs don't share it.
    _db["TEST"] = {"NAME": os.path.join(tempfile.gettempdir(), f"workflowsite-test-{os.getpid()}.sqlite3")}
elif _db["ENGINE"] == "django.db.backends.postgresql":
    # Behind PgBouncer in transaction mode: server-side cursors (QuerySet.iterator)
    # can't outlive a transaction there (Django's docs).
    _db["DISABLE_SERVER_SIDE_CURSORS"] = env_bool("DB_DISABLE_SERVER_SIDE_CURSORS", False)
    _db.setdefault("OPTIONS", {})
    # Shows up in pg_stat_activity; run_worker replaces it with the worker id.
    _db["OPTIONS"].setdefault("application_name", env_str("DB_APPLICATION_NAME", "workflowsite"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Production: hashed, compressed files from `collectstatic`, cached forever
    # by browsers. Development serves the app directories as they are.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

if not DEBUG:
    # Static files from the app itself (right after SecurityMiddleware, as
    # whitenoise asks), so one gunicorn process serves everything; in
    # development runserver serves them from the app directories.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

# -- HTTPS and browser protections -------------------------------------------
# Production defaults follow DEBUG: with DEBUG off, cookies are HTTPS-only,
# plain HTTP is redirected and browsers are told to use HTTPS for a year (HSTS).
# Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER=true (it must set
# X-Forwarded-Proto and strip it from clients).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Load balancers' health checks and Prometheus may reach gunicorn directly over
# plain HTTP on the private network: answer them instead of redirecting.
SECURE_REDIRECT_EXEMPT = [r"^api/health/$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
# Content security policy (django-csp): only this origin's scripts, styles and
# forms; no inline scripts anywhere (the pages and the admin need none), no
# framing. The API docs page alone allows its inline <style> (see api/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# -- Clients behind proxies, shared rate limits, login lockout ----------------
# How many reverse proxies in front of gunicorn append the client's address to
# X-Forwarded-For. 0 (default): the header is ignored and REMOTE_ADDR is the
# client, since anyone can send the header. 1 (one nginx): the last address in
# the header, the one nginx added. Rate limits and login lockout both use it
# (tasks_app.api.throttles.client_ip); never more than the proxies really there.
NUM_PROXIES = env_int("NUM_PROXIES", 0)

# Throttle counters live in a cache every web process shares. Default: a table
# in the database (`manage.py createcachetable` creates it; the test runner
# does it by itself). THROTTLE_CACHE_URL=redis://host:6379/1 uses Redis instead
# (needs the redis package). The default cache stays per-process memory.
THROTTLE_CACHE_URL = env_str("THROTTLE_CACHE_URL", "").strip()
if not THROTTLE_CACHE_URL:
    _throttle_cache: dict[str, Any] = {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "throttle_cache",
        # One row per client and scope; expired rows are culled beyond this.
        "OPTIONS": {"MAX_ENTRIES": 10000},
    }
elif THROTTLE_CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    _throttle_cache = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": THROTTLE_CACHE_URL}
else:
    raise ImproperlyConfigured(
        f"THROTTLE_CACHE_URL must be empty (the database) or a redis:// URL, got {THROTTLE_CACHE_URL!r}"
    )
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": _throttle_cache,
}

# Login lockout (django-axes) on /accounts/login/ and the admin's login: after
# AXES_FAILURE_LIMIT wrong passwords for one username from one address, that
# username is refused from that address for AXES_COOLOFF_TIME hours (0: until
# `manage.py axes_reset`). Keyed by the pair so that a guesser can't lock
# another person out from elsewhere, and the people behind one office NAT
# aren't locked out together.
AXES_ENABLED = env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = env_float("AXES_COOLOFF_TIME", 1.0) or None
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "tasks_app.api.throttles.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Axes' backend first: it refuses a locked-out login before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# "text" (default) or "json": one JSON object per line (time, level, logger,
# message, and task_id / stage / worker_id where known; tasks_app.logcontext).
TASKS_LOG_FORMAT = env_choice("TASKS_LOG_FORMAT", "text", ("text", "json"))
# Level of the tasks_app loggers (case does not matter: "info" is INFO).
TASKS_LOG_LEVEL = env_choice("TASKS_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
        },
    },
    "filters": {"log_context": {"()": "tasks_app.logcontext.ContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if TASKS_LOG_FORMAT == "json" else "plain",
            "filters": ["log_context"],
        },
    },
    "loggers": {
        "tasks_app": {"handlers": ["console"], "level": TASKS_LOG_LEVEL},
        # Server errors (500s) with their tracebacks, also with DEBUG off, where
        # Django's own console handler is silent and nothing else would say why.
        # In development the 4xx warnings ("Not Found: ...") show as before.
        "django.request": {"handlers": ["console"], "level": "WARNING" if DEBUG else "ERROR", "propagate": False},
    },
}
if TASKS_LOG_FORMAT == "json":
    # Every line a process writes to stderr is JSON: Django's own loggers (request
    # errors, runserver) and other libraries' warnings go through the same handler.
    LOGGING["loggers"]["django"] = {"handlers": ["console"], "level": "INFO", "propagate": False}
    LOGGING["loggers"]["django.server"] = {"handlers": ["console"], "level": "INFO", "propagate": False}
    LOGGING["root"] = {"handlers": ["console"], "level": "WARNING"}
    LOGGING["loggers"]["tasks_app"]["propagate"] = False  # or root would write its lines again

# Who may name code (README, "Who can do what"): a stage's handler (script and
# job stages) or transform (hook stages) must be a callable defined in a module
# under one of these comma-separated prefixes ("acme.tasks" allows acme.tasks and
# acme.tasks.billing, not acme.tasks2). People who may edit stages choose among
# them; only whoever sets the environment widens the list. Default: the demo's
# handlers with DEBUG on, none with DEBUG off. The standard library is refused,
# and so is the test suite (`tests`, shipped in the deployed tree) with DEBUG off;
# the test run names it explicitly (tests/conftest.py).


def _handler_module_problem(module: str) -> str | None:
    top = module.partition(".")[0]
    if not all(part.isidentifier() for part in module.split(".")):
        return "is not a dotted module name"
    if top in sys.stdlib_module_names:
        return "is the standard library; list your own modules"
    if top == "tests" and not DEBUG:
        return "is the test suite, refused with DEBUG off"
    return None


_HANDLER_MODULES_DEFAULT = "tasks_app.demo" if DEBUG else ""
TASKS_HANDLER_MODULES = env_list("TASKS_HANDLER_MODULES", _HANDLER_MODULES_DEFAULT, item=_handler_module_problem)

# Script files a stage's handler may name ("scripts/orders.py": a handler ending in
# ".py" is a file the worker runs top to bottom, README "Coming from Abstra"): the
# comma-separated directories they must lie in, relative to BASE_DIR or absolute.
# A file counts only if its real path (symlinks resolved) is inside one of them.
# Default: the Abstra examples with DEBUG on, none with DEBUG off. Refused: the
# filesystem root, BASE_DIR itself or a directory above it (all of the engine's own
# code would become runnable), and the test suite with DEBUG off.


def _script_dir_problem(entry: str) -> str | None:
    real = (BASE_DIR / entry).resolve()  # an absolute entry stays itself
    if real == Path(real.anchor) or real == BASE_DIR or real in BASE_DIR.parents:
        return "is the filesystem root, the project directory or above it; name a directory of scripts"
    if not DEBUG and (real == BASE_DIR / "tests" or BASE_DIR / "tests" in real.parents):
        return "is the test suite, refused with DEBUG off"
    return None


_SCRIPT_DIRS_DEFAULT = "examples/abstra" if DEBUG else ""
TASKS_SCRIPT_DIRS = env_list("TASKS_SCRIPT_DIRS", _SCRIPT_DIRS_DEFAULT, item=_script_dir_problem)

# Engine knobs. Their bounds are in workflowsite.env.BOUNDS, which tasks_app.checks
# also holds values set in Python to.
# Default lock timeout of a stage, in seconds.
TASKS_LOCK_TIMEOUT = env_int("TASKS_LOCK_TIMEOUT", 300)
# How long an idle worker sleeps between polls, in seconds.
TASKS_POLL_INTERVAL = env_float("TASKS_POLL_INTERVAL", 1.0)
# Retry backoff after a failed attempt: base * 2**(attempt-1), capped, with jitter.
TASKS_RETRY_BACKOFF_BASE = env_float("TASKS_RETRY_BACKOFF_BASE", 5.0)
TASKS_RETRY_BACKOFF_MAX = env_float("TASKS_RETRY_BACKOFF_MAX", 3600.0)
# Fraction of the delay that is randomised (0 = no jitter, 1 = anywhere in [0, delay]).
TASKS_RETRY_JITTER = env_float("TASKS_RETRY_JITTER", 0.5)
# Largest task payload accepted, in bytes of compact JSON (the API answers 413 beyond it).
TASKS_MAX_PAYLOAD_BYTES = env_int("TASKS_MAX_PAYLOAD_BYTES", 256 * 1024)
# Deepest nesting of objects and arrays in a payload ({} is 1 level); deeper
# payloads are refused with a 400 wherever they enter (API, hooks, pages,
# commands, handler sends). At most 200: much deeper documents break recursive
# code (JSON encoding, schema validation) before any check could run.
TASKS_MAX_PAYLOAD_DEPTH = env_int("TASKS_MAX_PAYLOAD_DEPTH", limits.DEFAULT_PAYLOAD_DEPTH)
# Largest API request body (bulk requests carry many payloads); 413 beyond it.
API_MAX_REQUEST_BYTES = env_int("API_MAX_REQUEST_BYTES", 16 * 1024 * 1024)
# How often a worker sweeps expired locks, in seconds.
TASKS_EXPIRE_INTERVAL = env_float("TASKS_EXPIRE_INTERVAL", 30.0)
# How often a worker updates its registry row, and after how long without an
# update it is shown as dead, in seconds.
TASKS_WORKER_HEARTBEAT = env_float("TASKS_WORKER_HEARTBEAT", 5.0)
TASKS_WORKER_DEAD_AFTER = env_float("TASKS_WORKER_DEAD_AFTER", 60.0)
# PostgreSQL: creating tasks notifies idle workers (LISTEN/NOTIFY); at most one
# notification per stage per this many seconds from one process.
TASKS_NOTIFY = env_bool("TASKS_NOTIFY", True)
TASKS_NOTIFY_THROTTLE = env_float("TASKS_NOTIFY_THROTTLE", 0.05)
# PostgreSQL: prepare the claim and completion statements (turn off behind
# PgBouncer in transaction mode before 1.21).
TASKS_PG_PREPARE = env_bool("TASKS_PG_PREPARE", True)
# Signed hook requests: the largest clock difference accepted (and how long
# their signatures are remembered to refuse replays).
TASKS_HOOK_TOLERANCE = env_float("TASKS_HOOK_TOLERANCE", 300.0)
# Job stages: seconds between the scheduler's looks for due jobs, and the most
# tasks one run takes from its stage (the rest wait for the next run).
TASKS_SCHEDULER_INTERVAL = env_float("TASKS_SCHEDULER_INTERVAL", 1.0)
TASKS_JOB_MAX_TASKS = env_int("TASKS_JOB_MAX_TASKS", 10000)
# Retention: workers delete completed and failed tasks (and their history)
# finished more than this many days ago, as `manage.py prune_tasks` does.
# Unset or 0 keeps every task forever. Fractions are allowed (0.5 = 12 hours).
TASKS_RETENTION_DAYS = env_float("TASKS_RETENTION_DAYS", 0.0) or None
# How often each worker prunes, in seconds (one worker at a time prunes: the
# others skip their turn while it does).
TASKS_PRUNE_INTERVAL = env_float("TASKS_PRUNE_INTERVAL", 3600.0)
# GET /metrics (Prometheus): scrapers send "Authorization: Bearer <token>", or
# come from an allowed address (comma-separated IPs or CIDR networks, matched
# against REMOTE_ADDR). Neither set: /metrics answers 404 (users with the
# view-task permission can still read it when logged in).
TASKS_METRICS_TOKEN = env_str("TASKS_METRICS_TOKEN", "").strip()
if TASKS_METRICS_TOKEN and len(TASKS_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("TASKS_METRICS_TOKEN must be at least 16 characters")


def _network_problem(network: str) -> str | None:
    try:
        ipaddress.ip_network(network, strict=False)
    except ValueError:
        return "is not an IP address or network"
    return None


TASKS_METRICS_ALLOW = env_list("TASKS_METRICS_ALLOW", item=_network_problem)
# Seconds a process reuses its last /metrics body (each computation folds the
# history into the counters); 0 computes every scrape.
TASKS_METRICS_CACHE = env_float("TASKS_METRICS_CACHE", 15.0)

# Notify on arrival (issue 16; services.notifications): mail through Django's email framework. The console
# backend (the default) prints each mail in the worker's output; in production set EMAIL_BACKEND to
# django.core.mail.backends.smtp.EmailBackend with EMAIL_HOST etc., or to an API provider's backend
# (django-anymail, installed separately). Links in mails start with TASKS_BASE_URL.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0)  # a drain never hangs on a mail server
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "tasks@localhost")
TASKS_BASE_URL = env_str("TASKS_BASE_URL", "http://localhost:8000")
# Signs outbound webhooks (X-Tasks-Signature, services.webhooks); unset, a stage's webhook is not called.
TASKS_WEBHOOK_SECRET = env_str("TASKS_WEBHOOK_SECRET", "")
# One-click decision links in mails (services.decision_tokens): seconds a link stays usable (default 7 days).
TASKS_DECISION_LINK_MAX_AGE = env_int("TASKS_DECISION_LINK_MAX_AGE", 7 * 24 * 3600)

# REST API (Django REST framework).
REST_FRAMEWORK = {
    # Token first: an unauthenticated request then gets 401 with WWW-Authenticate: Token.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tasks_app.api.permissions.ModelPermissions"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "tasks_app.api.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    # Counters in the shared "throttle" cache, clients told apart by client_ip.
    "DEFAULT_THROTTLE_CLASSES": [
        "tasks_app.api.throttles.UserRateThrottle",
        "tasks_app.api.throttles.AnonRateThrottle",
    ],
    # For DRF's own get_ident (None would trust X-Forwarded-For from anyone).
    "NUM_PROXIES": NUM_PROXIES,
    "DEFAULT_THROTTLE_RATES": {
        "user": env_rate("API_THROTTLE_USER", "20000/minute"),
        "anon": env_rate("API_THROTTLE_ANON", "120/minute"),
        "hook": env_rate("HOOK_THROTTLE", "600/minute"),
    },
    "EXCEPTION_HANDLER": "tasks_app.api.errors.api_exception_handler",
    # JSON only: every endpoint takes JSON objects (payloads are objects, not form lists), the schema
    # advertises only JSON bodies, and the browsable API still offers its raw JSON form. Form and
    # multipart bodies are a 415.
    "DEFAULT_PARSER_CLASSES": ["tasks_app.api.parsers.BoundedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Workflow tasks API",
    "DESCRIPTION": "Create, claim and complete tasks; manage stages and transitions.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the sidecar package: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Every endpoint but health needs a login, the schema and its docs too.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # The contract is JSON: the form parsers stay for the browsable API, but a
    # nested body (tasks, sends) has no form encoding worth documenting.
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    # Error answers (400/401/403/404/409/413/415/429) are the same for every view: documented once.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tasks_app.api.openapi.document_errors",
    ],
    # Several answers have a `status`: each choice set gets its own name.
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": "tasks_app.models.Task.Status",
        "BulkCompleteStatusEnum": ["completed", "lock_lost", "error"],
        "HealthStatusEnum": ["ok"],
        "HealthErrorStatusEnum": ["error"],
    },
    "TAGS": [
        {"name": "tasks", "description": "Create, list and inspect tasks; complete, release and heartbeat claims."},
        {"name": "stages", "description": "Stages, and the stage-level task verbs: send and claim."},
        {"name": "transitions", "description": "Which stage a task sent out of a stage goes to, by type."},
        {"name": "hooks", "description": "Outside systems send tasks out of hook stages with the stage's secret."},
        {"name": "health", "description": "Liveness for load balancers: no login."},
    ],
}
