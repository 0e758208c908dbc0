#!/usr/bin/env python3
"""Writes proxy/symbol-order.txt: the functions a sidecar runs, hottest first, which the
linker places together at the start of warden-proxy's code (proxy/build.rs).

    python3 benches/mesh/symbol_order.py [--binary target/sidecar/release/warden-proxy] [--check]

Why: the kernel maps a binary's code into a process 64 KiB around each page it touches
(fault-around), so code used at start-up and per request, scattered over 8 MB of text, kept
about 6.8 MB of it resident in every idle sidecar. Packed together it takes a fraction.

How: both sidecars of mesh.py's `warden` pair run under `valgrind --tool=callgrind` from
their start; they serve HTTP/1.1 keep-alive GETs, gRPC-shaped h2c calls, requests on new
connections, opaque TCP and admin scrapes (/metrics, /ready, /live); every function with
instructions counted is kept, ordered by instructions (hottest first: the request path
shares cache lines and pages), by mangled name; then the CPU-dispatched siblings of aws-lc's
functions (valgrind's CPU has fewer features) and what the same sidecars fault in when run
natively (`perf record -e page-faults`); then what runs only in Kubernetes (the
control-plane client, discovery, interception: KUBERNETES_MODE below), by module. A function missing from the list (changed
since, or never run here) is placed after the listed ones, so a stale list costs memory,
never correctness. The names carry cargo's hash of the package, its dependencies and their
versions, and the optimized build's inlining decides which functions exist: regenerate after a
dependency, version or profile (benches/mesh/pgo.py) change, then build again with
scripts/build-sidecar.sh (`--check`
says how much of the list a build has; mesh.py prints it with the memory figures). Needs
valgrind, perf, h2load and what benches/mesh/run.sh installs and builds.
"""
import argparse
import bisect
import collections
import glob
import os
import re
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh  # noqa: E402
import callgrind  # noqa: E402

OUT = os.path.join(mesh.ROOT, "proxy", "symbol-order.txt")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=mesh.WARDEN_PROXY, help="the warden-proxy build to run")
    parser.add_argument("--check", action="store_true",
                        help="only say how much of the list the binary has (run after a release build)")
    args = parser.parse_args()
    if args.check:
        found, listed = coverage(args.binary)
        print(f"{found} of {listed} listed functions are in {args.binary}", flush=True)
        sys.exit(0 if found >= 0.9 * listed else "the list is stale: regenerate it (see the top of this script)")
    mesh.WARDEN_PROXY = args.binary
    work = tempfile.mkdtemp(prefix="warden-symbol-order-")
    bench = mesh.Bench(work)
    c = "warden"
    try:
        procs = callgrind.pair_under_callgrind(bench, c, "--demangle=no")
        exercise(work, c)
        for p in procs:
            mesh.run(["callgrind_control", "-d", str(p.pid)])
        time.sleep(2)
        costs = collections.Counter()
        for path in glob.glob(os.path.join(work, "sidecar-*.out*")):
            costs.update(function_costs(path))
    finally:
        bench.stop()
    ours = symbols(args.binary)  # with the C library's: the sidecar links it statically
    measured = [name for name, cost in sorted(costs.items(), key=lambda kv: (-kv[1], kv[0]))
                if cost > 0 and name in ours]
    names = []
    for name in measured + dispatch_siblings(measured, ours) + native_faults(args.binary, ours) \
            + kubernetes_mode(args.binary):
        if name not in names:
            names.append(name)
    with open(OUT, "w") as f:
        f.write("".join(f"{n}\n" for n in names))
    print(f"{len(names)} functions, in {os.path.relpath(OUT, mesh.ROOT)} (callgrind files in {work})")


def dispatch_siblings(names, ours):
    """aws-lc picks its bignum code by CPU feature at run time: valgrind's CPU lacks ADX, so
    callgrind sees `foo_alt` where this machine runs `foo`. Each such function's sibling."""
    out = []
    for name in names:
        sibling = name[:-4] if name.endswith("_alt") else name + "_alt"
        if name.startswith("aws_lc_") and sibling in ours:
            out.append(sibling)
    return out


