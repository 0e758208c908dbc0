#!/usr/bin/env python3
"""Writes proxy/pgo/warden-proxy.profdata: the profile scripts/build-sidecar.sh optimizes the
sidecar with (profile-guided optimization).

    python3 benches/mesh/pgo.py
    scripts/build-sidecar.sh && python3 benches/mesh/symbol_order.py && scripts/build-sidecar.sh

Why: a sidecar's request path runs through hyper, h2, http, tokio and rustls, and at a steady
rate each request finds the CPU's caches emptied by the other processes, so the code it
touches matters as much as the instructions. With a profile LLVM inlines where calls are hot,
lays out each function's likely branches together and moves cold ones aside: callgrind counted
a quarter fewer instructions per request and 26-29% fewer lines of code run per request (benches/README.md).

How: warden-proxy built with `-Cprofile-generate` (in target/pgo-generate), both sidecars of
mesh.py's `warden` pair run natively through the exercise of symbol_order.py (HTTP/1.1
keep-alive, gRPC-shaped calls, a connection per request, opaque TCP, admin scrapes), a
fixed-rate run, the same again with two workers per sidecar, and with access logs on (one
worker); on SIGTERM each writes its
counts, and `llvm-profdata merge --sparse` (the LLVM major version of this rustc) merges them.
Regenerate after changes to the request path, then the symbol order (its names follow the
optimized build's inlining), as the commands above do. A function changed since is built
without profile, as if there were none. Needs what benches/mesh/run.sh installs and builds,
and Debian's llvm-<major> package (apt-get install llvm-22 for Rust 1.95).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh  # noqa: E402
import symbol_order  # noqa: E402

OUT = os.path.join(mesh.ROOT, "proxy", "pgo", "warden-proxy.profdata")
TARGET = os.path.join(mesh.ROOT, "target", "pgo-generate")
INSTRUMENTED = os.path.join(TARGET, "release", "warden-proxy")
# Where the instrumented sidecars write their counts: a fixed path, since it is part of the
# build's flags and another would rebuild every crate.
RAW = os.path.join(TARGET, "profraw")


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    profdata = llvm_profdata()
    env = dict(os.environ, RUSTFLAGS=f"{os.environ.get('RUSTFLAGS', '')} -Cprofile-generate={RAW}")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "warden-proxy", "--bin", "warden-proxy",
                    "--target-dir", TARGET], cwd=mesh.ROOT, env=env, check=True)
    # The crates' build scripts are instrumented too and wrote their counts while they ran.
    shutil.rmtree(RAW, ignore_errors=True)
    mesh.WARDEN_PROXY = INSTRUMENTED
    work = tempfile.mkdtemp(prefix="warden-pgo-")
    bench = mesh.Bench(work)
    c = "warden"
    try:
        bench.certificates()
        bench.app()
        bench.warden(c)
        for threads in (1, 2):
            if threads != 1:
                bench.restart(c, threads=threads)  # the first pair writes its counts on SIGTERM
            bench.wait_ready(c, mesh.PORTS[c][0])
            symbol_order.exercise(work, c)
            bench.rate(c, 2000, 2)
        # Once more with access logs on, so that their code is optimized as hot, not cold.
        bench.kill(bench.procs.pop(c))
        bench.access_log = "file"
        bench.warden(c)
        bench.wait_ready(c, mesh.PORTS[c][0])
        symbol_order.exercise(work, c)
        bench.rate(c, 2000, 2)
    finally:
        bench.stop()
    files = glob.glob(os.path.join(RAW, "*.profraw"))
    if not files:
        sys.exit(f"no profile written in {RAW}: did the sidecars exit on SIGTERM?")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    subprocess.run([profdata, "merge", "--sparse", "-o", OUT, *files], check=True)
    print(f"{os.path.relpath(OUT, mesh.ROOT)}: {os.path.getsize(OUT):,} bytes from {len(files)} raw profile(s); "
          f"now scripts/build-sidecar.sh, python3 benches/mesh/symbol_order.py, scripts/build-sidecar.sh")


def llvm_profdata():
    """The llvm-profdata of the LLVM version rustc uses: an older one cannot read the raw
    profiles, which carry the version's format."""
    version = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    major = re.search(r"LLVM version: (\d+)", version).group(1)
    for name in (f"llvm-profdata-{major}", "llvm-profdata"):
        path = shutil.which(name)
        if path and f"LLVM version {major}." in subprocess.run([path, "--version"], capture_output=True, text=True).stdout:
            return path
    sys.exit(f"llvm-profdata of LLVM {major} not found: apt-get install llvm-{major}")


if __name__ == "__main__":
    main()
