#!/usr/bin/env bash
# What the browser test needs, from the machine's registries only: Debian's chromium (never a browser
# download) and the npm package playwright-core (a driver without browsers), pinned in package-lock.json.
# Idempotent: installs only what is missing. Exit status non-zero when something could not be installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else
    echo "install.sh: need root (or sudo) for: $*" >&2; return 1; fi
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get -o DPkg::Lock::Timeout=300 update -q
  as_root apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@"
}

if [ ! -x "$CHROMIUM" ]; then
  echo "install.sh: installing Debian's chromium"
  # fonts-liberation: legible text in the screenshots (a recommended package, skipped by --no-install-recommends).
  apt_install chromium fonts-liberation
fi
"$CHROMIUM" --version 2>/dev/null

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install.sh: installing Debian's nodejs and npm"
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "install.sh: playwright-core needs Node.js 20 or newer; this machine has $(node --version)" >&2
  exit 1
fi

wanted=$(node -p "require('$here/package.json').dependencies['playwright-core']")
have=$(node -p "try { require('$here/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$have" != "$wanted" ]; then
  echo "install.sh: installing playwright-core $wanted (npm ci; it downloads no browser)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install.sh: chromium at $CHROMIUM, playwright-core $wanted, node $(node --version)"
