"""
gunicorn hooks for the metrics' multiprocess mode (main_app/metrics.py).

Used by every way the service is started: `--config python:main_app.gunicorn_conf` in
scripts/run, the Docker image and the systemd unit, and, through ./gunicorn.conf.py (which
gunicorn reads from its working directory by default), a bare gunicorn started in the
project root. Worker counts stay on the command lines. Without PROMETHEUS_MULTIPROC_DIR
these hooks do nothing. PROMETHEUS_MULTIPROC_DIR belongs on a memory-backed filesystem
(/dev/shm, /run): every value recorded is a write into a memory-mapped file there, which on
a disk-backed filesystem the kernel also has to track and write back to disk
(docs/performance.md, "Fifth pass").

Only the standard library and prometheus_client here: gunicorn's master process loads this
file, and the master never imports Django.
"""

import os
from pathlib import Path

# Each worker's heartbeat is a change of a temporary file's mode, several times a second: on
# a disk-backed filesystem every change is an inode write through the journal, which
# gunicorn's documentation warns can stall a worker. A memory-backed one where there is one.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


def _multiproc_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    return Path(value) if value else None


def on_starting(server):
    """
    Before any worker: the directory exists and holds no values from an earlier run (the
    start-up scripts do the same; this covers a gunicorn started by hand).
    """
    directory = _multiproc_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server, worker):
    """
    A worker ended (restarted, killed, timed out): as prometheus_client documents. Its
    counters and histograms stay in their files and are still summed, so totals never go
    back; only live gauges of the dead process are dropped.
    """
    if _multiproc_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
