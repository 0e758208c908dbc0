#!/usr/bin/env bash
# Builds the real Kubernetes API server (with embedded etcd 3.6) and kubectl of the release
# pinned in testenv/go.mod into target/testenv/bin, for the tests that talk to Kubernetes,
# and helm (pinned in testenv/helm/go.mod, its own module) for the Helm chart's tests.
# Rebuilt only when testenv/ changes: the first build on a fresh machine takes minutes
# (module download and compile), later runs return at once.
set -euo pipefail
cd "$(dirname "$0")/.."

need_major=1 need_minor=24
if ! command -v go >/dev/null 2>&1; then
  echo "scripts/testenv.sh: Go ${need_major}.${need_minor} or newer is needed to build the test API server (https://go.dev/dl/); none is on PATH" >&2
  exit 1
fi
version=$(go env GOVERSION | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/')
read -r major minor <<<"$version"
if [ "$major" -lt "$need_major" ] || { [ "$major" -eq "$need_major" ] && [ "$minor" -lt "$need_minor" ]; }; then
  echo "scripts/testenv.sh: Go ${need_major}.${need_minor} or newer is needed to build the test API server; found $(go env GOVERSION)" >&2
  exit 1
fi

out="$PWD/target/testenv/bin"
stamp="$out/.stamp"
# What the binaries are built from: the module, its sums, the sources, this script and Go.
sum=$( { cat testenv/go.mod testenv/go.sum testenv/helm/go.mod testenv/helm/go.sum "$0"; find testenv -name '*.go' -print0 | sort -z | xargs -0 cat; go env GOVERSION; } | sha256sum | cut -d' ' -f1)
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kubectl" ] && [ -x "$out/helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
  exit 0
fi

k8s=$(cd testenv && go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor_version=$(echo "$k8s" | cut -d. -f2)
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor_version"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
echo "scripts/testenv.sh: building kube-apiserver, kubectl $k8s and helm into $out (the first build takes several minutes)" >&2
mkdir -p "$out"
started=$(date +%s)
(cd testenv && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$out/" ./cmd/kube-apiserver ./cmd/kubectl)
(cd testenv/helm && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/" helm.sh/helm/v3/cmd/helm)
echo "$sum" >"$stamp"
echo "scripts/testenv.sh: built in $(( $(date +%s) - started ))s" >&2
