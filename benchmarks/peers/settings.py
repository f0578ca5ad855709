"""Settings for the comparison benchmark, chosen by environment variables:

- ``BENCH_SYSTEM``: ``vtasks-module``, ``vtasks-scripts``, ``vtasks-auto``
  (the backend's default ``ENGINE``), ``django-vtasks``, ``celery`` or
  ``rq``;
- ``BENCH_URL``: the Valkey URL every system connects to (through the
  latency proxy in the latency runs);
- ``BENCH_CONCURRENCY``: the worker's concurrency (200; empty: each
  system's default);
- ``BENCH_LOGGING``: ``default`` (no ``LOGGING`` setting: Django's own
  logging, whose ``django`` logger is at INFO with handlers that drop what
  a project with ``DEBUG = False`` does not show), ``tasks-warning`` (the
  ``django.tasks`` logger at WARNING) or ``root-console`` (a common setup:
  a console handler on the root logger, which then prints the INFO lines of
  Django's own ``django.tasks`` receivers).
"""

from __future__ import annotations

import os

SYSTEM = os.environ.get("BENCH_SYSTEM", "vtasks-module")
URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/0").replace("valkey://", "redis://")
CONCURRENCY = os.environ.get("BENCH_CONCURRENCY", "200")

SECRET_KEY = "benchmark"
DEBUG = False
USE_TZ = True
# What a new project has (django-vtasks' sync enqueue waits for the
# transaction through `on_commit`, which needs a database); no query runs.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
INSTALLED_APPS: list[str] = []

LOGGING_CHOICE = os.environ.get("BENCH_LOGGING", "default")
if LOGGING_CHOICE == "tasks-warning":
    LOGGING = {"version": 1, "disable_existing_loggers": False, "loggers": {"django.tasks": {"level": "WARNING"}}}
elif LOGGING_CHOICE == "root-console":
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "root": {"handlers": ["console"], "level": "WARNING"},
    }
elif LOGGING_CHOICE != "default":
    raise RuntimeError(f"BENCH_LOGGING={LOGGING_CHOICE!r}")

if SYSTEM in ("vtasks-module", "vtasks-scripts", "vtasks-auto"):
    INSTALLED_APPS = ["vtasks.django"]
    TASKS = {
        "default": {
            "BACKEND": "vtasks.django.ValkeyTaskBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"URL": URL}
            if SYSTEM == "vtasks-auto"
            else {"URL": URL, "ENGINE": SYSTEM.removeprefix("vtasks-")},
        }
    }
elif SYSTEM == "django-vtasks":
    INSTALLED_APPS = ["django_vtasks"]
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"BROKER_URL": URL},
        }
    }
    VTASKS_QUEUES = ["default"]
    if CONCURRENCY:
        VTASKS_CONCURRENCY = int(CONCURRENCY)
    VTASKS_RUN_SCHEDULER = False
elif SYSTEM == "rq":
    INSTALLED_APPS = ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
    RQ_QUEUES = {"default": {"URL": URL}}
elif SYSTEM == "celery":
    pass  # Celery is configured in benchmarks.peers.celery_app
else:
    raise RuntimeError(f"BENCH_SYSTEM={SYSTEM!r}")
