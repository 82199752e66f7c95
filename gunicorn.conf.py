# Read by gunicorn when it is started in this directory without --config: the hooks that
# keep the metrics right across workers, and the workers' heartbeat files in memory
# (main_app/gunicorn_conf.py).
from main_app.gunicorn_conf import child_exit, on_starting, worker_tmp_dir  # noqa: F401
