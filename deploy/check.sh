#!/usr/bin/env bash
# Checks the deployment artifacts with real tools; called by .ci/run when executable.
#
#   - promtool (from Debian's `prometheus` package: only the promtool binary is unpacked into
#     a cache folder, nothing is installed or started): `check rules` and the alert unit tests.
#   - the Grafana dashboard parses as JSON.
#   - the Kustomize base (deploy/kubernetes) renders with `kubectl kustomize` (Debian's
#     `kubernetes-client` package when no kubectl is installed) and every object validates,
#     strictly (unknown fields are errors), with `kubernetes-validate` (PyPI) against the
#     oldest and newest Kubernetes schemas it ships.
#
# Helm is not available from this project's package sources (Debian, PyPI, npm), so `helm
# lint`/`helm template` cannot run here. crates/wsgate-tests/tests/deploy.rs renders the chart
# instead (the subset of Go templates it uses: tests/deploy/helm_render.rs), with its defaults
# and with its options on, validates the renders with kubernetes-validate (installed here),
# and checks that the default render is the Kustomize base (env defaults, ports, probes,
# enableServiceLinks, ingress paths). That test also checks every metric in alerts.yaml and
# wsgate.json against a running wsgate. If `helm` is on PATH anyway, it is used, and its
# default render is validated like the Kustomize base.
#
# Idempotent: the second run finds promtool in the cache and kubectl/kubernetes-validate
# installed. Set PROMTOOL to use another promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf -- '-- %s\n' "$*"; }

cache="${WSGATE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-tools}"
promtool="${PROMTOOL:-}"
if [ -z "$promtool" ]; then
  if command -v promtool >/dev/null; then
    promtool="$(command -v promtool)"
  elif [ -x "$cache/usr/bin/promtool" ]; then
    promtool="$cache/usr/bin/promtool"
  else
    log "fetching promtool from Debian's prometheus package into $cache"
    mkdir -p "$cache/deb"
    (
      cd "$cache/deb"
      rm -f prometheus_*.deb
      if ! apt-get download prometheus >/dev/null 2>&1; then
        apt-get update -qq
        apt-get download prometheus >/dev/null 2>&1
      fi
      dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x -C "$cache" ./usr/bin/promtool
      rm -f prometheus_*.deb
    )
    promtool="$cache/usr/bin/promtool"
  fi
fi
log "$("$promtool" --version 2>&1 | head -1)"

log "promtool check rules"
"$promtool" check rules deploy/prometheus/alerts.yaml
log "promtool test rules"
"$promtool" test rules deploy/prometheus/alerts.test.yaml

log "grafana dashboard is JSON"
python3 -m json.tool deploy/grafana/wsgate.json >/dev/null

if ! command -v kubectl >/dev/null; then
  # Debian ships kubectl as `kubernetes-client` (bookworm: 1.20, with kustomize v2 inside:
  # the base uses nothing newer).
  log "installing kubectl (Debian's kubernetes-client)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
  log "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT

# Every object, strictly, against the oldest and the newest schemas kubernetes-validate has.
validate() {
  local v
  for v in $(python3 -c '
import kubernetes_validate.utils as u
vs = sorted(set(u.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))
print(vs[0], vs[-1])'); do
    kubernetes-validate --strict --quiet -k "$v" "$@"
    log "valid against Kubernetes $v"
  done
}

log "$(kubectl version --client 2>&1 | head -1)"
log "kubectl kustomize deploy/kubernetes"
kubectl kustomize deploy/kubernetes >"$rendered/kustomize.yaml"
kinds="$(grep -c '^kind:' "$rendered/kustomize.yaml")"
log "kubernetes-validate: $kinds objects"
validate "$rendered/kustomize.yaml"

if command -v helm >/dev/null; then
  log "helm lint / helm template"
  helm lint deploy/helm/wsgate
  helm template wsgate deploy/helm/wsgate >"$rendered/helm-default.yaml"
  helm template wsgate deploy/helm/wsgate --set cluster.enabled=true --set replicaCount=3 \
    --set secrets.redisUrl=redis://redis:6379 --set secrets.clusterKey=k \
    --set grpc.enabled=true --set metrics.serviceMonitor.enabled=true \
    >/dev/null
  validate "$rendered/helm-default.yaml"
else
  log "helm not installed: crates/wsgate-tests/tests/deploy.rs renders and validates the chart"
fi
log "deployment checks passed"
