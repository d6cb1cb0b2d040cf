#!/usr/bin/env bash
# The production topology, run for real on this machine (loopback only), then tested end to end:
#
#   client --> nginx (X-Forwarded-For) --> 2 auth + 2 users replicas (gunicorn) --TLS, SCRAM--> PgBouncer
#          (transaction pooling) --TLS, SCRAM--> PostgreSQL (a throwaway cluster with ssl=on)
#
# as on Neon: the services use the pooled URL (`?sslmode=require`), the migrations the direct one (as pasted
# from Neon's console, `postgres://...?sslmode=require&channel_binding=require`). Then the end-to-end suite
# through the proxy, and tests/topology (what only this topology can show). Everything it starts it stops, and
# its files live in one temporary folder that is removed at the end. Root or not; as root, PostgreSQL and
# PgBouncer run as the `postgres` OS user (both refuse root). Installs nginx and pgbouncer (Debian) if missing.
#
# Replicas are gunicorn processes, not containers: no registry is reachable here, building the images takes
# minutes (deploy/compose-check.sh covers them), and a process is what a container runs anyway; killing one
# (SIGKILL) is the same event to the proxy.
#
# Extra arguments go to the end-to-end pytest run (e.g. `-x -k token`); TOPOLOGY_E2E=0 skips that run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=$repo/.venv/bin/python

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
started_ms=$(now_ms)
say() { printf '==> %s (%d s)\n' "$*" $((($(now_ms) - started_ms) / 1000)); }

# ---- tools ----------------------------------------------------------------------------------------------
if ! command -v nginx >/dev/null || ! command -v pgbouncer >/dev/null; then
  [[ $(id -u) == 0 ]] || { echo "topology-check: nginx and pgbouncer are needed (apt-get install nginx pgbouncer)" >&2; exit 1; }
  say "apt-get install nginx pgbouncer"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Debian's packages start their service unless policy-rc.d forbids it; ours run from our own configs only.
  apt-get install -y -qq nginx pgbouncer >/dev/null
fi
pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
[[ -x $pg_bin/initdb ]] || { echo "topology-check: the PostgreSQL server binaries are needed (initdb)" >&2; exit 1; }
nginx_bin=$(command -v nginx)
pgbouncer_bin=$(command -v pgbouncer)
if [[ ! -f .venv/.dev-installed ]]; then
  make --no-print-directory .venv/.dev-installed
fi

