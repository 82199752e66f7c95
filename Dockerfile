# ChargeGhar main backend: gunicorn + whitenoise, PostgreSQL via DATABASE_URL.
#   docker build -t chargeghar-main .
#   docker compose up -d          (see docker-compose.yml and docs/deploy.md)
FROM python:3.11-slim

# PROMETHEUS_MULTIPROC_DIR: where the gunicorn workers keep their metrics for GET /metrics
# (the entrypoint creates and empties it); it must be in the environment before Python starts,
# and on the container's memory-backed /dev/shm (memory-mapped files written on every request).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMETHEUS_MULTIPROC_DIR=/dev/shm/chargeghar-metrics

WORKDIR /app

RUN groupadd --system app \
    && useradd --system --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# Only what runs in production: no .venv, .env, db.sqlite3, tests' artifacts or .git
# reach the image even without a .dockerignore. The code stays owned by root (read-only
# for the app user).
COPY manage.py gunicorn.conf.py ./
COPY main_app ./main_app
COPY api ./api
# The signature check uses iot_tools.wire; iot_send and simulate_stations use the rest.
COPY iot_tools ./iot_tools
COPY docker/entrypoint.sh ./docker/entrypoint.sh

# With DEBUG off, settings refuse to load without a real-looking secret key, so a dummy
# one is passed to this build step only; it is not kept in the image's environment.
# collectstatic runs only the staticfiles system checks, so no other secret is needed.
# logs/ takes the rotating log file; data/ can hold a SQLite file when there is no
# PostgreSQL (DATABASE_URL=sqlite:////app/data/db.sqlite3 with a volume on /app/data).
RUN chmod 0755 docker/entrypoint.sh \
    && DJANGO_SECRET_KEY=build-only-not-secret python manage.py collectstatic --noinput \
    && mkdir -p logs data \
    && chown app:app logs data

USER app

EXPOSE 8000

ENTRYPOINT ["/app/docker/entrypoint.sh"]
# A shell reads WEB_WORKERS and WEB_THREADS at run time; the entrypoint's exec and this exec
# leave gunicorn as PID 1, so SIGTERM from `docker stop` reaches it directly. Threaded workers
# keep the sender's connections alive, and a worker's second thread runs while the first
# waits for the database (docs/performance.md). The config module has the metrics' hooks.
CMD ["sh", "-c", "exec gunicorn main_app.wsgi:application --config python:main_app.gunicorn_conf --bind 0.0.0.0:8000 --workers ${WEB_WORKERS:-4} --worker-class gthread --threads ${WEB_THREADS:-2} --access-logfile -"]
