"""Django settings of the integration tests; each test points TASKS at its
own valkey-server (see the `django_valkey` fixture; a worker process of a
test gets the URL in VTASKS_TEST_URL), with the backend's default options.
The admin and the vtasks URLs are installed for the operator pages' tests."""

import os

SECRET_KEY = "vtasks-tests"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "vtasks.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "tests.django_project.urls"
STATIC_URL = "/static/"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
TASKS = {
    "default": {
        "BACKEND": "vtasks.django.ValkeyTaskBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"URL": os.environ.get("VTASKS_TEST_URL", "valkey://127.0.0.1:1")},
    }
}
