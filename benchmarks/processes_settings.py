"""Django settings of ``benchmarks/worker_processes.py``: a new project's
defaults (no ``LOGGING``, ``DEBUG`` off) and the vtasks backend with only its
URL, taken from ``VTASKS_BENCH_URL``."""

from __future__ import annotations

import os

SECRET_KEY = "worker-processes-benchmark"
USE_TZ = True
INSTALLED_APPS = ["vtasks.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
TASKS = {
    "default": {
        "BACKEND": "vtasks.django.ValkeyTaskBackend",
        "OPTIONS": {"URL": os.environ.get("VTASKS_BENCH_URL", "valkey://127.0.0.1:6379")},
    }
}
