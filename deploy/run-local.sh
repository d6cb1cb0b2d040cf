#!/usr/bin/env bash
# `make run`: both services in the foreground on 127.0.0.1 with gunicorn; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
venv_bin=.venv/bin
auth_port=${AUTH_PORT:-$(sed -n 's/^AUTH_PORT=//p' .env 2>/dev/null | tail -n 1)}
users_port=${USERS_PORT:-$(sed -n 's/^USERS_PORT=//p' .env 2>/dev/null | tail -n 1)}
auth_port=${auth_port:-8001}
users_port=${users_port:-8002}

"$venv_bin/python" -m shared.migrate upgrade head

pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

HOST=127.0.0.1 PORT=$auth_port "$venv_bin/gunicorn" -c deploy/gunicorn.conf.py --name auth_service auth_service.app:app &
pids+=($!)
HOST=127.0.0.1 PORT=$users_port "$venv_bin/gunicorn" -c deploy/gunicorn.conf.py --name users_service users_service.app:app &
pids+=($!)
echo "auth service:  http://127.0.0.1:$auth_port/docs"
echo "users service: http://127.0.0.1:$users_port/docs"
# Either one exiting stops the other: a half-running pair is worse than none.
wait -n "${pids[@]}"
