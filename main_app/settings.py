"""
Settings for the ChargeGhar main backend.

Every knob is read from the environment (or an env file, `.env` beside manage.py unless
DJANGO_ENV_FILE names another or none) through one django-environ `Env`. Development
defaults are safe; production values must be set. `.env.example` documents every variable.
The test runners use `main_app.settings_test`, which imports this module and sets the test
values; nothing here knows whether it runs under tests.
"""

import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def resolve_env_file(value, base_dir):
    """The env file DJANGO_ENV_FILE (`value`) asks for, or None for no file.

    Unset: the `.env` beside manage.py, if there is one. Empty: no file (the test settings,
    so a developer's `.env` cannot change what tests see). A path: that file, which must
    exist. The process environment wins over the file either way.
    """
    if value is None:
        default = base_dir / ".env"
        return default if default.is_file() else None
    if not value.strip():
        return None
    path = Path(value.strip())
    if not path.is_file():
        raise ImproperlyConfigured(
            f"Environment variable DJANGO_ENV_FILE names a file that does not exist: {value!r}"
        )
    return path


ENV_FILE = resolve_env_file(os.environ.get("DJANGO_ENV_FILE"), BASE_DIR)
if ENV_FILE is not None:
    environ.Env.read_env(ENV_FILE, overwrite=False)

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
    if DEBUG:
        SECRET_KEY = "insecure-development-key-do-not-use-in-production"
    else:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set to a real secret when DJANGO_DEBUG is off."
        )

ALLOWED_HOSTS = _read(
    "DJANGO_ALLOWED_HOSTS",
    "list",
    ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [],
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
    "rest_framework_simplejwt.token_blacklist",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "api.users",
    "api.stations",
    "api.rentals",
    # The metrics' signal receivers (main_app/apps.py).
    "main_app",
]

MIDDLEWARE = [
    # First: the request id and receipt time for everything after it, and every answer's
    # status for the 5xx counter, refusals of the middleware below included.
    "main_app.request_context.RequestContextMiddleware",
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
    # Last, as django-axes asks: turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
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
    # Behind PgBouncer in transaction mode: a server-side cursor outside a transaction (a
    # `.iterator()` in autocommit, as `dumpdata` runs) is WITH HOLD and outlives the server
    # connection it was declared on. Django then fetches with plain queries instead.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = _read(
        "DATABASE_DISABLE_SERVER_SIDE_CURSORS", "bool", False
    )
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

# axes first: it refuses a locked-out account and address before a password is hashed.
# ModelBackend: the admin form (username) and permissions; StaffEmailBackend: the login API.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "api.users.backends.StaffEmailBackend",
]

