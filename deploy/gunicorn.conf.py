"""Gunicorn settings for both services, from environment variables; the same file in containers and `make run`.

SIGTERM is a graceful shutdown: workers stop accepting, finish in-flight requests (up to
GUNICORN_GRACEFUL_TIMEOUT seconds), then exit.
"""

import os

bind = os.environ.get("GUNICORN_BIND", f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
backlog = int(os.environ.get("GUNICORN_BACKLOG", "2048"))
# Restart workers now and then so slow leaks cannot grow without bound; jitter avoids all restarting at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
# The app decides whose X-Forwarded-For to believe (TRUSTED_PROXIES); uvicorn must not rewrite the peer first.
forwarded_allow_ips = ""
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# Gunicorn 25+ opens a control socket at one fixed per-user path; two masters on a host (auth and users
# under `make run`, or tests) would fight over it, and nothing here uses `gunicornc`.
control_socket_disable = True
