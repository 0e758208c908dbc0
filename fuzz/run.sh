#!/usr/bin/env bash
# Fuzzes each target for a bounded time with cargo-fuzz (libFuzzer + AddressSanitizer).
#   fuzz/run.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
# Installs the nightly toolchain and cargo-fuzz when missing. New coverage goes to
# fuzz/corpus/<target> (not committed); an input that fails is copied into
# fuzz/regressions/<target>/, which `cargo test` replays (tests/fuzz_regressions.rs) once the
# bug is fixed. Exits non-zero if any target found a failure.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spiffe_id policy path admission_review csr detect)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "== $target: ${seconds}s"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" "regressions/$target" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1; then
    for found in "artifacts/$target"/*; do
      [ -f "$found" ] && cp "$found" "regressions/$target/"
    done
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failures in: ${failed[*]} (inputs saved under fuzz/regressions/)" >&2
  exit 1
fi
echo "no failures in: ${targets[*]}"
