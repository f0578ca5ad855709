"""Django settings of the integration tests; each test points TASKS at its
own valkey-server (see the `django_valkey` fixture; a worker process of a
test gets the URL in VTASKS_TEST_URL), with the backend's default options."""

import os

SECRET_KEY = "vtasks-tests"
INSTALLED_APPS = ["vtasks.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
TASKS = {
    "default": {
        "BACKEND": "vtasks.django.ValkeyTaskBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"URL": os.environ.get("VTASKS_TEST_URL", "valkey://127.0.0.1:1")},
    }
}
