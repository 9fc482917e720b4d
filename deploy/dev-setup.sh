#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (run as root or with sudo):
# Debian packages (Java for the Kafka broker, Maven to fetch it, Prometheus + promtool, kcat),
# the Python package with its test extras and the deploy-check tools, and the Kafka jars.
# Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v kcat >/dev/null || need_apt+=(kcat)
command -v openssl >/dev/null || need_apt+=(openssl)  # test certificates for the TLS metrics endpoint
if ((${#need_apt[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# the Debian package starts a system Prometheus on :9090; tests run their own on free ports
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi

python3 -m pip install -q --disable-pip-version-check -e "$root[test]"
if [ -f "$root/.ci/requirements-deploy.txt" ]; then
  python3 -m pip install -q --disable-pip-version-check -r "$root/.ci/requirements-deploy.txt"
fi
# checkov pins old versions of packages the project uses: it gets a virtualenv of its own
checkov_venv=${XDG_CACHE_HOME:-$HOME/.cache}/streamlearn/checkov-venv
if [ ! -x "$checkov_venv/bin/checkov" ]; then
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install -q --disable-pip-version-check -r "$root/.ci/requirements-checkov.txt"
fi

# tests/deploy render the overlays with kustomize v5: kubectl >= 1.27 has it inside; else build kustomize with
# Go (from the module proxy) into the cache, where tests/deploy/helpers.py looks too
kubectl_v5() { command -v kubectl >/dev/null &&
  kubectl version --client -o json 2>/dev/null | grep -Eq '"kustomizeVersion": *"v([5-9]|[1-9][0-9])'; }
gobin=${XDG_CACHE_HOME:-$HOME/.cache}/streamlearn/go-bin
if ! kubectl_v5 && ! command -v kustomize >/dev/null && [ ! -x "$gobin/kustomize" ]; then
  GOBIN=$gobin go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
fi

# fetch the broker's jars now (a cached no-op later), so the first test does not pay for it
"$here/kafka/local.sh" fetch
echo "dev-setup: ok" >&2
