#!/bin/sh
# Container entrypoint: wait for PostgreSQL, apply migrations, then run the command.
#   SKIP_MIGRATE=1       do not migrate (extra web replicas, the monitor service)
#   DB_WAIT_SECONDS=60   how long to wait for the database
set -eu

cd "$(dirname "$0")/.."

# The workers' metrics are summed from files in PROMETHEUS_MULTIPROC_DIR (set in the image);
# it must exist before any Python process with the variable imports the app.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

case "${DATABASE_URL:-}" in
postgres://* | postgresql://* | pgsql://* | psql://* | postgis://*)
    # Connect with the app's own settings, so the URL is parsed exactly as the app parses it.
    # Exit 1 = database not reachable yet (retry); anything else = configuration error (stop).
    deadline=$(($(date +%s) + ${DB_WAIT_SECONDS:-60}))
    while :; do
        rc=0
        python - <<'PY' || rc=$?
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "main_app.settings")
try:
    import django
    from django.db import OperationalError, connection

    django.setup()
except Exception as exc:
    print(f"entrypoint: configuration error: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(2)
try:
    connection.ensure_connection()
except OperationalError as exc:
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"entrypoint: database not ready: {reason}", file=sys.stderr)
    sys.exit(1)
PY
        case "$rc" in
        0) echo "entrypoint: database is ready"; break ;;
        1) ;;
        *) exit "$rc" ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "entrypoint: gave up waiting for the database after ${DB_WAIT_SECONDS:-60} s" >&2
            exit 1
        fi
        sleep 2
    done
    ;;
esac

if [ "${SKIP_MIGRATE:-0}" = "1" ]; then
    echo "entrypoint: SKIP_MIGRATE=1, not migrating"
else
    python manage.py migrate --noinput
fi

# Emptied of an earlier run's values right before the command, so counts start from zero.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -type f -delete
fi

exec "$@"
