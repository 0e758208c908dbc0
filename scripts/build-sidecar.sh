#!/usr/bin/env bash
# Builds the sidecar's binary as the image ships it: `warden-proxy` in release mode, optimized
# with the profile in proxy/pgo/warden-proxy.profdata (profile-guided optimization: LLVM lays
# out and inlines for the paths the sidecar really runs; made by benches/mesh/pgo.py), in its
# own target directory (target/sidecar/release/warden-proxy), since the flag applies to every
# crate and would otherwise rebuild target/release from scratch. Extra cargo options pass
# through (e.g. --features hop-timing). `--check-profile` only checks that this toolchain
# can use the profile (scripts/test.sh runs it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile="$root/proxy/pgo/warden-proxy.profdata"
[ -f "$profile" ] || { echo "build-sidecar: $profile is missing (benches/mesh/pgo.py makes it)" >&2; exit 1; }

# rustc only warns about a profile LLVM cannot read, and builds without it: fail instead.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'fn main() {}' > "$probe/main.rs"
if ! out=$(rustc -O -Cprofile-use="$profile" "$probe/main.rs" -o "$probe/main" 2>&1) || [ -n "$out" ]; then
  echo "build-sidecar: rustc cannot use $profile (made for another LLVM version? regenerate it with benches/mesh/pgo.py):" >&2
  echo "$out" >&2
  exit 1
fi
if [ "${1:-}" = "--check-profile" ]; then
  echo "build-sidecar: $(rustc --version) can use $profile"
  exit 0
fi

# A function changed since the profile was made is optimized without one, as before: a stale
# profile costs speed, never correctness.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" \
  cargo build --release --locked -p warden-proxy --bin warden-proxy --target-dir target/sidecar "$@"
