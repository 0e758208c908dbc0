#!/usr/bin/env python3
"""What bulk throughput the machine allows a relay pair at all: mesh.py's bulk scenario
(1 GiB of opaque TCP from CPU 0, both relays and the byte sink on CPU 1) through two
plaintext HAProxy relays in `mode tcp` with no TLS, once copying through user space as any
TLS relay must and once with `splice` (no copy into user space), interleaved with Warden's
mutual-TLS pair. Warden cannot beat the copying plaintext pair: it makes the same four
socket copies per byte and adds AES-GCM on both sides.

    python3 benches/mesh/bulk_floor.py [--runs 3]

Needs what benches/mesh/run.sh installs and builds (run it once first).
"""
import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh  # noqa: E402

# outbound and inbound ports of the plaintext pairs
RELAYS = {"plain-copy": (18401, 18402), "plain-splice": (18411, 18412)}


def plain_pair(bench, name):
    """Two HAProxy relays in `mode tcp`, no TLS: outbound -> inbound -> the byte sink."""
    out_port, in_port = RELAYS[name]
    splice = "  option splice-auto\n" if name == "plain-splice" else "  no option splice-auto\n"

    def setup(threads):
        head = (f"global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode tcp\n"
                f"  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n{splice}")
        configs = []
        for side, listen, to in (("out", out_port, in_port), ("in", in_port, mesh.SINK_PORT)):
            configs.append(bench.write(f"{name}-{side}.cfg", head + f"listen l\n  bind 127.0.0.1:{listen}\n"
                                       f"  server s 127.0.0.1:{to}\n"))
        return [(["haproxy", "-db", "-f", c], f"{name}-{side}.log", None) for c, side in zip(configs, ("out", "in"))]
    bench.sidecars(name, setup)
    mesh.TCP_PORTS[name] = (out_port, in_port)
    deadline = time.time() + 30
    while True:  # listening (the sink behind it is not HTTP, so no wait_ready)
        try:
            socket.create_connection(("127.0.0.1", out_port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                sys.exit(f"{name}: 127.0.0.1:{out_port} not listening within 30 s; see {bench.work}/*.log")
            time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bench = mesh.Bench(tempfile.mkdtemp(prefix="warden-bulk-floor-"))
    contestants = ["warden", "plain-copy", "plain-splice"]
    results = {c: [] for c in contestants}
    try:
        bench.certificates()
        bench.app()
        bench.warden()
        bench.wait_ready("warden", mesh.PORTS["warden"][0])
        for name in RELAYS:
            plain_pair(bench, name)
        for run in range(args.runs):
            for c in contestants:
                r = bench.bulk(c)
                print(f"run {run + 1}/{args.runs} {c}: {r}", flush=True)
                results[c].append(r)
    finally:
        bench.stop()
    print("\n| pair | Gbit/s, median [min-max] | relay CPU s per GiB |\n|---|---|---|")
    for c in contestants:
        rates = [r["gbit_per_s"] for r in results[c]]
        cpu = statistics.median(r["cpu_s"] for r in results[c])
        print(f"| {c} | {statistics.median(rates):.2f} [{min(rates):.2f}-{max(rates):.2f}] | {cpu:.2f} |")
    print(json.dumps({"runs": results}))


if __name__ == "__main__":
    main()
