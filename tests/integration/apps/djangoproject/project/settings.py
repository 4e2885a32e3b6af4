"""Settings of the small Django project the integration tests serve.

The sqlite database lives in the directory named by ``DJANGO_TEST_DATA``
(a test's temporary directory). No ``ALLOWED_HOSTS`` beyond loopback, no
``CSRF_TRUSTED_ORIGINS`` and no ``USE_X_FORWARDED_HOST``: the web server
passes the client's Host header, port included, and that must be enough.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(os.environ["DJANGO_TEST_DATA"])

SECRET_KEY = "integration-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
    }
}

USE_TZ = True
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Uploads above this go to a temporary file: the 2 MB test upload takes that path.
FILE_UPLOAD_MAX_MEMORY_SIZE = 512 * 1024
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR)
DATA_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
