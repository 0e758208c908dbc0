#!/usr/bin/env bash
# The side-by-side benchmark in one command: installs the peers from Debian when missing,
# builds Warden and benches/mesh/loadgen.rs in release mode, then runs benches/mesh/mesh.py
# (pass its options through, e.g. --runs 5 --seconds 10 or --scenarios keepalive close).
set -euo pipefail
cd "$(dirname "$0")/../.."

declare -A tools=(
  [nginx]=nginx
  [haproxy]=haproxy
  [stunnel4]=stunnel4
  [wrk]=wrk
  [h2load]=nghttp2-client
  [curl]=curl
  [taskset]=util-linux
  [python3]=python3
)
missing=()
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2046 # de-duplicated package names, word splitting intended
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u)
fi

cargo build --release --locked --bin warden
# The sidecars' binary as the image ships it (on its own, so that nothing of the full CLI's
# features is in it; optimized with proxy/pgo's profile): target/sidecar/release/warden-proxy.
scripts/build-sidecar.sh
# Its code layout (proxy/build.rs): a stale list costs memory, not correctness, so warn only.
python3 benches/mesh/symbol_order.py --check || true
# The open-loop generator and byte sink: std only, so plain rustc.
rustc --edition 2021 -C opt-level=3 benches/mesh/loadgen.rs -o target/release/loadgen
exec python3 benches/mesh/mesh.py "$@"
