"""The shop's settings, from its environment (the box writes it to a root-only file).

SECRET_KEY     required: Django's signing key (a secret, given at deploy time)
ALLOWED_HOSTS  the domains it answers, comma-separated (default: none; /health/ answers any)
DATABASE_PATH  the SQLite file, on the service's volume (default /var/lib/shop/db.sqlite3)
"""
import os

SECRET_KEY = os.environ["SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = [name.strip() for name in os.environ.get("ALLOWED_HOSTS", "").split(",") if name.strip()]

INSTALLED_APPS = ["shop"]
MIDDLEWARE = [
    "shop.health.HealthMiddleware",  # first: /health/ answers whatever Host a checker sends
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DATABASE_PATH", "/var/lib/shop/db.sqlite3"),
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Errors to stderr, so they reach the journal with gunicorn's lines (journalctl -u shop).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["console"], "level": "INFO"}},
}
