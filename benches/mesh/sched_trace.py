#!/usr/bin/env python3
"""How long each process on the sidecars' CPU waits to run once woken, and how long it then
runs, under mesh.py's open-loop load: the scheduler's view of a latency tail. For each
contestant in turn, `perf record` takes every `sched_waking` and `sched_switch` on every
CPU during one `loadgen rate` run (a wake-up is recorded on the waker's CPU: the load
generator's on CPU 0); the script then prints, for each process on CPU 1 (both sidecars and
the app), its wake-ups' delays and its runs' lengths (p50 / p99 / p99.9 / max, and the count
over 0.5 ms).

    python3 benches/mesh/sched_trace.py [--rate 5000] [--seconds 8] [--only warden nginx]

Tracing costs each context switch a few microseconds, so the latencies loadgen reports in
this run are higher than mesh.py's; compare the contestants with each other, not with
mesh.py. Needs perf (Debian `linux-perf`) and what benches/mesh/run.sh installs and builds.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh  # noqa: E402

SWITCH = re.compile(r"\[(\d+)\]\s+([\d.]+): sched:sched_switch: .*?prev_pid=(\d+) .*==> .*?next_pid=(\d+)")
WAKING = re.compile(r"\[\d+\]\s+([\d.]+): sched:sched_waking: .*?pid=(\d+) ")


def threads(pid):
    """The thread ids of process `pid`."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def trace(bench, c, rate, seconds):
    """One rate run of contestant `c` under perf; returns loadgen's result and the `perf
    script` lines."""
    data = bench.path(f"sched-{c}.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "sched:sched_switch",
                             "-e", "sched:sched_waking", "-o", data], stderr=subprocess.DEVNULL)
    try:
        result = bench.rate(c, rate, seconds)
    finally:
        perf.send_signal(2)
        perf.wait()
    script = mesh.run(["perf", "script", "-i", data, "-F", "cpu,time,event,trace"]).stdout
    return result, script.splitlines()


def analyse(lines, roles):
    """{role: (run lengths, wake-up delays)} in seconds, for the threads in `roles` (tid -> role)."""
    runs, delays = collections.defaultdict(list), collections.defaultdict(list)
    running = {}  # cpu -> (tid, since)
    woken = {}  # tid -> when
    for line in lines:
        m = SWITCH.search(line)
        if m:
            cpu, t, prev, nxt = int(m[1]), float(m[2]), int(m[3]), int(m[4])
            if cpu in running and running[cpu][0] == prev and prev in roles:
                runs[roles[prev]].append(t - running[cpu][1])
            running[cpu] = (nxt, t)
            if nxt in woken:
                when = woken.pop(nxt)
                if nxt in roles:
                    delays[roles[nxt]].append(t - when)
            continue
        m = WAKING.search(line)
        if m:
            woken[int(m[2])] = float(m[1])
    return {role: (runs[role], delays[role]) for role in sorted(set(roles.values()))}


def row(values):
    if not values:
        return "- | - | - | - | -"
    v = sorted(values)
    pick = lambda p: v[min(len(v) - 1, int(len(v) * p))] * 1e6  # noqa: E731
    return (f"{pick(0.5):.0f} | {pick(0.99):.0f} | {pick(0.999):.0f} | {v[-1] * 1e6:.0f} | "
            f"{sum(x > 5e-4 for x in v)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=["warden", "nginx"])
    args = parser.parse_args()
    bench = mesh.Bench(tempfile.mkdtemp(prefix="warden-sched-"))
    try:
        bench.certificates()
        bench.app()
        app = bench.others[0]
        latency = {}
        for c in args.only:
            getattr(bench, c.replace("-", "_"))()
            bench.wait_ready(c, mesh.PORTS[c][0])
        print("| contestant | process | wake-up to run, µs: p50 | p99 | p99.9 | max | over 0.5 ms "
              "| run length, µs: p50 | p99 | p99.9 | max | over 0.5 ms | runs |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in args.only:
            bench.rate(c, args.rate, 2)  # warm-up
            roles = {t: "app" for p in bench.pids(app) for t in threads(p)}
            for side, proc in zip(("out", "in"), bench.procs[c]):
                roles.update({t: f"sidecar {side}" for p in bench.pids(proc) for t in threads(p)})
            result, lines = trace(bench, c, args.rate, args.seconds)
            latency[c] = " / ".join(f"{result[k]:.3f}" for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))
            for role, (runs, delays) in analyse(lines, roles).items():
                print(f"| {c} | {role} | {row(delays)} | {row(runs)} | {len(runs)} |", flush=True)
        print("\nloadgen's latency in the traced runs, p50 / p99 / p99.9 / max ms:")
        for c, figures in latency.items():
            print(f"- {c}: {figures}")
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
