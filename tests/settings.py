"""Settings for the test suite: the real settings module, with test-only values set first."""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlsplit

os.environ.setdefault("SECRET_KEY", "reslock-tests-only")
# A pytest-xdist worker inherits what the controlling process set here: it takes its own.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ["RESLOCK_VAR_DIR"] = tempfile.mkdtemp(prefix=f"reslock-test-var-{WORKER}-")
else:
    os.environ.setdefault("RESLOCK_VAR_DIR", tempfile.mkdtemp(prefix="reslock-test-var-"))
# Redis database 15 keeps test messages away from a `make run` on the same machine; each
# xdist worker uses one of its own on the same server (tests/support/redis_server.py).
if "REDIS_URL" not in os.environ:
    from tests.support.redis_server import ensure_redis_url

    os.environ["REDIS_URL"] = ensure_redis_url()
elif WORKER:
    from tests.support.redis_server import DB

    given = urlsplit(os.environ["REDIS_URL"])
    os.environ["REDIS_URL"] = given._replace(path=f"/{DB}").geturl()
# Playwright's sync API runs an event loop in the test thread, which Django would refuse.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from reslock_web.settings import *  # noqa: E402,F403
from reslock_web.settings import DATABASES, STORAGES, VAR_DIR  # noqa: E402

# A file, not SQLite's in-memory database, so that subprocesses (management commands, the
# launcher) see the same rows as the test.
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# WhiteNoise warns about a missing STATIC_ROOT; the tests serve static files through finders.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405
