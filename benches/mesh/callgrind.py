#!/usr/bin/env python3
"""Instructions per call through a Warden pair, counted by callgrind: repeatable where wall
time and CPU time on a shared 2-vCPU machine are not (see benches/README.md).

    python3 benches/mesh/callgrind.py [--binary target/sidecar/release/warden-proxy] [--calls 3000]
        [--contestant warden|warden-audit-all] [--access-log off|file] grpc|http|close|rate

Both sidecars run under `valgrind --tool=callgrind`; 500 warm-up calls, counters zeroed, then
`--calls` calls with h2load (gRPC-shaped h2c calls, 4 connections x 4 streams; or HTTP/1.1
keep-alive GETs on 4 connections; or, for close, HTTP/1.1 GETs one after another, each on a
new connection; or, for rate, HTTP/1.1 GETs at 50 req/s on 32 connections, so that each
request arrives alone as at a low fixed rate), then the counters are dumped and summed. Needs valgrind,
h2load and what benches/mesh/run.sh installs and builds (run it once first). The callgrind
files stay in the printed directory for callgrind_annotate.
"""
import argparse
import glob
import os
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=mesh.WARDEN_PROXY, help="the warden-proxy build to count")
    parser.add_argument("--calls", type=int, default=3000, help="measured calls (default 3000)")
    parser.add_argument("--contestant", default="warden", choices=["warden", "warden-audit-all"],
                        help="warden-audit-all: every decision audited (default: deny-only)")
    parser.add_argument("--access-log", choices=["off", "file"], default="off",
                        help="file: both sidecars write access logs, stderr to a file (default: off)")
    parser.add_argument("kind", choices=["grpc", "http", "close", "rate"])
    args = parser.parse_args()
    c = args.contestant
    mesh.WARDEN_PROXY = args.binary
    work = tempfile.mkdtemp(prefix="warden-callgrind-")
    bench = mesh.Bench(work, args.access_log)
    try:
        procs = pair_under_callgrind(bench, c)
        if args.kind == "grpc":
            message = os.path.join(work, "message.bin")
            with open(message, "wb") as f:
                f.write(mesh.GRPC_MESSAGE)
            url = f"http://127.0.0.1:{mesh.GRPC_PORTS[c][0]}/bench.Echo/Unary"
            load = lambda n: ["h2load", "-n", str(n), "-c4", "-m4", "-t1", "-d", message,  # noqa: E731
                              "-H", "content-type: application/grpc", url]
        elif args.kind == "http":
            url = f"http://127.0.0.1:{mesh.PORTS[c][0]}/"
            load = lambda n: ["h2load", "--h1", "-n", str(n), "-c4", "-t1", url]  # noqa: E731
        if args.kind == "close":
            run_load = lambda n: one_per_connection(mesh.PORTS[c][0], n)  # noqa: E731
        elif args.kind == "rate":
            run_load = lambda n: mesh.run([mesh.LOADGEN, "rate", f"127.0.0.1:{mesh.PORTS[c][0]}",  # noqa: E731
                                           str(RATE), str(max(1, n // RATE)), "32"])
        else:
            run_load = lambda n: mesh.run(load(n))  # noqa: E731
        run_load(500)
        for p in procs:
            mesh.run(["callgrind_control", "-z", str(p.pid)])
        run_load(args.calls)
        for p in procs:
            mesh.run(["callgrind_control", "-d", str(p.pid)])
        time.sleep(2)
        total = 0
        for path in glob.glob(os.path.join(work, "sidecar-*.out.*")):
            with open(path, errors="replace") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("summary:"))
        print(f"{args.binary} {c} {args.kind}: {total / args.calls:,.0f} instructions per call, both sidecars "
              f"({args.calls} calls); callgrind files in {work}")
    finally:
        bench.stop()


# `rate`: slow enough that each request arrives alone at sidecars slowed down by callgrind.
RATE = 50


def pair_under_callgrind(bench, c, *options):
    """Starts contestant `c`'s pair (and the app) with both sidecars under callgrind from
    their start, output in the bench's directory as sidecar-<i>.out; waits until ready."""
    bench.certificates()
    bench.app()
    bench.warden(c)
    # The same sidecars again, under callgrind.
    commands = bench.setups[c](1)
    bench.kill(bench.procs.pop(c))
    procs = [bench.spawn(["valgrind", "--tool=callgrind", *options, f"--callgrind-out-file={bench.work}/sidecar-{i}.out",
                          *cmd], f"valgrind-{i}.log", env=env) for i, (cmd, _, env) in enumerate(commands)]
    bench.procs[c] = procs
    bench.wait_ready(c, mesh.PORTS[c][0], deadline=120)
    return procs


def one_per_connection(port, n):
    """n HTTP/1.1 GETs one after another, each on a new connection (`Connection: close`)."""
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := s.recv(65536):
                response += chunk
        if not response.startswith(b"HTTP/1.1 200"):
            sys.exit(f"request {i} on a new connection failed: {response[:200]!r}")


if __name__ == "__main__":
    main()