# As root, the database processes run as `postgres`; otherwise as whoever runs this.
as_db_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---- temp dir, cleanup ----------------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/topology-check.XXXXXX)
# Metrics files of the workers (PROMETHEUS_MULTIPROC_DIR): memory-backed, as gunicorn.conf.py does, and ours to delete.
shm=$(mktemp -d "$( [[ -d /dev/shm ]] && echo /dev/shm || echo /tmp)/topology-check.XXXXXX")
chmod 711 "$tmp"
mkdir -p "$tmp/db" "$tmp/logs" "$tmp/nginx" "$tmp/mail"
if [[ $(id -u) == 0 ]]; then chown postgres:postgres "$tmp/db"; fi
replica_pids=()
nginx_pid=""
mailcatcher_pid=""
pg_started=false
keep=${TOPOLOGY_KEEP:-0}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0)); then
    echo "topology-check: FAILED (exit $status); last log lines:" >&2
    for log in "$tmp"/logs/*.log "$tmp"/db/pgbouncer.log "$tmp"/nginx/error.log; do
      [[ -f $log ]] && { echo "--- $log" >&2; tail -n 15 "$log" >&2; }
    done
  fi
  for pid in "${replica_pids[@]}" "$mailcatcher_pid"; do [[ -z $pid ]] || kill -TERM "$pid" 2>/dev/null || true; done
  [[ -z $nginx_pid ]] || kill -QUIT "$nginx_pid" 2>/dev/null || true
  # Graceful first (gunicorn finishes in-flight requests), then whatever is left is killed.
  for pid in "${replica_pids[@]}" "$mailcatcher_pid" "$nginx_pid"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    [[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -s $tmp/db/pgbouncer.pid ]]; then
    local pgb_pid
    pgb_pid=$(cat "$tmp/db/pgbouncer.pid")
    kill -TERM "$pgb_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pgb_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if $pg_started; then as_db_owner "$pg_bin/pg_ctl" -D "$tmp/db/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  if [[ $keep == 1 ]]; then echo "topology-check: files kept in $tmp"; else rm -rf "$tmp"; fi
  rm -rf "$shm"
  local seconds=$((($(now_ms) - started_ms) / 1000))
  if ((status == 0)); then
    echo "topology-check: OK in $seconds s ($(uptime | sed 's/.*load/load/'))"
  else
    echo "topology-check: FAILED in $seconds s" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10 free loopback ports at once: PostgreSQL, PgBouncer, the proxy's two sides, four replicas, the mail catcher's two.
read -r pg_port pgb_port proxy_auth_port proxy_users_port auth1_port auth2_port users1_port users2_port smtp_port \
  inbox_port < <("$python" -c '
import socket
probes = [socket.socket() for _ in range(10)]
for probe in probes:
    probe.bind(("127.0.0.1", 0))
print(*(probe.getsockname()[1] for probe in probes))')

# ---- certificates ---------------------------------------------------------------------------------------
say "certificates (self-signed, for 127.0.0.1)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$tmp/db/server.key" -out "$tmp/db/server.crt" 2>/dev/null
chmod 600 "$tmp/db/server.key"
if [[ $(id -u) == 0 ]]; then chown postgres:postgres "$tmp/db/server.key" "$tmp/db/server.crt"; fi

# ---- PostgreSQL: a cluster of our own with ssl=on ---------------------------------------------------------
# Not the machine's cluster: it runs without TLS and with trust auth, and is not ours to reconfigure.
say "PostgreSQL: initdb, ssl=on, scram-sha-256, port $pg_port"
as_db_owner "$pg_bin/initdb" -D "$tmp/db/data" -U postgres -E UTF8 --no-sync --auth-local=trust \
  --auth-host=scram-sha-256 >"$tmp/db/initdb.log" 2>&1
cat >>"$tmp/db/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$tmp/db'
ssl = on
ssl_cert_file = '$tmp/db/server.crt'
ssl_key_file = '$tmp/db/server.key'
password_encryption = scram-sha-256
fsync = off
max_connections = 100
EOF
# TCP only with TLS: a client without it finds no pg_hba line and is refused.
cat >"$tmp/db/data/pg_hba.conf" <<EOF
local   all  postgres                 trust
hostssl all  all       127.0.0.1/32   scram-sha-256
EOF
as_db_owner "$pg_bin/pg_ctl" -D "$tmp/db/data" -l "$tmp/db/postgresql.log" -w start >/dev/null
pg_started=true
db_password=$("$python" -c 'import secrets; print(secrets.token_urlsafe(24))')
admin_psql() { as_db_owner psql -X -q -h "$tmp/db" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
admin_psql -d postgres -c "CREATE ROLE app LOGIN PASSWORD '$db_password'" -c "CREATE DATABASE topology OWNER app"
scram_secret=$(admin_psql -d postgres -Atc "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
[[ $scram_secret == SCRAM-SHA-256* ]] || { echo "the role's password is not a SCRAM secret" >&2; exit 1; }

# ---- PgBouncer: transaction pooling, TLS and SCRAM on both sides ------------------------------------------
say "PgBouncer: transaction mode, TLS + SCRAM both sides, port $pgb_port"
# The SCRAM secret (not the password): PgBouncer checks clients with it and logs in to the server with it.
printf '"app" "%s"\n' "$scram_secret" >"$tmp/db/userlist.txt"
cat >"$tmp/db/pgbouncer.ini" <<EOF
[databases]
topology = host=127.0.0.1 port=$pg_port dbname=topology

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgb_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $tmp/db/userlist.txt
admin_users = app
pool_mode = transaction
max_client_conn = 400
default_pool_size = 20
client_tls_sslmode = require
client_tls_key_file = $tmp/db/server.key
client_tls_cert_file = $tmp/db/server.crt
server_tls_sslmode = require
logfile = $tmp/db/pgbouncer.log
pidfile = $tmp/db/pgbouncer.pid
EOF
chmod 600 "$tmp/db/userlist.txt"
if [[ $(id -u) == 0 ]]; then chown postgres:postgres "$tmp/db/userlist.txt" "$tmp/db/pgbouncer.ini"; fi
pgbouncer_start=("$pgbouncer_bin" -d -q "$tmp/db/pgbouncer.ini")
if [[ $(id -u) == 0 ]]; then pgbouncer_start=(runuser -u postgres -- "${pgbouncer_start[@]}"); fi
"${pgbouncer_start[@]}"

direct_url="postgres://app:$db_password@127.0.0.1:$pg_port/topology?sslmode=require&channel_binding=require"
pooled_url="postgresql://app:$db_password@127.0.0.1:$pgb_port/topology?sslmode=require"

say "migrations through the direct URL (sslmode=require&channel_binding=require)"
DATABASE_URL=$pooled_url MIGRATION_DATABASE_URL=$direct_url APP_ENV=production \
  "$python" -m shared.migrate upgrade head >"$tmp/logs/migrate.log" 2>&1

# ---- the mail catcher (SMTP + an HTTP inbox): the recovery flows of the suite read their mails there --------
"$python" deploy/mailcatcher.py --smtp-port "$smtp_port" --http-port "$inbox_port" >"$tmp/logs/mailcatcher.log" 2>&1 &
mailcatcher_pid=$!

# ---- the replicas ---------------------------------------------------------------------------------------
jwt_secret=$("$python" -c 'import secrets; print(secrets.token_urlsafe(48))')
admin_password=$("$python" -c 'import secrets; print(secrets.token_urlsafe(18))')
max_failures_per_username=5
max_failures_per_address=50
start_replica() {
  local service=$1 name=$2 port=$3
  mkdir -p "$shm/$name"
  env DATABASE_URL="$pooled_url" APP_ENV=production JWT_SECRET="$jwt_secret" \
    ADMIN_USERNAME=topology-admin ADMIN_PASSWORD="$admin_password" \
    TRUSTED_PROXIES=127.0.0.1/32 \
    LOGIN_MAX_FAILURES_PER_USERNAME=$max_failures_per_username \
    LOGIN_MAX_FAILURES_PER_ADDRESS=$max_failures_per_address \
    AUTH_PUBLIC_URL="http://127.0.0.1:$proxy_auth_port" MAIL_DIR="$tmp/mail" \
    SMTP_HOST=127.0.0.1 SMTP_PORT="$smtp_port" SMTP_TLS=none MAIL_RETRY_BASE_SECONDS=0.2 MAIL_RETRY_MAX_SECONDS=1 \
    HOST=127.0.0.1 PORT="$port" WEB_CONCURRENCY="${TOPOLOGY_WORKERS:-2}" GUNICORN_REUSE_PORT=false \
    PROMETHEUS_MULTIPROC_DIR="$shm/$name" PYTHONUNBUFFERED=1 \
    "$python" -m gunicorn -c deploy/gunicorn.conf.py --name "$name" "${service}_service.app:app" \
    >"$tmp/logs/$name.log" 2>&1 &
  replica_pids+=($!)
  # Not a job of this shell: the tests SIGKILL one replica, and bash would report that as if it were an error.
  disown $!
}
say "replicas: auth on $auth1_port $auth2_port, users on $users1_port $users2_port (TRUSTED_PROXIES=127.0.0.1/32)"
start_replica auth auth-1 "$auth1_port"
start_replica auth auth-2 "$auth2_port"
start_replica users users-1 "$users1_port"
start_replica users users-2 "$users2_port"

# ---- nginx ----------------------------------------------------------------------------------------------
# Retries (proxy_next_upstream): `error timeout` and nothing else. nginx never passes a non-idempotent request
# (POST /token, PATCH, DELETE...) to a second replica once it was sent to one (no `non_idempotent`): a login or
# a refresh may have been done there already, and a repeated refresh would look like reuse and end the session.
# A POST whose connection was refused (a dead replica) was never sent, so it still goes to the other. No retry on
# http_502/503/504: a 503 is the service saying the database is away, and every replica would say the same.
# Upstream keep-alive connections close (4 s) before gunicorn closes them (GUNICORN_KEEPALIVE, 5 s): otherwise a
# request can be sent on a connection gunicorn is closing, and a POST there would be a 502.
proxy_location() {
  cat <<EOF
        location / {
            proxy_pass http://$1;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_bind 127.0.0.1;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_read_timeout 40s;
            proxy_buffering off;
        }
EOF
}
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log $tmp/nginx/access.log;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    client_max_body_size 1m;
    upstream auth {
        server 127.0.0.1:$auth1_port max_fails=1 fail_timeout=5s;
        server 127.0.0.1:$auth2_port max_fails=1 fail_timeout=5s;
        keepalive 16;
        keepalive_timeout 4s;
    }
    upstream users {
        server 127.0.0.1:$users1_port max_fails=1 fail_timeout=5s;
        server 127.0.0.1:$users2_port max_fails=1 fail_timeout=5s;
        keepalive 16;
        keepalive_timeout 4s;
    }
    server {
        listen 127.0.0.1:$proxy_auth_port;
$(proxy_location auth)
    }
    server {
        listen 127.0.0.1:$proxy_users_port;
$(proxy_location users)
    }
}
EOF
say "nginx: auth on $proxy_auth_port, users on $proxy_users_port"
"$nginx_bin" -t -q -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log"
"$nginx_bin" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
nginx_pid=$!

# ---- wait until every replica answers, and the proxy too ---------------------------------------------------
say "waiting for the replicas and the proxy"
for url in http://127.0.0.1:{"$auth1_port","$auth2_port","$users1_port","$users2_port","$proxy_auth_port","$proxy_users_port"}/readyz \
  "http://127.0.0.1:$inbox_port/messages"; do
  for attempt in $(seq 1 150); do
    if "$python" -c "import sys, urllib.request; urllib.request.urlopen('$url', timeout=2)" 2>/dev/null; then
      break
    fi
    for pid in "${replica_pids[@]}" "$nginx_pid" "$mailcatcher_pid"; do
      kill -0 "$pid" 2>/dev/null || { echo "process $pid exited during start-up" >&2; exit 1; }
    done
    ((attempt < 150)) || { echo "$url did not answer 200 within 30 s" >&2; exit 1; }
    sleep 0.2
  done
done

# What the topology tests need to know, for tests/topology (secrets inside: readable by us only).
umask 077
cat >"$tmp/stack.json" <<EOF
{
  "proxy": {"auth": "http://127.0.0.1:$proxy_auth_port", "users": "http://127.0.0.1:$proxy_users_port"},
  "replicas": {
    "auth": [{"name": "auth-1", "url": "http://127.0.0.1:$auth1_port", "pid": ${replica_pids[0]}},
             {"name": "auth-2", "url": "http://127.0.0.1:$auth2_port", "pid": ${replica_pids[1]}}],
    "users": [{"name": "users-1", "url": "http://127.0.0.1:$users1_port", "pid": ${replica_pids[2]}},
              {"name": "users-2", "url": "http://127.0.0.1:$users2_port", "pid": ${replica_pids[3]}}]
  },
  "admin": {"username": "topology-admin", "password": "$admin_password"},
  "limits": {"per_username": $max_failures_per_username, "per_address": $max_failures_per_address},
  "jwt_secret": "$jwt_secret",
  "database": {"direct_url": "$direct_url", "pooled_url": "$pooled_url", "password": "$db_password"},
  "pgbouncer": {"pidfile": "$tmp/db/pgbouncer.pid", "start": $("$python" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${pgbouncer_start[@]}")},
  "logs": "$tmp/logs"
}
EOF
umask 022
export TOPOLOGY_STACK=$tmp/stack.json

e2e_status=0
if [[ ${TOPOLOGY_E2E:-1} == 1 ]]; then
  say "end-to-end suite through the proxy"
  AUTH_URL=http://127.0.0.1:$proxy_auth_port USERS_URL=http://127.0.0.1:$proxy_users_port \
    ADMIN_USERNAME=topology-admin ADMIN_PASSWORD=$admin_password E2E_REPLICATED=1 \
    MAIL_INBOX_URL=http://127.0.0.1:$inbox_port \
    "$python" -m pytest tests --ignore=tests/fault --ignore=tests/topology -q -p no:cacheprovider "$@" || e2e_status=$?
fi

say "topology tests"
"$python" -m pytest tests/topology -q -p no:cacheprovider -s
if ((e2e_status != 0)); then
  echo "topology-check: the end-to-end suite through the proxy failed (exit $e2e_status)" >&2
  exit "$e2e_status"
fi