def native_faults(binary, ours):
    """Functions the sidecars fault in when run natively (not under valgrind: other CPU
    features, other code), from `perf record -e page-faults` during the same exercise.
    The kernel maps 64 KiB around each fault, so one run shows the first function of each
    window only: enough to pull the strays into the packed block over a few regenerations."""
    work = tempfile.mkdtemp(prefix="warden-symbol-order-native-")
    bench = mesh.Bench(work)
    c = "warden"
    bases = []
    try:
        bench.certificates()
        bench.app()
        bench.warden(c)
        commands = bench.setups[c](1)
        bench.kill(bench.procs.pop(c))
        procs = [bench.spawn(["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d",
                              "-o", f"{work}/faults-{i}.data", "--", *cmd], f"perf-{i}.log", env=env)
                 for i, (cmd, _, env) in enumerate(commands)]
        bench.procs[c] = procs
        bench.wait_ready(c, mesh.PORTS[c][0], deadline=60)
        for p in procs:
            (sidecar,) = bench.pids(p)[1:]  # perf's one child
            with open(f"/proc/{sidecar}/maps") as f:
                bases.append(next(int(line.split("-")[0], 16) for line in f
                                  if line.split()[2] == "00000000" and line.rstrip().endswith(binary)))
        exercise(work, c)
    finally:
        bench.stop()
    starts, named = [], []
    for line in mesh.run(["nm", "-n", binary]).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            starts.append(int(parts[0], 16))
            named.append(parts[2])
    out = []
    for i, base in enumerate(bases):
        faults = mesh.run(["perf", "script", "-i", f"{work}/faults-{i}.data", "-F", "addr"]).stdout.split()
        for address in faults:
            j = bisect.bisect_right(starts, int(address, 16) - base) - 1
            if j >= 0 and named[j] in ours and named[j] not in out:
                out.append(named[j])
    return out


# What a sidecar runs in Kubernetes and this bench cannot (no control plane, no interception):
# listed by module after the measured functions, so that it is packed too.
KUBERNETES_MODE = ("warden_proxy::control_plane", "warden_proxy::discovery", "warden_proxy::grpc_client",
                   "warden_proxy::original_dst", "warden_proxy::interception", "warden_api::")


def kubernetes_mode(binary):
    """The functions of `binary` (mangled) whose names mention a KUBERNETES_MODE module."""
    mangled = mesh.run(["nm", binary]).stdout.splitlines()
    demangled = mesh.run(["nm", "-C", binary]).stdout.splitlines()
    names = []
    for raw, readable in zip(mangled, demangled):
        raw, readable = raw.split(maxsplit=2), readable.split(maxsplit=2)
        if len(raw) == 3 and raw[1] in "tT" and any(m in readable[2] for m in KUBERNETES_MODE):
            names.append(raw[2])
    return names


def symbols(binary):
    """The function symbols (mangled) of `binary`; `i`: glibc's CPU-dispatched functions,
    whose resolvers run at every start."""
    out = mesh.run(["nm", binary]).stdout
    return {p[2] for p in (line.split() for line in out.splitlines()) if len(p) == 3 and p[1] in "tTwWi"}


def coverage(binary):
    """(listed functions present in `binary`, listed functions): a list made for another
    build of the code (a dependency or the version changed the mangled names) lays out
    less of it, and the sidecar's resident code grows back towards the whole text."""
    with open(OUT) as f:
        names = [line.strip() for line in f if line.strip()]
    present = symbols(binary)
    return sum(n in present for n in names), len(names)


def exercise(work, c):
    """Every kind of traffic a sidecar serves in the benches, a few hundred times each."""
    out, _ = mesh.PORTS[c]
    mesh.run(["h2load", "--h1", "-n", "2000", "-c4", "-t1", f"http://127.0.0.1:{out}/"])
    message = os.path.join(work, "message.bin")
    with open(message, "wb") as f:
        f.write(mesh.GRPC_MESSAGE)
    mesh.run(["h2load", "-n", "2000", "-c4", "-m4", "-t1", "-d", message,
              "-H", "content-type: application/grpc", f"http://127.0.0.1:{mesh.GRPC_PORTS[c][0]}/bench.Echo/Unary"])
    callgrind.one_per_connection(out, 300)
    for _ in range(5):
        mesh.run([mesh.LOADGEN, "bulk", f"127.0.0.1:{mesh.TCP_PORTS[c][0]}", str(8 << 20)])
    for port in (17191, 17192):
        for path in ("/metrics", "/ready", "/live"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
                r.read()


def function_costs(path):
    """Instructions per function (mangled name) in one callgrind output file."""
    names, costs = {}, collections.Counter()
    current = None
    # Names are compressed: `(id) name` the first time, in fn= or cfn= lines, `(id)` after.
    ref = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = ref.match(line.rstrip("\n"))
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                current = names.get(m.group(1)) if m else line[3:].rstrip("\n")
            elif line[:1].isdigit() or line[:1] in "+-*":
                # a cost line of `current`: position, then instructions
                parts = line.split()
                if current and len(parts) >= 2 and parts[1].isdigit():
                    costs[current] += int(parts[1])
            elif line.startswith(("calls=", "cfn=", "cfi=", "cob=")):
                # the next cost line is the call's inclusive cost, not `current`'s own
                if line.startswith("calls="):
                    next(f, None)
    return costs


if __name__ == "__main__":
    main()