# --- Login throttling (django-axes; api/users/lockout.py) ------------------------------
# Failures counted per account and client address together, in the database (shared by
# every worker and host): another address is never locked out by someone else's guessing.
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = _read("AUTH_LOCKOUT_FAILURES", "int", 10)
AXES_COOLOFF_TIME = timedelta(minutes=_read("AUTH_LOCKOUT_MINUTES", "int", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# Consecutive failures: a successful login clears the count.
AXES_RESET_ON_SUCCESS = True
# Attempts during a lockout (the right password included) are refused without being
# counted, so the lockout ends one cool-off after the last counted failure.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# The address the IoT allowlist uses: X-Forwarded-For only from IOT_TRUSTED_PROXIES.
AXES_CLIENT_IP_CALLABLE = "main_app.middleware.client_ip"
AXES_USERNAME_CALLABLE = "api.users.lockout.account_key"
AXES_LOCKOUT_CALLABLE = "api.users.lockout.lockout_response"
# Each failure in the admin (Axes > Access failures), not only the running count.
AXES_ENABLE_ACCESS_FAILURE_LOG = True
# axes always masks the password; usernames and addresses stay readable for operators.
AXES_SENSITIVE_PARAMETERS = ["csrfmiddlewaretoken"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files (whitenoise serves them under gunicorn with DEBUG off) --------------
STATIC_URL = "static/"
STATIC_ROOT = Path(_read("DJANGO_STATIC_ROOT", "str", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Security headers for production ---------------------------------------------------
# docs/deploy.md lists the production values; `manage.py check --deploy` is clean with them.
BEHIND_TLS_PROXY = _read("DJANGO_BEHIND_TLS_PROXY", "bool", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
# HSTS (sent on HTTPS requests only): a year by default once TLS is in front. Subdomains and
# preload are opt-in: they bind every host of the domain, and preload is slow to undo.
SECURE_HSTS_SECONDS = _read("DJANGO_HSTS_SECONDS", "int", 365 * 24 * 3600 if BEHIND_TLS_PROXY else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _read("DJANGO_HSTS_INCLUDE_SUBDOMAINS", "bool", False)
SECURE_HSTS_PRELOAD = _read("DJANGO_HSTS_PRELOAD", "bool", False)
# Off by default: a redirected POST loses its body, so a sender posting plain HTTP would fail
# rather than be redirected. The health probes are called over plain HTTP from inside.
SECURE_SSL_REDIRECT = _read("DJANGO_SSL_REDIRECT", "bool", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = _read("DJANGO_SECURE_COOKIES", "bool", BEHIND_TLS_PROXY)
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
# process (api/users/authentication.py). 0 reads it on every request.
AUTH_USER_CACHE_SECONDS = _read("AUTH_USER_CACHE_SECONDS", "int", 10)

# Largest JSON body the admin API parses (login, refresh); larger ones get 413.
API_MAX_BODY_BYTES = _read("API_MAX_BODY_BYTES", "int", 64 * 1024)

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=_read("JWT_ACCESS_TOKEN_MINUTES", "int", 60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=_read("JWT_REFRESH_TOKEN_DAYS", "int", 7)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
    "SIGNING_KEY": _read("JWT_SIGNING_KEY", "str", "") or SECRET_KEY,
    # A refresh answers a new refresh token and revokes the one used (token_blacklist app).
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    # Every token carries a digest of the password hash it was issued under, checked when
    # its user is read: a password change ends the tokens issued before it.
    "CHECK_REVOKE_TOKEN": True,
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


def _read_networks(name, default=()):
    """A comma-separated list of addresses or CIDR ranges; a bad entry stops start-up."""
    entries = [entry.strip() for entry in _read(name, "list", list(default)) if entry.strip()]
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
# Turned off only explicitly (a system check refuses that with DEBUG off).
IOT_SIGNATURE_VERIFICATION = _read("IOT_SIGNATURE_VERIFICATION", "bool", True)
IOT_MAX_BODY_BYTES = _read("IOT_MAX_BODY_BYTES", "int", 1024 * 1024)
# Django refuses to read bodies above this; keep it above the IoT limit so that limit
# (checked from Content-Length in the middleware) is the one that answers.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(IOT_MAX_BODY_BYTES, 2621440)
# A bank seen in a slot this long after its rental started closes the rental (lost return).
IOT_RETURN_GRACE_SECONDS = _read("IOT_RETURN_GRACE_SECONDS", "int", 120)
IOT_OFFLINE_AFTER_MINUTES = _read("IOT_OFFLINE_AFTER_MINUTES", "int", 30)
# Seconds the sender is told to wait when the database is unreachable.
IOT_RETRY_AFTER_SECONDS = _read("IOT_RETRY_AFTER_SECONDS", "int", 5)
# The event log's retention (maintain_iot_events): days a settled full sync or status message
# keeps its body, and days every row (and the bodies of returns, failed and rejected ones) is kept.
IOT_EVENT_PAYLOAD_DAYS = _read("IOT_EVENT_PAYLOAD_DAYS", "int", 7)
IOT_EVENT_KEEP_DAYS = _read("IOT_EVENT_KEEP_DAYS", "int", 90)
# How far back a delivery's body is looked for to tell a repeat (PostgreSQL; SQLite looks in
# everything kept). Past it, a body counts as new: a full sync or status message is then
# stale against the station's newer state, and a return closes only a rental still open.
IOT_EVENT_REPEAT_DAYS = _read("IOT_EVENT_REPEAT_DAYS", "int", 7)

# --- The other direction: the IoT system's HTTP API (ejecting banks, inventories) -------
# docs/contract.md, "The other direction". Empty URL: no cabinet can be asked, so a rental
# waits in PENDING_POPUP until the cabinet's own reports settle it.
IOT_SYSTEM_API_URL = _read("IOT_SYSTEM_API_URL", "str", "")
IOT_SYSTEM_API_USERNAME = _read("IOT_SYSTEM_API_USERNAME", "str", "")
IOT_SYSTEM_API_PASSWORD = _read("IOT_SYSTEM_API_PASSWORD", "str", "")
IOT_SYSTEM_API_CONNECT_TIMEOUT = _read("IOT_SYSTEM_API_CONNECT_TIMEOUT", "float", 3.0)
# Login and anything without a wait of its own.
IOT_SYSTEM_API_TIMEOUT = _read("IOT_SYSTEM_API_TIMEOUT", "float", 10.0)
# The IoT system waits up to 15 s for the cabinet's answer to an ejection, 10 s to an inventory.
IOT_SYSTEM_API_POPUP_TIMEOUT = _read("IOT_SYSTEM_API_POPUP_TIMEOUT", "float", 20.0)
IOT_SYSTEM_API_CHECK_TIMEOUT = _read("IOT_SYSTEM_API_CHECK_TIMEOUT", "float", 15.0)
# A cabinet report this long after an ejection request that still shows the bank in its
# slot cancels the rental; monitor_stations asks for an inventory once a rental has waited this long.
IOT_POPUP_GRACE_SECONDS = _read("IOT_POPUP_GRACE_SECONDS", "int", 120)
# The client the server uses (a dotted path to a class built from the settings above); the
# test settings swap in a cabinet that ejects at once.
IOT_SYSTEM_API_CLIENT = "api.iot_system.client.IoTSystemClient"

# --- Metrics (GET /metrics, main_app/metrics.py) -----------------------------------------
# Off: nothing is recorded and /metrics answers 404.
METRICS_ENABLED = _read("METRICS_ENABLED", "bool", True)
# Who may scrape: these addresses or CIDR ranges (the client address as for the IoT
# allowlist, behind IOT_TRUSTED_PROXIES), or whoever sends this bearer token. Empty
# METRICS_ALLOWED_IPS: by token only.
METRICS_ALLOWED_IPS = _read_networks("METRICS_ALLOWED_IPS", default=["127.0.0.0/8", "::1"])
METRICS_BEARER_TOKEN = _read("METRICS_BEARER_TOKEN", "str", "")

# --- Logging -----------------------------------------------------------------------------
LOG_DIR = Path(_read("LOG_DIR", "str", str(BASE_DIR / "logs")))
LOG_LEVEL = _read("LOG_LEVEL", "str", "INFO").upper()
LOG_TO_FILE = _read("LOG_TO_FILE", "bool", True)
# text: one readable line per record; json: one JSON object per line, for log collectors.
LOG_FORMAT = _read("LOG_FORMAT", "str", "text").strip().lower()
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"Environment variable LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOG_DIR.mkdir(parents=True, exist_ok=True)


def logging_config(*, to_file, level, console_level, request_level):
    """The LOGGING dict; a function so that the test settings can build a quieter one."""
    handlers = ["console", "file"] if to_file else ["console"]
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "verbose": {"format": "[{levelname}] {asctime} {name} {message}", "style": "{"},
            # time, level, logger, message, the request id, and each record's `extra` fields.
            "json": {"()": "main_app.request_context.JsonFormatter"},
        },
        # On every handler: a request's CR or LF (in a path, a serial) cannot start a line.
        "filters": {"escape_control": {"()": "main_app.logging.EscapeControlCharacters"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if LOG_FORMAT == "json" else "verbose",
                "filters": ["escape_control"],
                "level": console_level,
            },
            "file": {
                "class": "logging.handlers.RotatingFileHandler",
                "filename": str(LOG_DIR / "iot_integration.log"),
                "maxBytes": 10 * 1024 * 1024,
                "backupCount": 5,
                "formatter": "json" if LOG_FORMAT == "json" else "verbose",
                "filters": ["escape_control"],
                "delay": True,
            },
        },
        "loggers": {
            "api": {"handlers": handlers, "level": level, "propagate": False},
            "main_app": {"handlers": handlers, "level": level, "propagate": False},
            # The sender and the fleet simulator, when run as management commands.
            "iot_tools": {"handlers": handlers, "level": level, "propagate": False},
            # Login failures and lockouts (warnings; passwords are never in them).
            "axes": {"handlers": handlers, "level": "WARNING", "propagate": False},
            "django.request": {"handlers": handlers, "level": request_level, "propagate": False},
        },
    }
    if not to_file:
        del config["handlers"]["file"]
    return config


LOGGING = logging_config(
    to_file=LOG_TO_FILE, level=LOG_LEVEL, console_level=LOG_LEVEL, request_level="ERROR"
)
