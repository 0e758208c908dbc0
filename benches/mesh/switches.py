#!/usr/bin/env python3
"""Context switches and system calls per request of each contestant's two sidecars under
keep-alive load, counted by `perf stat` (software events and tracepoints, which work where
this VM exposes no hardware counters); with CPU per request and req/s from the same run.

    python3 benches/mesh/switches.py [--workers 2] [--connections 64] [--unpinned] [--close | --rate 5000]
        [--runs 2] [--seconds 6] [--only warden haproxy-l7] [--by-syscall]

The load is wrk with as many threads as sidecar workers, unpinned when the sidecars have
more than one worker or with --unpinned (which also leaves one-worker sidecars unpinned),
as mesh.py's threads2 scenario runs it; --close: a new connection per request; --rate N:
mesh.py's open-loop generator at N req/s instead (generator on CPU 0). Needs perf (Debian `linux-perf`) and what
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
# --by-syscall: the system calls a relay makes, each counted on its own, page faults, and the
# packets it puts on the loopback device (`net_dev_xmit`: TCP segments, pure ACKs included).
SYSCALLS = ["epoll_wait", "epoll_pwait", "epoll_ctl", "read", "recvfrom", "recvmsg", "readv",
            "write", "writev", "sendto", "sendmsg", "futex", "madvise", "mmap", "munmap",
            "getrandom", "clock_nanosleep", "sched_yield", "accept4", "close", "setsockopt"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="workers per sidecar (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--unpinned", action="store_true", help="one-worker sidecars on any CPU too")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--close", action="store_true", help="a new app connection per request")
    shape.add_argument("--rate", type=int, help="open loop at this many req/s (mesh.py's rate "
                       "scenario: loadgen rate, 32 connections) instead of wrk's closed loop")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--only", nargs="*", default=["warden", "haproxy-l7"])
    parser.add_argument("--by-syscall", action="store_true",
                        help="count each system call (and page faults and packets sent) on its own")
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

    def load(seconds):
        """Runs the load for `seconds`; returns the requests it sent."""
        if args.rate:
            # mesh.py's own run (it exits on failed requests); it sends its first second too.
            bench.rate(c, args.rate, seconds - 1)
            return args.rate * seconds
        out = mesh.run(mesh.pinned(cpu, ["wrk", *shape, f"-d{seconds}s", url])).stdout
        return int(re.search(r"(\d+) requests in", out).group(1))

    load(2)  # warm-up
    pids = [pid for proc in bench.procs[c] for pid in bench.pids(proc)]
    counts = bench.path(f"perf-{c}.csv")
    before = bench.cpu_seconds(c)
    events = EVENTS
    if args.by_syscall:
        events += ",page-faults,net:net_dev_xmit," + ",".join(f"syscalls:sys_enter_{s}" for s in SYSCALLS)
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids)), "-o", counts])
    time.sleep(0.3)
    requests = load(args.seconds)
    perf.send_signal(signal.SIGINT)
    perf.wait()
    cpu_us = sum(a - b for a, b in zip(bench.cpu_seconds(c), before)) * 1e6 / requests
    per_request = {}
    for line in open(counts):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            name = fields[2].split(":")[-1].removeprefix("sys_enter_")
            per_request[name] = float(fields[0]) / requests
    figures = "  ".join(f"{k} {v:.2f}" for k, v in per_request.items() if v >= 0.005)
    if args.rate:
        kind = f"open loop, 32 connections, {args.rate:,} req/s"
    else:
        kind = f"{args.connections} connections, " + ("connection per request" if args.close else "keep-alive")
    return (f"{c:12} {args.workers} worker(s), {kind}: {requests / args.seconds:8,.0f} req/s, "
            f"{cpu_us:5.1f} µs CPU/request; per request: {figures}")


if __name__ == "__main__":
    main()
