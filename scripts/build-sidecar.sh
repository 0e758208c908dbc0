#!/usr/bin/env bash
# Builds the sidecar's binary as the image ships it: `warden-proxy` in release mode, optimized
# with the profile in proxy/pgo/warden-proxy.profdata (profile-guided optimization: LLVM lays
# out and inlines for the paths the sidecar really runs; made by benches/mesh/pgo.py), in its
# own target directory (target/sidecar/release/warden-proxy), since the flag applies to every
# crate and would otherwise rebuild target/release from scratch. Extra cargo options pass
# through (e.g. --features hop-timing), before the `--` this script adds. `--check-profile`
# only checks that this toolchain can use the profile (scripts/test.sh runs it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile="$root/proxy/pgo/warden-proxy.profdata"
[ -f "$profile" ] || { echo "build-sidecar: $profile is missing (benches/mesh/pgo.py makes it)" >&2; exit 1; }

# rustc only warns about a profile LLVM cannot read, and builds without it: fail instead. The
# probe is linked as the sidecar is (static C library) and resolves a host name, as the
# sidecar does for its identity and control-plane addresses with no NSS module to load.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
cat > "$probe/main.rs" <<'RUST'
use std::net::ToSocketAddrs;
fn main() {
    if let Err(e) = ("localhost", 1).to_socket_addrs() {
        eprintln!("a static binary cannot resolve localhost: {e}");
        std::process::exit(1);
    }
}
RUST
if ! out=$(rustc -O -Cprofile-use="$profile" "$probe/main.rs" -o "$probe/main" 2>&1) || [ -n "$out" ]; then
  echo "build-sidecar: rustc cannot use $profile (made for another LLVM version? regenerate it with benches/mesh/pgo.py):" >&2
  echo "$out" >&2
  exit 1
fi
if ! out=$(rustc -O -Ctarget-feature=+crt-static "$probe/main.rs" -o "$probe/static" 2>&1 && "$probe/static" 2>&1); then
  echo "build-sidecar: cannot build or run a binary with the C library linked in statically (Debian: libc6-dev has libc.a):" >&2
  echo "$out" >&2
  exit 1
fi
if [ "${1:-}" = "--check-profile" ]; then
  echo "build-sidecar: $(rustc --version) can use $profile and link statically"
  exit 0
fi

# A function changed since the profile was made is optimized without one, as before: a stale
# profile costs speed, never correctness.
# The C library is linked in statically (`crt-static`, a static PIE): a dynamically linked
# sidecar keeps ~2 MB of libc, libm, libgcc_s and the loader resident (pages every process on
# the node shares: its RSS drops by that, its PSS does not), where the static one holds only
# the C functions it calls, laid out with its own code by symbol-order.txt.
# glibc 2.34+ has its `files` and `dns` name lookups built in, so the control-plane and
# identity addresses still resolve, with no NSS module loaded. `cargo rustc` passes the flag
# to the final link only: a RUSTFLAGS crt-static would also reach the build scripts and
# proc-macros, which must stay dynamic.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" \
  cargo rustc --release --locked -p warden-proxy --bin warden-proxy --target-dir target/sidecar "$@" \
  -- -C target-feature=+crt-static
