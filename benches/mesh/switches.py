#!/usr/bin/env python3
"""Context switches and system calls per request of each contestant's two sidecars under
keep-alive load, counted by `perf stat` (software events and tracepoints, which work where
this VM exposes no hardware counters); with CPU per request and req/s from the same run.

    python3 benches/mesh/switches.py [--workers 2] [--connections 64] [--unpinned] [--close]
        [--runs 2] [--seconds 6] [--only warden haproxy-l7]

The load is wrk with as many threads as sidecar workers, unpinned when the sidecars have
more than one worker or with --unpinned (which also leaves one-worker sidecars unpinned),
as mesh.py's threads2 scenario runs it; --close: a new connection per request. Needs perf (Debian `linux-perf`) and what
benches/mesh/run.sh installs and builds (run it once first).
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh  # noqa: E402

EVENTS = "raw_syscalls:sys_enter,context-switches,cpu-migrations"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="workers per sidecar (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--unpinned", action="store_true", help="one-worker sidecars on any CPU too")
    parser.add_argument("--close", action="store_true", help="a new app connection per request")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--only", nargs="*", default=["warden", "haproxy-l7"])
    args = parser.parse_args()
    unpinned = args.unpinned or args.workers > 1
    cpu = None if unpinned else 0
    bench = mesh.Bench(tempfile.mkdtemp(prefix="warden-switches-"))
    try:
        bench.certificates()
        bench.app()
        for c in args.only:
            getattr(bench, c.replace("-", "_"))()
            bench.wait_ready(c, mesh.PORTS[c][0])
            bench.restart(c, threads=args.workers, unpinned=args.unpinned)
        for _ in range(args.runs):
            for c in args.only:
                print(measure(bench, c, args, cpu), flush=True)
    finally:
        bench.stop()


def measure(bench, c, args, cpu):
    url = f"http://127.0.0.1:{mesh.PORTS[c][0]}/"
    shape = [f"-t{args.workers}", f"-c{args.connections}"]
    if args.close:
        shape += ["-H", "Connection: close"]
    mesh.run(mesh.pinned(cpu, ["wrk", *shape, "-d2s", url]))  # warm-up
    pids = [pid for proc in bench.procs[c] for pid in bench.pids(proc)]
    counts = bench.path(f"perf-{c}.csv")
    before = bench.cpu_seconds(c)
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", EVENTS, "-p", ",".join(map(str, pids)), "-o", counts])
    time.sleep(0.3)
    out = mesh.run(mesh.pinned(cpu, ["wrk", *shape, f"-d{args.seconds}s", url])).stdout
    perf.send_signal(signal.SIGINT)
    perf.wait()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = sum(a - b for a, b in zip(bench.cpu_seconds(c), before)) * 1e6 / requests
    per_request = {}
    for line in open(counts):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            per_request[fields[2].split(":")[-1]] = float(fields[0]) / requests
    figures = "  ".join(f"{k} {v:.2f}" for k, v in per_request.items())
    kind = "connection per request" if args.close else "keep-alive"
    return (f"{c:12} {args.workers} worker(s), {args.connections} connections, {kind}: {requests / args.seconds:8,.0f} req/s, "
            f"{cpu_us:5.1f} µs CPU/request; per request: {figures}")


if __name__ == "__main__":
    main()
