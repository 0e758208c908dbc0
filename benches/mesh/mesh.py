#!/usr/bin/env python3
"""Side-by-side mTLS sidecar pairs: Warden, nginx, HAProxy and stunnel, plus a direct baseline.

Shape: wrk -> outbound sidecar (plaintext in, originates mTLS) -> inbound sidecar (terminates
mTLS, requires and verifies the client certificate) -> app (nginx, 64-byte body).
Every contestant uses the same P-256 certificates from Warden's CA, TLS 1.3 and one worker;
wrk runs on CPU 0, the app and every sidecar on CPU 1 (see ../../../shared/BENCHMARKING.md).
Warden runs with its policy engine on (one matching ALLOW policy) and metrics on.

Run through benches/mesh/run.sh, which installs the peers and builds Warden first.
Scenario implemented so far: keep-alive HTTP/1.1, 16 connections, closed loop (req/s,
p50/p99, sidecar CPU microseconds per request), and idle memory (RSS and PSS).
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WARDEN = os.path.join(ROOT, "target", "release", "warden")
TD = "cluster.local"
CLIENT_ID = f"spiffe://{TD}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/bench/sa/server"
APP_PORT = 18080
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = "x" * 64

# contestant -> (outbound port the load generator calls, inbound port)
PORTS = {
    "direct": (APP_PORT, None),
    "warden": (18101, 18201),
    "nginx": (18102, 18202),
    "haproxy": (18103, 18203),
    "stunnel": (18104, 18204),
}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def pinned(cpu, cmd):
    return ["taskset", "-c", str(cpu)] + cmd


class Bench:
    def __init__(self, work):
        self.work = work
        self.procs = {}  # name -> list of Popen (sidecar processes, for CPU and memory)
        self.others = []

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def write(self, name, text, mode=0o644):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        return p

    def spawn(self, cmd, log, cpu=1, env=None):
        out = open(self.path(log), "w")
        return subprocess.Popen(pinned(cpu, cmd), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    # --- certificates -------------------------------------------------------------------
    def certificates(self):
        run([WARDEN, "ca", "init", "--dir", self.path("ca"), "--trust-domain", TD])
        for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
            run([WARDEN, "ca", "issue", "--dir", self.path("ca"), "--id", spiffe,
                 "--out", self.path(name), "--ttl", "24h"])
            with open(self.path(f"{name}.pem"), "w") as pem:  # haproxy wants cert + key
                pem.write(open(self.path(f"{name}.crt")).read())
                pem.write(open(self.path(f"{name}.key")).read())

    # --- the app --------------------------------------------------------------------------
    def app(self):
        conf = self.write("app.conf", f"""
worker_processes 1;
daemon off;
pid {self.path('app.pid')};
error_log {self.path('app.err')};
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{APP_PORT} reuseport;
    location / {{ default_type text/plain; return 200 "{BODY}"; }}
  }}
}}
""")
        self.others.append(self.spawn(["nginx", "-c", conf, "-p", self.work], "app.log"))

    # --- contestants ------------------------------------------------------------------------
    def warden(self):
        out_port, in_port = PORTS["warden"]
        tokens = self.path("tokens")
        for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
            token = run([WARDEN, "ca", "join-token", "--tokens", tokens, "--id", spiffe]).stdout.strip()
            self.write(f"{name}.token", token + "\n", 0o600)
        self.others.append(self.spawn(
            [WARDEN, "identity", "--ca-dir", self.path("ca"), "--auth", "join-tokens",
             "--join-tokens", tokens, "--listen", "127.0.0.1:17150",
             "--admin-listen", "127.0.0.1:17190"], "identity.log"))
        os.makedirs(self.path("policies"), exist_ok=True)
        self.write("policies/allow.yaml", f"""apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: server-allow-client, namespace: bench}}
spec:
  selector: {{serviceAccounts: [server]}}
  action: ALLOW
  rules: [{{from: {{identities: ["{CLIENT_ID}"]}}}}]
""")
        common = f"""trust_domain: {TD}
worker_threads: 1
identity:
  url: https://127.0.0.1:17150
  trust_bundle: {self.path('ca', 'bundle.crt')}
  namespace: bench
"""
        client = self.write("warden-client.yaml", common + f"""  service_account: client
  token_file: {self.path('client.token')}
admin: {{listen: 127.0.0.1:17191}}
outbound:
  - listen: 127.0.0.1:{out_port}
    destination: 127.0.0.1:{in_port}
    identity: {SERVER_ID}
""")
        server = self.write("warden-server.yaml", common + f"""  service_account: server
  token_file: {self.path('server.token')}
admin: {{listen: 127.0.0.1:17192}}
inbound:
  - listen: 127.0.0.1:{in_port}
    app: 127.0.0.1:{APP_PORT}
    protocol: http1
authorization:
  policy_dir: {self.path('policies')}
