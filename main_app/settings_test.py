"""
Settings for the test runners: pytest (pytest.ini) and `manage.py test` (manage.py's default
for that subcommand). The production settings with the values tests rely on.

Only the process environment reaches them, never an env file, so a developer's `.env` (a
database, an IP allowlist) cannot change what tests see; DATABASE_URL and DATABASE_TEST_NAME
from the environment still choose the database, as scripts/test and CI use them.
"""

import os

# Set before the base settings are imported, because they read the env file and refuse to
# start without a secret key while they are being imported. DJANGO_ENV_FILE stays empty for
# the whole test process, so processes the tests start do not read `.env` either; the key is
# put back as it was, so no child process inherits a test key as a production secret.
os.environ["DJANGO_ENV_FILE"] = ""
_TEST_SECRET_KEY = "test-only-key-not-for-any-deployment-0b6c1f8e2d4a9e7f3c5b"
_saved_secret_key = os.environ.get("DJANGO_SECRET_KEY")
os.environ["DJANGO_SECRET_KEY"] = _TEST_SECRET_KEY
try:
    from main_app.settings import *  # noqa: F403
    from main_app.settings import LOG_LEVEL, STATIC_ROOT, logging_config
finally:
    if _saved_secret_key is None:
        del os.environ["DJANGO_SECRET_KEY"]
    else:
        os.environ["DJANGO_SECRET_KEY"] = _saved_secret_key

SECRET_KEY = _TEST_SECRET_KEY
SIMPLE_JWT = {**SIMPLE_JWT, "SIGNING_KEY": SECRET_KEY}  # noqa: F405

# The test client's "testserver" is added by the runners; these are for live servers.
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

# Hashing cost is irrelevant to what the tests pin and dominates their run time.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# No manifest to build before a test can render a page; whitenoise warns about a missing root.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Test databases reuse ids from test to test, so a cached token user could be another test's
# user; the tests of the cache turn it on.
AUTH_USER_CACHE_SECONDS = 0

# The seed's tests post unsigned bodies; the signature tests turn verification on with
# override_settings. No shared secret either: tests that sign set their own.
IOT_SIGNATURE_VERIFICATION = False
IOT_SYSTEM_SIGNATURE_SECRET = ""
IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS = []
# Tests that are not about the IoT system's API get a cabinet that ejects at once; the
# ejection tests use the simulator's API over HTTP with the real client.
IOT_SYSTEM_API_CLIENT = "api.iot_system.fakes.InstantCabinet"
IOT_SYSTEM_API_URL = ""
IOT_SYSTEM_API_USERNAME = ""
IOT_SYSTEM_API_PASSWORD = ""
# Tests post from 127.0.0.1 without a proxy; the allowlist's tests set their own.
IOT_SYSTEM_ALLOWED_IPS = []
IOT_TRUSTED_PROXIES = []

# Those two are exactly what the IoT security checks refuse with DEBUG off, and Django's test
# runner runs the checks before any test. They are silenced by id rather than skipped in the
# check, so the check itself has no test mode, and a new IoT check still runs under tests
# until someone decides otherwise. Tests of the checks clear this list.
SILENCED_SYSTEM_CHECKS = ["iot.E001", "iot.E004", "iot.W001"]

# Console only, warnings and up; tests provoke 5xx answers on purpose, and their request log
# lines would only bury real output.
LOG_TO_FILE = False
LOGGING = logging_config(to_file=False, level=LOG_LEVEL, console_level="WARNING", request_level="CRITICAL")
