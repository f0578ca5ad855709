"""Settings of the example project: a Django 6 project whose tasks run on
vtasks. `VTASKS_URL` points it at Valkey with the vtasks module."""

import os

SECRET_KEY = "vtasks-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["vtasks.django", "shop"]
ROOT_URLCONF = "demo_project.urls"
ASGI_APPLICATION = "demo_project.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True

TASKS = {
    "default": {
        "BACKEND": "vtasks.django.ValkeyTaskBackend",
        "QUEUES": ["default"],
        "OPTIONS": {
            "URL": os.environ.get("VTASKS_URL", "valkey://127.0.0.1:6379"),
            "MAX_ATTEMPTS": 3,
        },
    }
}
