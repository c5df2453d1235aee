"""reslock settings: everything an operator may change comes from the environment.

Every variable is listed, with its default, in the README's configuration table.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import dj_database_url

from reslock_web.env import (
    SettingError,
    envbool,
    envchoice,
    envint,
    envlist,
    envstr,
    envurl,
    is_prefect_cloud,
    prefect_ui_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("RESLOCK_VAR_DIR", str(BASE_DIR / "var"))).resolve()

DEBUG = envbool("DEBUG", False)
SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise SettingError("SECRET_KEY", "", "a long random string (required unless DEBUG=true)")
    SECRET_KEY = "reslock-debug-only-not-secret"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "reslock_web",
]

MIDDLEWARE = [
    # Before anything asks whether the request came over HTTPS.
    "reslock_web.security.ForwardedProtoMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "reslock_web.web.login_throttle.UndeclaredProxyMiddleware",
    "reslock_web.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # A locked or unreachable database answers 503 with a plain page, not a stack trace.
    "reslock_web.web.dberrors.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "reslock_web.urls"
WSGI_APPLICATION = "reslock_web.wsgi.application"

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
                "reslock_web.web.context_processors.reslock",
            ],
        },
    },
]


def _private_sqlite_file(path: Path) -> None:
    """The database holds the sessions: another local user who read it could take over one.

    SQLite creates its file (and its -wal and -shm files, which copy the file's mode)
    world-readable under the usual umask: create it empty with mode 0600 first, in a folder
    of mode 0700 when we create that folder.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _database(url: str) -> dict:
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError:
        raise SettingError(
            "DATABASE_URL", url, "sqlite:////absolute/path.db or postgres://user@host:5432/name"
        ) from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        if config["NAME"] not in ("", ":memory:"):
            _private_sqlite_file(Path(config["NAME"]))
        # Several processes (web, worker, beat) share the file: wait for locks instead of
        # failing at once, and let readers go on while one process writes.
        config["CONN_MAX_AGE"] = 0
        config["OPTIONS"] = {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    return config


DATABASE_URL = envurl(
    "DATABASE_URL",
    f"sqlite:///{VAR_DIR / 'reslock.sqlite3'}",
    schemes=("sqlite", "postgres", "postgresql", "pgsql"),
)
DATABASES = {"default": _database(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Process-local caches only: nothing here must be shared to be right (see board_cache).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Drawn board rows (~1 kB each, keyed by their change stamp) and pages (~40 kB, keyed by
    # the board's version): a few MB for a board of several thousand resources.
    "board": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "reslock-board",
        "TIMEOUT": 600,
        "OPTIONS": {"MAX_ENTRIES": 20000},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "board"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "static"))).resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Security ---
SESSION_COOKIE_HTTPONLY = True
# Served over HTTPS (production, behind a TLS proxy): cookies never travel in clear and browsers
# are told to come back over HTTPS only. On unless DEBUG; `make run` and docker-compose serve
# plain http and turn it off.
SECURE_COOKIES = envbool("RESLOCK_SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
if SECURE_COOKIES:
    # The proxy terminates TLS and says so in X-Forwarded-Proto; Django then knows the request
    # was HTTPS and adds HSTS. The header counts only from RESLOCK_TRUSTED_PROXIES proxies
    # (security.ForwardedProtoMiddleware): with none declared, a client could claim HTTPS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
# Django's debug page and error reports hide the passwords inside DATABASE_URL, REDIS_URL and
# the broker URL too, not only settings named like secrets.
DEFAULT_EXCEPTION_REPORTER_FILTER = "reslock_web.security.ExceptionReporterFilter"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# htmx runs without eval and without injected styles (see base.html), so nothing inline is needed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# Password guessing (login_throttle): failures count for an hour. Past the free ones, each
# attempt waits after the latest failure, twice as long for every further failure (1 minute,
# 2, 4, 8, at most 15), and is refused unchecked until then.
LOGIN_FAILURE_WINDOW_SECONDS = 60 * 60
LOGIN_FAILURE_LIMIT = 5  # free failures for one account from one address (an IPv6 /64)
LOGIN_ACCOUNT_FAILURE_LIMIT = 20  # for one account from every address together
LOGIN_ADDRESS_FAILURE_LIMIT = 20  # from one address over every account
LOGIN_FIRST_DELAY_SECONDS = 60
LOGIN_MAX_DELAY_SECONDS = 15 * 60
# How many proxies in front of the web server append to X-Forwarded-For; 0 trusts no header
# (the client's address is the connection's).
TRUSTED_PROXIES = envint("RESLOCK_TRUSTED_PROXIES", 0, minimum=0, maximum=5)
# Bearer token that Prometheus sends to /metrics; unset, /metrics answers 404.
METRICS_TOKEN = envstr("RESLOCK_METRICS_TOKEN")
# Where a resource entering or leaving a bad status is announced (Slack-compatible JSON), and
# the board's own address for the links in those messages; empty: no webhook.
WEBHOOK_URL = envurl("RESLOCK_WEBHOOK_URL", "", schemes=("http", "https"))
BOARD_URL = envurl("RESLOCK_BOARD_URL", "", schemes=("http", "https")).rstrip("/")
# Safe self-healing, off by default: "stale" releases stale holders whose release is provably
# safe, once their run has been over for the grace (operations/policy.py).
AUTO_RELEASE = envchoice("RESLOCK_AUTO_RELEASE", "", ("", "stale"))
AUTO_RELEASE_GRACE_MINUTES = envint(
    "RESLOCK_AUTO_RELEASE_GRACE_MINUTES", 10, minimum=1, maximum=1440
)

# --- Celery (read by reslock_web.celery through the CELERY_ namespace) ---
REDIS_URL = envurl("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))
CELERY_BROKER_URL = envurl(
    "CELERY_BROKER_URL", REDIS_URL, schemes=("redis", "rediss", "unix", "filesystem", "memory")
)
BROKER_DIR = Path(envstr("RESLOCK_BROKER_DIR", str(VAR_DIR / "broker"))).resolve()
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Celery's file transport moves messages between two folders; pointing both at the same
    # absolute folder lets every process (web, worker, beat) see every message.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "messages"),
        "data_folder_out": str(BROKER_DIR / "messages"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Exchange tables; kombu's default is "control" under the current directory.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
# The hard time limit of one job (an operation's fenced release waits up to ~3 minutes). An
# operation still running this long (plus a margin) after it started lost its worker: the
# sweep ends it, saying what Prefect shows.
OPERATION_TIMEOUT_SECONDS = envint("RESLOCK_OPERATION_TIMEOUT", 300, minimum=10, maximum=3600)
# A killed worker's unacknowledged message comes back after this many seconds. Keep it above
# RESLOCK_OPERATION_TIMEOUT: a shorter one hands running jobs to a second worker as well, which
# is harmless (the claim makes it a no-op) but wasted; a much longer one delays recovery.
VISIBILITY_TIMEOUT_SECONDS = envint("RESLOCK_VISIBILITY_TIMEOUT", 600, minimum=1, maximum=86400)
if not CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = OPERATION_TIMEOUT_SECONDS
CELERY_TASK_SOFT_TIME_LIMIT = OPERATION_TIMEOUT_SECONDS * 4 // 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Prefect ---
PREFECT_API_URL = envurl("PREFECT_API_URL", "http://127.0.0.1:4200/api", schemes=("http", "https"))
PREFECT_API_KEY = envstr("PREFECT_API_KEY")
PREFECT_UI_URL = envurl(
    "PREFECT_UI_URL",
    # Links are shown to every viewer: never with the API's user name and password.
    prefect_ui_url(PREFECT_API_URL),
    schemes=("http", "https"),
)
PREFECT_TIMEOUT_SECONDS = envint("RESLOCK_PREFECT_TIMEOUT", 10, minimum=1, maximum=300)
# Requests a minute all reslock processes together send to Prefect (prefect_budget.py); 0: no
# limit. Prefect Cloud's smallest plan allows 250 a minute for the whole workspace, flows
# included, so a Cloud workspace gets 100 unless told otherwise; a self-hosted server none.
PREFECT_MAX_REQUESTS_PER_MINUTE = envint(
    "RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE",
    100 if is_prefect_cloud(PREFECT_API_URL) else 0,
    minimum=0,
    maximum=1_000_000,
)

# --- reslock ---
SYNC_SECONDS = envint("RESLOCK_SYNC_SECONDS", 10, minimum=2, maximum=3600)
# While the live listener is connected and current, the complete sync runs this often only
# (sync_plan.py); events carry the board in between.
FULL_SYNC_SECONDS = envint(
    "RESLOCK_FULL_SYNC_SECONDS", max(300, SYNC_SECONDS), minimum=SYNC_SECONDS, maximum=86400
)
# The longest wait between periodic syncs while Prefect keeps failing (see sync/health.py).
SYNC_BACKOFF_MAX_SECONDS = envint("RESLOCK_SYNC_BACKOFF_MAX_SECONDS", 300, minimum=10, maximum=3600)
HEARTBEAT_SECONDS = envint("RESLOCK_HEARTBEAT_SECONDS", 30, minimum=5, maximum=3600)
LONG_HOLD_SECONDS = envint("RESLOCK_LONG_HOLD_SECONDS", 3600, minimum=60)
# How long a lost slot or a count mismatch must last before it is called a zombie or drift:
# Prefect's events reach its API a few seconds after the state changes they explain.
GRACE_SECONDS = envint("RESLOCK_GRACE_SECONDS", 20, minimum=0, maximum=600)
# The lease duration assumed for a global-limit holder that did not say its own (Prefect's
# concurrency() default): a drift repair waits this long so that no live lease is undercut.
ASSUMED_LEASE_SECONDS = envint("RESLOCK_ASSUMED_LEASE_SECONDS", 300, minimum=60, maximum=86400)
# Days of events the first sync reads (Prefect keeps 7 by default).
EVENTS_BACKFILL_DAYS = envint("RESLOCK_EVENTS_BACKFILL_DAYS", 7, minimum=1, maximum=30)
# Days lock events and applied-event ids are kept (retention.py). Longer than the backfill: the
# sync never reads further back than that, so a pruned event can never be recorded again (an
# acquire recorded again without its pruned release would show a holder that left long ago).
EVENTS_RETENTION_DAYS = envint(
    "RESLOCK_EVENTS_RETENTION_DAYS", 8, minimum=EVENTS_BACKFILL_DAYS + 1, maximum=3650
)

LOG_LEVEL = envstr("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise SettingError("LOG_LEVEL", LOG_LEVEL, "one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            # Blanks out the Prefect API key, should any message or traceback carry it.
            "()": "reslock_web.security.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
