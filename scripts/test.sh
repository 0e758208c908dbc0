#!/usr/bin/env bash
# Runs Warden's whole test suite on a fresh Debian machine with Rust.
# It installs the Debian tools the end-to-end tests drive (when missing), then runs every
# test of the workspace. Under CI=true a test whose tool is still missing fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A tools=(
  [openssl]=openssl
  [ip]=iproute2
  [iptables-restore]=iptables
  [ip6tables-restore]=iptables
  [tcpdump]=tcpdump
  [setpriv]=util-linux
  [prometheus]=prometheus
  [promtool]=prometheus
)
missing=()
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing Debian packages the tests use: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2046 # de-duplicated package names, word splitting intended
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u)
fi

# The strict Kubernetes schema check of injected pods and install manifests: the
# kubernetes-validate PyPI package, in a virtualenv under target/ when not installed.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  venv="$PWD/target/tools/kubernetes-validate"
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
      echo "scripts/test.sh: installing python3-venv for kubernetes-validate"
      sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3 python3-venv
    fi
    echo "scripts/test.sh: installing kubernetes-validate into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate
  fi
  export PATH="$venv/bin:$PATH"
fi

# The real Kubernetes API server and kubectl the Kubernetes tests run against (Go-built,
# cached in target/testenv; DESIGN section 10).
./scripts/testenv.sh

# The sidecar image is optimized with proxy/pgo's profile: CI's toolchain (the Dockerfile's)
# must be able to read it (rustc would only warn and build without it). An older local
# toolchain (an older LLVM) cannot, which only matters for the image: a note, not a failure.
if ! ./scripts/build-sidecar.sh --check-profile; then
  [ "${CI:-}" = true ] && exit 1
  echo "scripts/test.sh: note: this toolchain cannot read the sidecar's profile; the image's (Rust 1.95) can"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The bench-only per-hop timing (benches/mesh/hops.py) is a feature no other build enables.
cargo test -p warden-proxy --locked --features hop-timing --lib --test e2e hop_timing 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
set -e
# cargo prints one "test result" line per test binary, the last often a doc-test run with
# nothing in it; close with the total over all of them.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
