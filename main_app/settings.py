"""
Settings for the ChargeGhar main backend.

Every knob is read from the environment (or a `.env` file beside manage.py) through one
django-environ `Env`. Development defaults are safe; production values must be set.
`.env.example` documents every variable.
"""

import ipaddress
import sys
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# Under `manage.py test` or pytest. The test runners need no .env and ignore one, so a
# developer's local settings (a database, an IP allowlist) cannot change what tests see.
RUNNING_TESTS = sys.argv[1:2] == ["test"] or "pytest" in sys.modules

env = environ.Env()
if not RUNNING_TESTS:
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# The placeholder shipped in .env.example; never acceptable outside development.
PLACEHOLDER_SECRET = "change-me-to-a-long-random-secret"


# django-environ reads any unknown word as False (DJANGO_DEBUG=maybe, IOT_SIGNATURE_VERIFICATION=
# yes-please), so booleans are parsed here and anything but these spellings is refused.
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}


def _read(name, cast, default):
    """Read one variable; a value that does not parse stops start-up with its name."""
    if cast == "bool":
        raw = env.str(name, default=None)
        if raw is None:
            return default
        if raw.strip().lower() not in _BOOLEANS:
            raise ImproperlyConfigured(
                f"Environment variable {name} has a value that does not parse as bool: {raw!r} "
                "(use true/false, 1/0, yes/no or on/off)"
            )
        return _BOOLEANS[raw.strip().lower()]
    try:
        return getattr(env, cast)(name, default=default)
    except (ValueError, TypeError, ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(
            f"Environment variable {name} has a value that does not parse as {cast}: {exc}"
        ) from None


DEBUG = _read("DJANGO_DEBUG", "bool", False)

SECRET_KEY = _read("DJANGO_SECRET_KEY", "str", "")
if not SECRET_KEY or SECRET_KEY == PLACEHOLDER_SECRET:
    if DEBUG or RUNNING_TESTS:
        SECRET_KEY = "insecure-development-key-do-not-use-in-production"
    else:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set to a real secret when DJANGO_DEBUG is off."
        )

ALLOWED_HOSTS = _read(
    "DJANGO_ALLOWED_HOSTS",
    "list",
    ["localhost", "127.0.0.1", "[::1]"] if DEBUG or RUNNING_TESTS else [],
)
CSRF_TRUSTED_ORIGINS = _read("DJANGO_CSRF_TRUSTED_ORIGINS", "list", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "api.users",
    "api.stations",
    "api.rentals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before sessions, CSRF and auth: signed IoT requests are rejected (or let through)
    # on headers and raw bytes alone, and never touch a session.
    "main_app.middleware.IoTSignatureValidationMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "main_app.urls"
WSGI_APPLICATION = "main_app.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "main_app" / "templates"],
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

# --- Database -------------------------------------------------------------------------
# Unset DATABASE_URL means a SQLite file in the project (zero set-up);
# postgres://user:pass@host:port/name means PostgreSQL with persistent connections.
try:
    DATABASES = {
        "default": env.db_url(
            "DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
        )
    }
except (ValueError, KeyError, ImproperlyConfigured) as exc:
    raise ImproperlyConfigured(f"Environment variable DATABASE_URL does not parse: {exc}") from None
# django-environ passes an unknown scheme through as the ENGINE (and an empty URL as no ENGINE
# at all), which would fail later without naming the variable. Only these two are supported:
# the invariants rely on partial unique indexes and check constraints.
if DATABASES["default"].get("ENGINE") not in (
    "django.db.backends.postgresql",
    "django.db.backends.sqlite3",
):
    raise ImproperlyConfigured(
        "Environment variable DATABASE_URL must be a postgres:// or sqlite:// URL."
    )

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Reconnecting costs a new server process and the prepared statements of the hot path;
    # with a connection per worker thread, a short age means a reconnect every few seconds
    # somewhere (docs/performance.md).
    DATABASES["default"]["CONN_MAX_AGE"] = _read("DATABASE_CONN_MAX_AGE", "int", 600)
    # Off by default: the check is an extra round trip (SELECT 1) at the start of every
    # request. Without it, the first request on a connection the server dropped fails with
    # 503 and the sender's retry gets a fresh connection.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = _read("DATABASE_CONN_HEALTH_CHECKS", "bool", False)
    DATABASES["default"].setdefault("OPTIONS", {})
    # Fail fast when the server is unreachable, so the sender gets a 503 quickly
    # instead of hanging into its 15 s read timeout.
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", _read("DATABASE_CONNECT_TIMEOUT", "int", 3)
    )
    # Prepared statements: psycopg prepares a statement on the server after it ran this many
    # times on a connection, so PostgreSQL stops parsing and planning the hot path's queries
    # again for every message (a third of its CPU per full sync when measured; see
    # docs/performance.md). 0 turns them off, as PgBouncer in transaction mode before 1.21 needs.
    prepare_threshold = _read("DATABASE_PREPARE_THRESHOLD", "int", 2)
    if prepare_threshold > 0:
        DATABASES["default"]["OPTIONS"].setdefault("server_side_binding", True)
        DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", prepare_threshold)
    DATABASES["default"]["TEST"] = {"NAME": _read("DATABASE_TEST_NAME", "str", None)}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {})
    # Wait for the writer lock instead of failing at once, and take it at BEGIN so two
    # writers never deadlock on an upgrade from a read lock.
    DATABASES["default"]["OPTIONS"].update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "users.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if RUNNING_TESTS:
    # Hashing cost is irrelevant to what the tests pin and dominates their run time.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files (whitenoise serves them under gunicorn with DEBUG off) --------------