""")
        time.sleep(1)  # the identity service binds
        env = dict(os.environ, WARDEN_LOG="warn")
        self.procs["warden"] = [
            self.spawn([WARDEN, "proxy", "--config", client], "warden-client.log", env=env),
            self.spawn([WARDEN, "proxy", "--config", server], "warden-server.log", env=env),
        ]

    def nginx(self):
        out_port, in_port = PORTS["nginx"]
        module = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
        head = f"{module}\nworker_processes 1;\ndaemon off;\nevents {{ worker_connections 4096; }}\n"
        out = self.write("nginx-out.conf", head + f"""pid {self.path('nginx-out.pid')};
error_log {self.path('nginx-out.err')};
stream {{
  server {{
    listen 127.0.0.1:{out_port};
    proxy_pass 127.0.0.1:{in_port};
    proxy_ssl on;
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_certificate {self.path('client.crt')};
    proxy_ssl_certificate_key {self.path('client.key')};
    # nginx checks a DNS name it cannot skip, and SVIDs carry a SPIFFE URI, so it does not
    # verify the server here (less work than Warden, which verifies the server's SVID).
    proxy_ssl_verify off;
    proxy_ssl_session_reuse on;
  }}
}}
""")
        inn = self.write("nginx-in.conf", head + f"""pid {self.path('nginx-in.pid')};
error_log {self.path('nginx-in.err')};
stream {{
  server {{
    listen 127.0.0.1:{in_port} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {self.path('server.crt')};
    ssl_certificate_key {self.path('server.key')};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_client_certificate {self.path('ca', 'bundle.crt')};
    proxy_pass 127.0.0.1:{APP_PORT};
  }}
}}
""")
        self.procs["nginx"] = [
            self.spawn(["nginx", "-c", out, "-p", self.work], "nginx-out.log"),
            self.spawn(["nginx", "-c", inn, "-p", self.work], "nginx-in.log"),
        ]

    def haproxy(self):
        out_port, in_port = PORTS["haproxy"]
        head = "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"
        out = self.write("haproxy-out.cfg", head + f"""frontend f
  bind 127.0.0.1:{out_port}
  default_backend b
backend b
  server s 127.0.0.1:{in_port} ssl crt {self.path('client.pem')} ca-file {self.path('ca', 'bundle.crt')} verify required ssl-min-ver TLSv1.3
""")
        inn = self.write("haproxy-in.cfg", head + f"""frontend f
  bind 127.0.0.1:{in_port} ssl crt {self.path('server.pem')} ca-file {self.path('ca', 'bundle.crt')} verify required ssl-min-ver TLSv1.3
  default_backend b
backend b
  server app 127.0.0.1:{APP_PORT}
""")
        self.procs["haproxy"] = [
            self.spawn(["haproxy", "-db", "-f", out], "haproxy-out.log"),
            self.spawn(["haproxy", "-db", "-f", inn], "haproxy-in.log"),
        ]

    def stunnel(self):
        out_port, in_port = PORTS["stunnel"]
        out = self.write("stunnel-out.conf", f"""foreground = yes
pid =
[out]
client = yes
accept = 127.0.0.1:{out_port}
connect = 127.0.0.1:{in_port}
cert = {self.path('client.crt')}
key = {self.path('client.key')}
CAfile = {self.path('ca', 'bundle.crt')}
verifyChain = yes
sslVersionMin = TLSv1.3
""")
        inn = self.write("stunnel-in.conf", f"""foreground = yes
