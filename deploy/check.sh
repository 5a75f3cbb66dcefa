#!/usr/bin/env bash
# Checks the deployment artifacts with real tools; called by .ci/run when executable.
#
#   - promtool (from Debian's `prometheus` package: only the promtool binary is unpacked into
#     a cache folder, nothing is installed or started): `check rules` and the alert unit tests.
#   - the Grafana dashboard parses as JSON.
#
# Helm and kubeconform are not available from this project's package sources (Debian, PyPI,
# npm), so `helm lint`/`helm template` cannot run here. The chart is checked instead by
# crates/wsgate/tests/deploy.rs (values parse, every .Values reference resolves, templates
# parse as YAML once template actions are stripped, probes/drain/ingress facts); and that
# test also checks every metric in alerts.yaml and wsgate.json against a running wsgate.
# If `helm` is on PATH anyway, it is used.
#
# Idempotent: the second run finds promtool in the cache. Set PROMTOOL to use another one.
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

if command -v helm >/dev/null; then
  log "helm lint / helm template"
  helm lint deploy/helm/wsgate
  helm template wsgate deploy/helm/wsgate >/dev/null
  helm template wsgate deploy/helm/wsgate --set cluster.enabled=true --set replicaCount=3 \
    --set secrets.redisUrl=redis://redis:6379 --set metrics.serviceMonitor.enabled=true >/dev/null
else
  log "helm not installed: the chart is checked by crates/wsgate/tests/deploy.rs"
fi
log "deployment checks passed"