STATIC_URL = "static/"
STATIC_ROOT = Path(_read("DJANGO_STATIC_ROOT", "str", str(BASE_DIR / "staticfiles")))
if RUNNING_TESTS:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing root
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if RUNNING_TESTS
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Security headers for production ---------------------------------------------------
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if _read("DJANGO_BEHIND_TLS_PROXY", "bool", False) else None
)
SESSION_COOKIE_SECURE = _read("DJANGO_SECURE_COOKIES", "bool", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- REST framework and JWT ------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.users.authentication.CachedUserJWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "main_app.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

# How long a bearer token's user (active? staff?) is reused before it is read again, per
# process (api/users/authentication.py). 0 reads it on every request; so do the test
# runners, whose databases reuse ids from test to test (tests of the cache turn it on).
AUTH_USER_CACHE_SECONDS = _read("AUTH_USER_CACHE_SECONDS", "int", 0 if RUNNING_TESTS else 10)

# Largest JSON body the admin API parses (login, refresh); larger ones get 413.
API_MAX_BODY_BYTES = _read("API_MAX_BODY_BYTES", "int", 64 * 1024)

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=_read("JWT_ACCESS_TOKEN_MINUTES", "int", 60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=_read("JWT_REFRESH_TOKEN_DAYS", "int", 7)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
    "SIGNING_KEY": _read("JWT_SIGNING_KEY", "str", "") or SECRET_KEY,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "ChargeGhar main backend",
    "DESCRIPTION": "Internal station data endpoint and the admin login used by the IoT system.",
    "VERSION": "1.0.0",
    # 3.1 speaks JSON Schema 2020-12, which the pydantic message schemas are written in.
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- IoT integration -------------------------------------------------------------------
# Shared HMAC secret with the Java sender; previous secrets stay valid during rotation.
IOT_SYSTEM_SIGNATURE_SECRET = _read("IOT_SYSTEM_SIGNATURE_SECRET", "str", "")
IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS = [
    s for s in _read("IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS", "list", []) if s
]


def _read_networks(name):
    """A comma-separated list of addresses or CIDR ranges; a bad entry stops start-up."""
    entries = [entry.strip() for entry in _read(name, "list", []) if entry.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {name} has an entry that is not an address or CIDR range: {entry!r}"
            ) from None
    return entries


# Addresses or CIDR ranges allowed to call /api/internal/; empty means any.
IOT_SYSTEM_ALLOWED_IPS = _read_networks("IOT_SYSTEM_ALLOWED_IPS")
# Proxies (addresses or CIDR ranges) whose X-Forwarded-For is believed.
IOT_TRUSTED_PROXIES = _read_networks("IOT_TRUSTED_PROXIES")
IOT_SIGNATURE_TOLERANCE_SECONDS = _read("IOT_SIGNATURE_TOLERANCE_SECONDS", "int", 300)
# Turned off only explicitly; the test runners turn it off by default (the seed's tests
# post unsigned bodies) and the signature tests turn it back on.
IOT_SIGNATURE_VERIFICATION = _read("IOT_SIGNATURE_VERIFICATION", "bool", not RUNNING_TESTS)
IOT_MAX_BODY_BYTES = _read("IOT_MAX_BODY_BYTES", "int", 1024 * 1024)
# Django refuses to read bodies above this; keep it above the IoT limit so that limit
# (checked from Content-Length in the middleware) is the one that answers.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(IOT_MAX_BODY_BYTES, 2621440)
# A bank seen in a slot this long after its rental started closes the rental (lost return).
IOT_RETURN_GRACE_SECONDS = _read("IOT_RETURN_GRACE_SECONDS", "int", 120)
IOT_OFFLINE_AFTER_MINUTES = _read("IOT_OFFLINE_AFTER_MINUTES", "int", 30)
# Seconds the sender is told to wait when the database is unreachable.
IOT_RETRY_AFTER_SECONDS = _read("IOT_RETRY_AFTER_SECONDS", "int", 5)

# --- Logging -----------------------------------------------------------------------------
LOG_DIR = Path(_read("LOG_DIR", "str", str(BASE_DIR / "logs")))
LOG_LEVEL = _read("LOG_LEVEL", "str", "INFO").upper()
LOG_TO_FILE = _read("LOG_TO_FILE", "bool", not RUNNING_TESTS)
LOG_DIR.mkdir(parents=True, exist_ok=True)

_log_handlers = ["console", "file"] if LOG_TO_FILE else ["console"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "verbose": {"format": "[{levelname}] {asctime} {name} {message}", "style": "{"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "verbose",
            "level": "WARNING" if RUNNING_TESTS else LOG_LEVEL,
        },
        "file": {
            "class": "logging.handlers.RotatingFileHandler",
            "filename": str(LOG_DIR / "iot_integration.log"),
            "maxBytes": 10 * 1024 * 1024,
            "backupCount": 5,
            "formatter": "verbose",
            "delay": True,
        },
    },
    "loggers": {
        "api": {"handlers": _log_handlers, "level": LOG_LEVEL, "propagate": False},
        "main_app": {"handlers": _log_handlers, "level": LOG_LEVEL, "propagate": False},
        # Tests provoke 5xx answers on purpose; their log lines would only bury real output.
        "django.request": {
            "handlers": _log_handlers,
            "level": "CRITICAL" if RUNNING_TESTS else "ERROR",
            "propagate": False,
        },
    },
}
if not LOG_TO_FILE:
    del LOGGING["handlers"]["file"]