pid =
[in]
accept = 127.0.0.1:{in_port}
connect = 127.0.0.1:{APP_PORT}
cert = {self.path('server.crt')}
key = {self.path('server.key')}
CAfile = {self.path('ca', 'bundle.crt')}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
""")
        self.procs["stunnel"] = [
            self.spawn(["stunnel4", out], "stunnel-out.log"),
            self.spawn(["stunnel4", inn], "stunnel-in.log"),
        ]

    # --- measuring ----------------------------------------------------------------------------
    def pids(self, name):
        """Every process of a contestant's sidecars (nginx: master and worker)."""
        pids = []
        for p in self.procs.get(name, []):
            pids.append(p.pid)
            # taskset execs in place; nginx forks its worker as a child
            children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            pids += [int(c) for c in children]
        return pids

    def cpu_seconds(self, name):
        total = 0
        for pid in self.pids(name):
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except FileNotFoundError:
                pass
        return total / CLK_TCK

    def memory_kb(self, name):
        rss = pss = 0
        for pid in self.pids(name):
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        return rss, pss

    def wait_ready(self, name, port, deadline=30):
        end = time.time() + deadline
        while time.time() < end:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
            if r.stdout == "200":
                return
            time.sleep(0.2)
        sys.exit(f"{name}: no 200 through 127.0.0.1:{port} within {deadline}s; see {self.work}/*.log")

    def keepalive(self, name, seconds):
        port = PORTS[name][0]
        url = f"http://127.0.0.1:{port}/"
        run(pinned(0, ["wrk", "-t1", "-c16", "-d2s", url]))  # warm-up
        before = self.cpu_seconds(name)
        out = run(pinned(0, ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", url])).stdout
        cpu = self.cpu_seconds(name) - before
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors or "Socket errors" in out:
            sys.exit(f"{name}: wrk saw errors:\n{out}")
        def latency(pct):
            m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
            value, unit = float(m.group(1)), m.group(2)
            return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        return {
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": latency(50),
            "p99_ms": latency(99),
            "cpu_us_per_req": (cpu * 1e6 / requests) if name != "direct" else None,
        }

    def stop(self):
        for p in [p for ps in self.procs.values() for p in ps] + self.others:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in [p for ps in self.procs.values() for p in ps] + self.others:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def fmt(m, digits=0):
    value, lo, hi = m
    if value is None:
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(value)} [{f.format(lo)}-{f.format(hi)}]"


def versions():
    def first(cmd, starts=""):
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l.strip() for l in (r.stdout + r.stderr).splitlines() if l.strip().startswith(starts)]
        return lines[0] if lines else "?"
    return {
        "warden": first([WARDEN, "--version"]) + " (rustls 0.23, aws-lc-rs; X25519MLKEM768 preferred)",
        "nginx": first(["nginx", "-v"]),
        "haproxy": first(["haproxy", "-v"]),
        "stunnel": first(["stunnel4", "-version"], "stunnel "),
        "openssl": first(["openssl", "version"]),
        "wrk": first(["wrk", "--version"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per run (default 10)")
    parser.add_argument("--only", nargs="*", default=list(PORTS), help="contestants to run")
    args = parser.parse_args()
    contestants = [c for c in PORTS if c in args.only]

    work = tempfile.mkdtemp(prefix="warden-mesh-bench-")
    bench = Bench(work)
    try:
        bench.certificates()
        bench.app()
        for c in contestants:
            if c != "direct":
                getattr(bench, c)()
        for c in contestants:
            bench.wait_ready(c, PORTS[c][0])
        idle = {c: bench.memory_kb(c) for c in contestants if c != "direct"}

        results = {c: [] for c in contestants}
        for run_index in range(args.runs):
            for c in contestants:
                r = bench.keepalive(c, args.seconds)
                results[c].append(r)
                print(f"run {run_index + 1}/{args.runs} {c}: {r}", file=sys.stderr)
    finally:
        bench.stop()

    direct_rps = med([r["rps"] for r in results.get("direct", [])])[0]
    peers = [c for c in contestants if c not in ("direct", "warden")]
    best_peer_cpu = min((med([r["cpu_us_per_req"] for r in results[c]])[0] for c in peers), default=None)
    rows = []
    for c in contestants:
        rps = med([r["rps"] for r in results[c]])
        cpu = med([r["cpu_us_per_req"] for r in results[c]])
        rows.append({
            "contestant": c,
            "rps": rps, "p50_ms": med([r["p50_ms"] for r in results[c]]),
            "p99_ms": med([r["p99_ms"] for r in results[c]]),
            "cpu_us_per_req": cpu,
            "rps_vs_direct": rps[0] / direct_rps if direct_rps else None,
            "cpu_vs_best_peer": cpu[0] / best_peer_cpu if cpu[0] and best_peer_cpu else None,
            "idle_rss_kb": idle.get(c, (None, None))[0], "idle_pss_kb": idle.get(c, (None, None))[1],
        })

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    machine = f"{os.cpu_count()} vCPU {platform.machine()}, {platform.platform()}"
    record = {"date": stamp, "machine": machine, "command": " ".join(sys.argv),
              "runs": args.runs, "seconds": args.seconds, "versions": versions(),
              "scenario": "keep-alive HTTP/1.1, 16 connections, closed loop (wrk -t1 -c16)",
              "raw": results, "summary": rows}
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benches", "results", f"mesh-{stamp}.json")
    with open(out, "w") as f:
        json.dump(record, f, indent=2)

    print(f"keep-alive HTTP/1.1, 16 connections; medians of {args.runs} interleaved runs of {args.seconds}s [min-max]")
    print("| contestant | req/s | p50 ms | p99 ms | sidecar CPU µs/req | req/s vs direct | CPU vs best peer | idle RSS / PSS (both sidecars) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['idle_rss_kb'] / 1024:.1f} / {r['idle_pss_kb'] / 1024:.1f} MB" if r["idle_rss_kb"] else "-"
        ratio = f"{r['rps_vs_direct']:.2f}" if r["rps_vs_direct"] else "-"
        vs = f"{r['cpu_vs_best_peer']:.2f}" if r["cpu_vs_best_peer"] else "-"
        print(f"| {r['contestant']} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | "
              f"{fmt(r['cpu_us_per_req'], 1)} | {ratio} | {vs} | {mem} |")
    print(f"\nraw results: {os.path.relpath(out, ROOT)}; logs: {work}")


if __name__ == "__main__":
    main()
