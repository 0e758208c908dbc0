#!/usr/bin/env python3
"""Where a request's latency goes through a Warden pair, hop by hop, at a fixed rate.

    scripts/build-sidecar.sh --features hop-timing
    cp target/sidecar/release/warden-proxy target/sidecar/release/warden-proxy-hops
    scripts/build-sidecar.sh    # the sidecar the other benches run, without the feature again
    python3 benches/mesh/hops.py [--binary target/sidecar/release/warden-proxy-hops] [--seconds 10]
        [--rates 2000 5000]

The pair runs a build with the bench-only `hop-timing` feature (proxy/src/hop_timing.rs):
the client proxy stamps each request, the server proxy answers with its own stamps, and the
client proxy keeps five hops per request (client_out, server_in, app, server_back,
client_back; `proxies` is all but the app). For each rate: the direct baseline, then the
pair, each under `loadgen rate` on 32 connections from CPU 0 as in mesh.py's rate scenarios,
first second excluded. Prints a markdown table: the generator's view (from each request's
scheduled send to its response) and the proxies' own hops, p50 / p99 / p99.9 in µs.
Needs what benches/mesh/run.sh installs and builds (run it once first).
"""
import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh  # noqa: E402

HOPS = ["client_out", "server_in", "app", "server_back", "client_back", "proxies"]
# The client proxy's admin port in mesh.py's `warden` pair.
ADMIN = "http://127.0.0.1:17191"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=os.path.join(mesh.ROOT, "target", "sidecar", "release", "warden-proxy-hops"),
                        help="a warden-proxy built with --features hop-timing")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per rate (default 10)")
    parser.add_argument("--rates", type=int, nargs="+", default=[2000, 5000], help="req/s (default 2000 5000)")
    args = parser.parse_args()
    mesh.WARDEN_PROXY = args.binary
    work = tempfile.mkdtemp(prefix="warden-hops-")
    bench = mesh.Bench(work)
    rows = []
    try:
        bench.certificates()
        bench.app()
        bench.warden()
        bench.wait_ready("warden", mesh.PORTS["warden"][0])
        get("/debug/hops")  # a build without the feature answers 404 here
        for rate in args.rates:
            direct = bench.rate("direct", rate, args.seconds)
            bench.rate("warden", rate, 1)  # warm-up
            get("/debug/hops/reset")
            pair = bench.rate("warden", rate, args.seconds)
            # The generator excludes its first second; the proxies keep every request.
            hops = json.loads(get("/debug/hops"))
            rows.append((rate, direct, pair, hops))
    finally:
        bench.stop()
    print(table(rows, args))
    out = os.path.join(mesh.ROOT, "benches", "results", time.strftime("hops-%Y-%m-%dT%H-%M-%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump([{"rate": r, "direct": d, "warden": p, "hops": h} for r, d, p, h in rows], f, indent=1)
    print(f"\nraw results: {os.path.relpath(out, mesh.ROOT)}")


def get(path):
    try:
        with urllib.request.urlopen(ADMIN + path, timeout=10) as r:
            return r.read().decode()
    except OSError as e:
        sys.exit(f"GET {ADMIN}{path}: {e} (is the binary built with --features hop-timing?)")


def table(rows, args):
    out = [f"{args.seconds} s per rate; µs, p50 / p99 / p99.9; {os.path.basename(args.binary)}", "",
           "| req/s | direct (generator) | pair (generator) | added (generator) | " + " | ".join(HOPS) + " | samples |",
           "|---" * (5 + len(HOPS)) + "|"]
    for rate, direct, pair, hops in rows:
        def gen(r):
            return [r["p50_ms"] * 1000, r["p99_ms"] * 1000, r["p999_ms"] * 1000]
        added = [p - d for p, d in zip(gen(pair), gen(direct))]
        cells = [triple(gen(direct)), triple(gen(pair)), triple(added)]
        cells += [triple([hops["hops"][h][q] for q in ("p50", "p99", "p999")]) for h in HOPS]
        out.append(f"| {rate:,} | " + " | ".join(cells) + f" | {hops['samples']:,} |")
    return "\n".join(out)


def triple(values):
    return " / ".join(f"{v:,.0f}" for v in values)


if __name__ == "__main__":
    main()
