"""The project's entry points (manage.py, the WSGI app, Celery, the launcher) started as a
deployment starts them: a fresh interpreter, the production settings module, a clean
environment with the given variables (None removes one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import BASE_DIR


def run_entry_point(code: str, cwd: Path = BASE_DIR, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE"}}
    clean.update({"SECRET_KEY": "x" * 50, "DJANGO_SETTINGS_MODULE": "reslock_web.settings"})
    clean.update({"PYTHONPATH": str(BASE_DIR)}, **env)  # the project, from any directory
    clean = {k: v for k, v in clean.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=clean, capture_output=True, text=True
    )
