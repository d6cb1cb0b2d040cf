"""Gunicorn settings for both services, from environment variables; the same file in containers and `make run`.

SIGTERM is a graceful shutdown: workers stop accepting, finish in-flight requests (up to
GUNICORN_GRACEFUL_TIMEOUT seconds), then exit.
"""

import os
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("GUNICORN_BIND", f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
backlog = int(os.environ.get("GUNICORN_BACKLOG", "2048"))
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new connections over them.
# With one shared socket the workers race to accept, and a few long-lived connections (a proxy's keep-alive
# pool, a load generator) can all land on one worker while the others idle.
# The price: connections still queued on a worker's socket when it exits (a reload, GUNICORN_MAX_REQUESTS, a
# timeout) are reset, unless the kernel hands them to another worker (net.ipv4.tcp_migrate_req=1, Linux 5.14+).
# docs/operations.md#workers-and-sockets.
reuse_port = os.environ.get("GUNICORN_REUSE_PORT", "true").lower() in ("1", "true", "yes", "on")
# Restart workers now and then so slow leaks cannot grow without bound; jitter avoids all restarting at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
# The app decides whose X-Forwarded-For to believe (TRUSTED_PROXIES); uvicorn must not rewrite the peer first.
forwarded_allow_ips = ""
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None

loglevel = os.environ.get("LOG_LEVEL", "info")
# Gunicorn 25+ opens a control socket at one fixed per-user path; two masters on a host (auth and users
# under `make run`, or tests) would fight over it, and nothing here uses `gunicornc`.
control_socket_disable = True

# Memory-backed (tmpfs) where there is one, for the files workers touch on their event loop: the heartbeat
# file (gunicorn's docs: on a disk-backed file system its update "may block a worker for arbitrary time") and
# the metrics files below, rewritten through mmap on every request, which on a disk become steady writeback.
_MEMORY_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
worker_tmp_dir = _MEMORY_DIR

# Metrics from every worker: prometheus_client's multiprocess mode keeps them in files under this folder.
# It must be set before any worker imports prometheus_client, and emptied so a restart starts from zero.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-", dir=_MEMORY_DIR)
for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
    stale.unlink()


def child_exit(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(_server) -> None:
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


# The master's own lines (start, worker boot, signals) as JSON too, like the workers' request lines.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "shared.observability.JsonLogFormatter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "root": {"level": loglevel.upper(), "handlers": ["stdout"]},
    "loggers": {"gunicorn.error": {"level": loglevel.upper(), "handlers": ["stdout"], "propagate": False}},
}
