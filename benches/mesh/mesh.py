#!/usr/bin/env python3
"""Side-by-side mTLS sidecar pairs: Warden, nginx, HAProxy and stunnel, plus a direct baseline.

Shape: load generator -> outbound sidecar (plaintext in, originates mTLS) -> inbound sidecar
(terminates mTLS, requires and verifies the client certificate) -> app (nginx, 64-byte body;
for bulk TCP, a byte sink). Every contestant uses the same P-256 certificates from Warden's
CA, TLS 1.3 and one worker; the load generator runs on CPU 0, the app and every sidecar on
CPU 1 (see ../../../shared/BENCHMARKING.md). Warden runs with its policy engine on (one
matching ALLOW policy) and metrics on.

Scenarios, each run for every contestant in turn, repeated --runs times:
  keepalive  HTTP/1.1, 16 kept-alive connections, closed loop (wrk) on freshly started
             sidecars: req/s, p50/p99, sidecar CPU per request, and memory under that load;
  rate2000, rate5000
             open loop at a fixed rate with coordinated-omission correction (loadgen rate):
             p50/p99/p99.9, what each pair adds over direct, and sidecar CPU per request;
             then the same percentiles with the machine's own stalls set aside (a real-time
             hiccup meter per CPU sees when the VM did not run; on a shared VM those stalls,
             not the proxies, set the raw p99);
  burst      a GET on each of 32 kept-alive connections at once, as after a stall of the
             machine, 2,000 rounds 2 ms apart (loadgen burst): each request's latency from
             the burst's start and the time to a burst's last response, CPU per request;
  close      a new app connection per request (wrk, `Connection: close`): req/s, CPU/request;
  bulk       1 GiB as opaque TCP through the pair (loadgen bulk): throughput;
  memory     fresh sidecars: idle RSS/PSS, then per-connection memory with 512 idle
             kept-alive connections, then with 512 idle opaque TCP connections (to the
             byte sink) that each sent 64 KiB first, as a pooled database connection
             idles after a large query (and how much of proxy/symbol-order.txt the Warden
             build has: its idle RSS depends on it);
  grpc       gRPC-shaped unary calls (h2c prior knowledge, `application/grpc`, a 64-byte
             message each way, `grpc-status` trailers from the app) with h2load, 16
             connections x 8 streams, closed loop: calls/s, p50/p99, sidecar CPU per call;
  threads2   keep-alive HTTP/1.1 with two workers per sidecar (nginx worker_processes 2,
             haproxy nbthread 2, Warden worker_threads 2, stunnel threads as always), 64
             connections from wrk -t2; sidecars, app and generator unpinned on both CPUs
             (real pods get more than one core): req/s, p50/p99, CPU per request.

Contestants nginx, haproxy and stunnel relay the TLS bytes at layer 4, whatever the protocol;
nginx-l7 and haproxy-l7 are the same servers as HTTP proxies, as Warden is: they parse each
HTTP/1.1 request and gRPC call, keep their proxy-to-proxy connections alive (HAProxy over
HTTP/2, multiplexed like Warden's; nginx over HTTP/1.1, and over HTTP/2 with `grpc_pass` one
call per connection at a time) and relay opaque TCP at layer 4.

Contestant warden-b is Warden's pair run from another build (`WARDEN_PROXY_B_BIN`) or with more
configuration (`WARDEN_PROXY_B_CONFIG`, YAML lines put first in both its sidecars' files, e.g.
`limits: {max_concurrent_streams: 100}`; not a key the harness writes), interleaved with warden
in the same runs: a before/after comparison that the machine's drift between runs does not
blur.

Contestant warden-audit-all is Warden's pair with every decision audited (allows included,
JSON lines on the server sidecar's stdout, signed checkpoints every 1,000 records or 10 s), to
compare with warden (deny-only auditing, the default; nothing is denied in this load).

`--access-log file|pipe` turns on every Warden contestant's access logs (`warden::access`, one
line per request per sidecar) to stderr: `file` is the log file, as elsewhere here; `pipe` is
a pipe read by a `cat` of its own (on the sidecars' CPU), as a container runtime reads a
container's stderr in Kubernetes. The peers log no requests in either case.

Run through benches/mesh/run.sh, which installs the peers and builds Warden and loadgen first.
"""

import argparse
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WARDEN = os.path.join(ROOT, "target", "release", "warden")
# The sidecars run the slim binary as the sidecar image ships it (scripts/build-sidecar.sh:
# release, profile-guided); WARDEN_PROXY_BIN runs another build instead (before/after).
WARDEN_PROXY = os.environ.get("WARDEN_PROXY_BIN") or os.path.join(ROOT, "target", "sidecar", "release", "warden-proxy")
# contestant warden-b: another build, or the same with more configuration, for before/after
# comparisons within one run
WARDEN_PROXY_B_CONFIG = os.environ.get("WARDEN_PROXY_B_CONFIG", "")
WARDEN_PROXY_B = os.environ.get("WARDEN_PROXY_B_BIN") or (WARDEN_PROXY_B_CONFIG and WARDEN_PROXY)
TD = "cluster.local"
CLIENT_ID = f"spiffe://{TD}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/bench/sa/server"
APP_PORT = 18080
# the app's h2c listener, for gRPC-shaped calls
GRPC_APP_PORT = 18081
LOADGEN = os.path.join(ROOT, "target", "release", "loadgen")
SINK_PORT = 18090
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = "x" * 64
BULK_BYTES = 1 << 30
IDLE_CONNECTIONS = 512
OPAQUE_BURST = 64 * 1024  # what each idle opaque connection sent before idling
BURST_CONNECTIONS, BURST_ROUNDS, BURST_PAUSE_MS = 32, 2000, 2

# contestant -> (outbound port the load generator calls, inbound port), for HTTP to the app
PORTS = {
    "direct": (APP_PORT, None),
    "warden": (18101, 18201),
    "nginx": (18102, 18202),
    "haproxy": (18103, 18203),
    "stunnel": (18104, 18204),
    # Warden with every decision audited (allows included, to stdout): the audit's cost
    "warden-audit-all": (18105, 18205),
    # Warden from another build (WARDEN_PROXY_B_BIN): before/after in the same run
    "warden-b": (18106, 18206),
    # nginx and HAProxy proxying HTTP and gRPC at layer 7, as Warden does (opaque TCP still
    # at layer 4): what parsing HTTP costs the peers
    "nginx-l7": (18107, 18207),
    "haproxy-l7": (18108, 18208),
}
# the same for opaque TCP to the byte sink (outbound and inbound ports 10 higher)
TCP_PORTS = {c: (SINK_PORT, None) if c == "direct" else (o + 10, i + 10) for c, (o, i) in PORTS.items()}
# the same for gRPC-shaped h2c calls to the app's h2c listener (20 higher)
GRPC_PORTS = {c: (GRPC_APP_PORT, None) if c == "direct" else (o + 20, i + 20) for c, (o, i) in PORTS.items()}
# a gRPC message: uncompressed, 64 bytes
GRPC_MESSAGE = b"\x00" + (64).to_bytes(4, "big") + b"m" * 64


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit status {r.returncode}: {r.stderr.strip()}")
    return r


def pinned(cpu, cmd):
    """`cmd` on CPU `cpu` (None: on any CPU)."""
    if cpu is None:
        return list(cmd)
    return ["taskset", "-c", str(cpu)] + cmd


class Bench:
    def __init__(self, work, access_log="off"):
        self.work = work
        self.access_log = access_log  # off, file or pipe: Warden's access logs (see --access-log)
        self.procs = {}  # name -> list of Popen (sidecar processes, for CPU and memory)
        self.setups = {}  # name -> threads -> [(cmd, log, env)], to start fresh sidecars again
        self.threads = {}  # name -> the worker count its sidecars run with now
        self.others = []
        self.identity_started = False

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def write(self, name, text, mode=0o644):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        return p

    def spawn(self, cmd, log, cpu=1, env=None):
        """Starts `cmd` on CPU `cpu` (None: any), its output in `log`."""
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
  # gRPC-shaped answers over h2c: a 64-byte message and grpc-status in trailers.
  server {{
    listen 127.0.0.1:{GRPC_APP_PORT} http2;
    http2_max_requests 100000000;
    location / {{
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      return 200 "{GRPC_MESSAGE.decode()}";
    }}
  }}
}}
""")
        self.others.append(self.spawn(["nginx", "-c", conf, "-p", self.work], "app.log"))
        self.others.append(self.spawn([LOADGEN, "sink", f"127.0.0.1:{SINK_PORT}"], "sink.log"))

    def sidecars(self, name, setup, threads=1, unpinned=False):
        """Starts a contestant's two sidecars with `threads` workers each (one: on CPU 1
        unless `unpinned`; more: on any CPU), remembering how for restart()."""
        self.setups[name] = setup
        self.threads[name] = threads
        cpu = 1 if threads == 1 and not unpinned else None
        self.procs[name] = [self.spawn(cmd, log, cpu=cpu, env=env) for cmd, log, env in setup(threads)]

    def restart(self, name, threads=1, unpinned=False):
        """Fresh sidecar processes (for memory figures untouched by earlier load), with
        `threads` workers each."""
        self.kill(self.procs.pop(name))
        self.sidecars(name, self.setups[name], threads, unpinned)
        self.wait_ready(name, PORTS[name][0])

    # --- contestants ------------------------------------------------------------------------
    def identity(self):
        """The identity service both Warden contestants get their SVIDs from (once)."""
        if self.identity_started:
            return
        self.identity_started = True
        tokens = self.path("tokens")
        for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
            token = run([WARDEN, "ca", "join-token", "--tokens", tokens, "--id", spiffe]).stdout.strip()
            self.write(f"{name}.token", token + "\n", 0o600)
        self.others.append(self.spawn(
            [WARDEN, "identity", "--ca-dir", self.path("ca"), "--auth", "join-tokens",
             "--join-tokens", tokens, "--listen", "127.0.0.1:17150",
             "--admin-listen", "127.0.0.1:17190"], "identity.log"))
        time.sleep(1)  # the identity service binds

    def warden_audit_all(self):
        self.warden("warden-audit-all")

    def warden_b(self):
        if not WARDEN_PROXY_B:
            sys.exit("contestant warden-b needs WARDEN_PROXY_B_BIN (the other warden-proxy build) "
                     "or WARDEN_PROXY_B_CONFIG (its other configuration)")
        self.warden("warden-b")

    def warden(self, contestant="warden"):
        """Warden's pair; `warden-audit-all` records every decision (allows too) on the
        server sidecar's stdout, where `warden` records only denials (none in this load)."""
        out_port, in_port = PORTS[contestant]
        tcp_out, tcp_in = TCP_PORTS[contestant]
        grpc_out, grpc_in = GRPC_PORTS[contestant]
        audit_all = contestant == "warden-audit-all"
        admin = {"warden-audit-all": 17193, "warden-b": 17195}.get(contestant, 17191)
        binary = WARDEN_PROXY_B if contestant == "warden-b" else WARDEN_PROXY
        extra = WARDEN_PROXY_B_CONFIG.rstrip("\n") + "\n" if contestant == "warden-b" and WARDEN_PROXY_B_CONFIG else ""
        self.identity()
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
identity:
  url: https://127.0.0.1:17150
  trust_bundle: {self.path('ca', 'bundle.crt')}
  namespace: bench
"""
        client = self.write(f"{contestant}-client.yaml", common + f"""  service_account: client
  token_file: {self.path('client.token')}
admin: {{listen: 127.0.0.1:{admin}}}
outbound:
  - listen: 127.0.0.1:{out_port}
    destination: 127.0.0.1:{in_port}
    identity: {SERVER_ID}
  - listen: 127.0.0.1:{tcp_out}
    destination: 127.0.0.1:{tcp_in}
    identity: {SERVER_ID}
    protocol: opaque
  - listen: 127.0.0.1:{grpc_out}
    destination: 127.0.0.1:{grpc_in}
    identity: {SERVER_ID}
""")
        server = self.write(f"{contestant}-server.yaml", common + f"""  service_account: server
  token_file: {self.path('server.token')}
admin: {{listen: 127.0.0.1:{admin + 1}}}
inbound:
  - listen: 127.0.0.1:{in_port}
    app: 127.0.0.1:{APP_PORT}
    protocol: http1
  - listen: 127.0.0.1:{tcp_in}
    app: 127.0.0.1:{SINK_PORT}
  - listen: 127.0.0.1:{grpc_in}
    app: 127.0.0.1:{GRPC_APP_PORT}
    protocol: h2c
authorization:
  policy_dir: {self.path('policies')}
  audit_log: stdout
  log_allowed: {'true' if audit_all else 'false'}
""")
        env = dict(os.environ, WARDEN_LOG="warn" if self.access_log == "off" else "warn,warden::access=info")

        def command(config, name):
            cmd = [binary, "proxy", "--config", config]
            if self.access_log != "pipe":
                return cmd
            # stderr a pipe read by a process of its own; `exec` keeps the sidecar's PID.
            collected = self.path(f"{contestant}-{name}.stderr")
            return ["bash", "-c", f'exec 2> >(exec cat >> "{collected}"); exec "$@"', "sidecar"] + cmd

        def setup(threads):
            configs = []
            for name, config in (("client", client), ("server", server)):
                with open(config) as f:
                    text = f.read()
                configs.append(self.write(f"{contestant}-{name}-{threads}.yaml", f"worker_threads: {threads}\n" + extra + text))
            return [(command(configs[0], "client"), f"{contestant}-client.log", env),
                    (command(configs[1], "server"), f"{contestant}-server.log", env)]
        self.sidecars(contestant, setup)

    def nginx(self):
        module = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
        routes = (PORTS["nginx"], TCP_PORTS["nginx"], GRPC_PORTS["nginx"])
        out_servers = "".join(self.nginx_out_server(o, i) for o, i in routes)
        in_servers = "".join(self.nginx_in_server(i, app) for (_, i), app in
                             zip(routes, (APP_PORT, SINK_PORT, GRPC_APP_PORT)))

        def setup(threads):
            head = f"{module}\nworker_processes {threads};\ndaemon off;\nevents {{ worker_connections 4096; }}\n"
            out = self.write(f"nginx-out-{threads}.conf", head + f"""pid {self.path('nginx-out.pid')};
error_log {self.path('nginx-out.err')};
stream {{{out_servers}}}
""")
            inn = self.write(f"nginx-in-{threads}.conf", head + f"""pid {self.path('nginx-in.pid')};
error_log {self.path('nginx-in.err')};
stream {{{in_servers}}}
""")
            return [(["nginx", "-c", out, "-p", self.work], "nginx-out.log", None),
                    (["nginx", "-c", inn, "-p", self.work], "nginx-in.log", None)]
        self.sidecars("nginx", setup)

    def nginx_out_server(self, out_port, in_port):
        return f"""
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
"""

    def nginx_server_tls(self):
        """The inbound nginx's TLS: the server's SVID, a client certificate required and
        verified against the trust bundle (stream and http servers alike)."""
        return f"""    ssl_protocols TLSv1.3;
    ssl_certificate {self.path('server.crt')};
    ssl_certificate_key {self.path('server.key')};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_client_certificate {self.path('ca', 'bundle.crt')};
"""

    def nginx_in_server(self, in_port, app_port):
        return f"""
  server {{
    listen 127.0.0.1:{in_port} ssl;
{self.nginx_server_tls()}    proxy_pass 127.0.0.1:{app_port};
  }}
"""

    def nginx_l7(self):
        """nginx as an HTTP proxy pair: HTTP/1.1 (`proxy_pass`) and gRPC (`grpc_pass`) at layer
        7 over kept-alive mTLS connections; opaque TCP at layer 4 as `nginx` does."""
        module = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
        (http_out, http_in), (tcp_out, tcp_in), (grpc_out, grpc_in) = (
            PORTS["nginx-l7"], TCP_PORTS["nginx-l7"], GRPC_PORTS["nginx-l7"])
        # nginx checks a DNS name it cannot skip and SVIDs carry a SPIFFE URI, so, as in
        # `nginx`, the client side does not verify the server (less work than Warden does).
        client_tls = lambda kind: f"""      {kind}_ssl_protocols TLSv1.3;
      {kind}_ssl_certificate {self.path('client.crt')};
      {kind}_ssl_certificate_key {self.path('client.key')};
      {kind}_ssl_verify off;
      {kind}_ssl_session_reuse on;
"""  # noqa: E731
        server_tls = self.nginx_server_tls()
        http_common = """  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  http2_max_requests 100000000;
"""
        out_http = f"""http {{
{http_common}  upstream peer_http {{ server 127.0.0.1:{http_in}; keepalive 128; keepalive_requests 100000000; }}
  upstream peer_grpc {{ server 127.0.0.1:{grpc_in}; keepalive 128; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{http_out};
    location / {{
      proxy_pass https://peer_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{client_tls('proxy')}    }}
  }}
  server {{
    listen 127.0.0.1:{grpc_out} http2;
    location / {{
      grpc_pass grpcs://peer_grpc;
{client_tls('grpc')}    }}
  }}
}}
"""
        in_http = f"""http {{
{http_common}  upstream app_http {{ server 127.0.0.1:{APP_PORT}; keepalive 128; keepalive_requests 100000000; }}
  upstream app_grpc {{ server 127.0.0.1:{GRPC_APP_PORT}; keepalive 128; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{http_in} ssl;
{server_tls}    location / {{
      proxy_pass http://app_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{grpc_in} ssl http2;
{server_tls}    location / {{ grpc_pass grpc://app_grpc; }}
  }}
}}
"""

        def setup(threads):
            head = f"{module}\nworker_processes {threads};\ndaemon off;\nevents {{ worker_connections 4096; }}\n"
            out = self.write(f"nginx-l7-out-{threads}.conf", head + f"""pid {self.path('nginx-l7-out.pid')};
error_log {self.path('nginx-l7-out.err')};
stream {{{self.nginx_out_server(tcp_out, tcp_in)}}}
{out_http}""")
            inn = self.write(f"nginx-l7-in-{threads}.conf", head + f"""pid {self.path('nginx-l7-in.pid')};
error_log {self.path('nginx-l7-in.err')};
stream {{{self.nginx_in_server(tcp_in, SINK_PORT)}}}
{in_http}""")
            return [(["nginx", "-c", out, "-p", self.work], "nginx-l7-out.log", None),
                    (["nginx", "-c", inn, "-p", self.work], "nginx-l7-in.log", None)]
        self.sidecars("nginx-l7", setup)

    def haproxy_l7(self):
        """HAProxy as an HTTP proxy pair (`mode http`): HTTP/1.1 and gRPC at layer 7, HTTP/2
        between the two (multiplexed, connections reused across requests: `http-reuse
        always`); opaque TCP at layer 4 as `haproxy` does."""
        out, inn = "", ""
        client = f"ssl crt {self.path('client.pem')} ca-file {self.path('ca', 'bundle.crt')} verify required ssl-min-ver TLSv1.3"
        server = f"ssl crt {self.path('server.pem')} ca-file {self.path('ca', 'bundle.crt')} verify required ssl-min-ver TLSv1.3"
        for tag, (out_port, in_port), app_port in (("http", PORTS["haproxy-l7"], APP_PORT),
                                                   ("tcp", TCP_PORTS["haproxy-l7"], SINK_PORT),
                                                   ("grpc", GRPC_PORTS["haproxy-l7"], GRPC_APP_PORT)):
            if tag == "tcp":
                mode, out_bind, peer, in_bind, app = "tcp", "", "", "", ""
            else:
                mode, out_bind, peer, in_bind = "http", " proto h2" if tag == "grpc" else "", " alpn h2", " alpn h2"
                app = " proto h2" if tag == "grpc" else ""
            reuse = "\n  http-reuse always" if mode == "http" else ""
            out += f"""frontend f_{tag}
  mode {mode}
  bind 127.0.0.1:{out_port}{out_bind}
  default_backend b_{tag}
backend b_{tag}
  mode {mode}{reuse}
  server s 127.0.0.1:{in_port} {client}{peer}
"""
            inn += f"""frontend f_{tag}
  mode {mode}
  bind 127.0.0.1:{in_port} {server}{in_bind}
  default_backend b_{tag}
backend b_{tag}
  mode {mode}{reuse}
  server app 127.0.0.1:{app_port}{app}
"""

        def setup(threads):
            head = (f"global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  timeout connect 5s\n"
                    "  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n")
            o = self.write(f"haproxy-l7-out-{threads}.cfg", head + out)
            i = self.write(f"haproxy-l7-in-{threads}.cfg", head + inn)
            return [(["haproxy", "-db", "-f", o], "haproxy-l7-out.log", None),
                    (["haproxy", "-db", "-f", i], "haproxy-l7-in.log", None)]
        self.sidecars("haproxy-l7", setup)

    def haproxy(self):
        out, inn = "", ""
        for tag, (out_port, in_port), app_port in (("http", PORTS["haproxy"], APP_PORT),
                                                   ("tcp", TCP_PORTS["haproxy"], SINK_PORT),
                                                   ("grpc", GRPC_PORTS["haproxy"], GRPC_APP_PORT)):
            out += f"""frontend f_{tag}
  bind 127.0.0.1:{out_port}
  default_backend b_{tag}
backend b_{tag}
  server s 127.0.0.1:{in_port} ssl crt {self.path('client.pem')} ca-file {self.path('ca', 'bundle.crt')} verify required ssl-min-ver TLSv1.3
"""
            inn += f"""frontend f_{tag}
  bind 127.0.0.1:{in_port} ssl crt {self.path('server.pem')} ca-file {self.path('ca', 'bundle.crt')} verify required ssl-min-ver TLSv1.3
  default_backend b_{tag}
backend b_{tag}
  server app 127.0.0.1:{app_port}
"""

        def setup(threads):
            head = f"global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"
            o = self.write(f"haproxy-out-{threads}.cfg", head + out)
            i = self.write(f"haproxy-in-{threads}.cfg", head + inn)
            return [(["haproxy", "-db", "-f", o], "haproxy-out.log", None),
                    (["haproxy", "-db", "-f", i], "haproxy-in.log", None)]
        self.sidecars("haproxy", setup)

    def stunnel(self):
        out, inn = "foreground = yes\npid =\n", "foreground = yes\npid =\n"
        for tag, (out_port, in_port), app_port in (("http", PORTS["stunnel"], APP_PORT),
                                                   ("tcp", TCP_PORTS["stunnel"], SINK_PORT),
                                                   ("grpc", GRPC_PORTS["stunnel"], GRPC_APP_PORT)):
            out += f"""[out_{tag}]
client = yes
accept = 127.0.0.1:{out_port}
connect = 127.0.0.1:{in_port}
cert = {self.path('client.crt')}
key = {self.path('client.key')}
CAfile = {self.path('ca', 'bundle.crt')}
verifyChain = yes
sslVersionMin = TLSv1.3
"""
            inn += f"""[in_{tag}]
accept = 127.0.0.1:{in_port}
connect = 127.0.0.1:{app_port}
cert = {self.path('server.crt')}
key = {self.path('server.key')}
CAfile = {self.path('ca', 'bundle.crt')}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
"""
        out, inn = self.write("stunnel-out.conf", out), self.write("stunnel-in.conf", inn)
        # stunnel runs a thread per connection whatever the setting
        self.sidecars("stunnel", lambda threads: [
            (["stunnel4", out], "stunnel-out.log", None),
            (["stunnel4", inn], "stunnel-in.log", None),
        ])

    # --- measuring ----------------------------------------------------------------------------
    def pids(self, proc):
        """A sidecar's processes (nginx: master and worker)."""
        # taskset execs in place; nginx forks its worker as a child
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        return [proc.pid] + [int(c) for c in children]

    def failures_logged(self, name):
        """Requests a Warden pair has logged as failed so far (0 for the other contestants)."""
        count = 0
        for side in ("client", "server"):
            path = self.path(f"{name}-{side}.log")
            if name.startswith("warden") and os.path.exists(path):
                with open(path, errors="replace") as f:
                    count += sum("request failed" in line for line in f)
        return count

    def cpu_seconds(self, name):
        """User and system CPU seconds of both sidecars so far."""
        user = system = 0
        for proc in self.procs.get(name, []):
            for pid in self.pids(proc):
                try:
                    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                    user, system = user + int(fields[11]), system + int(fields[12])
                except FileNotFoundError:
                    pass
        return user / CLK_TCK, system / CLK_TCK

    def memory_kb(self, name):
        """[(RSS, PSS)] in KiB, one pair per sidecar."""
        sidecars = []
        for proc in self.procs.get(name, []):
            rss = pss = 0
            for pid in self.pids(proc):
                for line in open(f"/proc/{pid}/smaps_rollup"):
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            sidecars.append((rss, pss))
        return sidecars

    def wait_ready(self, name, port, deadline=30):
        end = time.time() + deadline
        while time.time() < end:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
            if r.stdout == "200":
                return
            time.sleep(0.2)
        sys.exit(f"{name}: no 200 through 127.0.0.1:{port} within {deadline}s; see {self.work}/*.log")

    def cpu_per_request(self, name, before, requests):
        if name == "direct":
            return {}
        user, system = (after - b for after, b in zip(self.cpu_seconds(name), before))
        return {"cpu_us_per_req": (user + system) * 1e6 / requests,
                "user_us_per_req": user * 1e6 / requests, "sys_us_per_req": system * 1e6 / requests}

    def wrk(self, name, seconds, extra=(), threads=1, connections=16, cpu=0):
        """A closed-loop wrk run (on `connections` connections, from CPU `cpu`), with CPU and
        mid-run memory of the sidecars."""
        url = f"http://127.0.0.1:{PORTS[name][0]}/"
        shape = [f"-t{threads}", f"-c{connections}"]
        run(pinned(cpu, ["wrk", *shape, "-d2s", *extra, url]))  # warm-up
        before = self.cpu_seconds(name)
        wrk = subprocess.Popen(pinned(cpu, ["wrk", *shape, f"-d{seconds}s", "--latency", *extra, url]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(seconds / 2)
        under_load = self.memory_kb(name)
        out = wrk.communicate()[0]
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        result = self.cpu_per_request(name, before, requests)
        if wrk.returncode or re.search(r"Non-2xx or 3xx responses: (\d+)", out) or "Socket errors" in out:
            sys.exit(f"{name}: wrk saw errors:\n{out}")

        def latency(pct):
            m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
            value, unit = float(m.group(1)), m.group(2)
            return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        result.update({
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": latency(50), "p99_ms": latency(99),
            "load_rss_kb": sum(r for r, _ in under_load) or None,
            "load_pss_kb": sum(p for _, p in under_load) or None,
        })
        return result

    def keepalive(self, name, seconds):
        # Fresh sidecars, so the memory under load is not what earlier scenarios left behind
        # (allocators keep freed memory: 512 closed connections stay in RSS).
        if name != "direct":
            self.restart(name)
        return self.wrk(name, seconds)

    def threads2(self, name, seconds):
        """Keep-alive with two workers per sidecar and 64 connections, all unpinned."""
        if name != "direct":
            self.restart(name, threads=2)
        r = self.wrk(name, seconds, threads=2, connections=64, cpu=None)
        if name != "direct":
            self.restart(name, threads=1)
        return r

    def grpc(self, name, seconds):
        """gRPC-shaped unary calls over h2c, closed loop (h2load): calls/s, latency, CPU."""
        message = self.path("grpc-message.bin")
        with open(message, "wb") as f:
            f.write(GRPC_MESSAGE)
        url = f"http://127.0.0.1:{GRPC_PORTS[name][0]}/bench.Echo/Unary"
        shape = ["-c16", "-m8", "-t1", "-d", message, "-H", "content-type: application/grpc",
                 "-H", "te: trailers"]
        run(pinned(0, ["h2load", "-D", "2", *shape, url]))  # warm-up
        failed_before = self.failures_logged(name)
        before = self.cpu_seconds(name)
        log = self.path(f"h2load-{name}.tsv")
        out = run(pinned(0, ["h2load", "-D", str(seconds), "--log-file", log, *shape, url])).stdout
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        if not done or not codes or int(done.group(3)) or int(done.group(4)) or sum(int(c) for c in codes.groups()[1:]):
            sys.exit(f"{name}: h2load saw failures:\n{out}")
        # A proxy's own gRPC errors are 200s with grpc-status in the trailers, which h2load
        # does not read: Warden logs each one, so its logs tell.
        failed = self.failures_logged(name) - failed_before
        if failed:
            sys.exit(f"{name}: {failed} calls failed in the proxies (see {self.work}/{name}-*.log)")
        calls = int(done.group(2))
        with open(log) as f:
            latencies = sorted(int(line.split()[2]) / 1000 for line in f if line.strip())

        def pct(p):
            return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))]
        result = self.cpu_per_request(name, before, calls)
        result.update({"rps": calls / seconds, "p50_ms": pct(50), "p99_ms": pct(99)})
        return result

    def close(self, name, seconds):
        r = self.wrk(name, seconds, ["-H", "Connection: close"])
        return {k: v for k, v in r.items() if not k.startswith("load_")}

    def rate(self, name, rps, seconds):
        """Open loop at rps; latencies from each request's scheduled time, first second excluded."""
        cmd = [LOADGEN, "rate", f"127.0.0.1:{PORTS[name][0]}", str(rps), str(seconds + 1), "32"]
        before = self.cpu_seconds(name) if name != "direct" else None
        r = json.loads(run(pinned(0, cmd)).stdout)
        if r["errors"] or r["unfinished"]:
            sys.exit(f"{name}: {r['errors']} failed and {r['unfinished']} unfinished requests at {rps} req/s")
        # every request sent, the first second's too
        r.update(self.cpu_per_request(name, before, rps * (seconds + 1)))
        return r

    def burst(self, name):
        """BURST_CONNECTIONS requests at once, one per kept-alive connection, as after a stall
        of the machine; BURST_ROUNDS rounds BURST_PAUSE_MS apart."""
        cmd = [LOADGEN, "burst", f"127.0.0.1:{PORTS[name][0]}", str(BURST_CONNECTIONS), str(BURST_ROUNDS),
               str(BURST_PAUSE_MS)]
        before = self.cpu_seconds(name) if name != "direct" else None
        r = json.loads(run(pinned(0, cmd)).stdout)
        r.update(self.cpu_per_request(name, before, BURST_CONNECTIONS * BURST_ROUNDS))
        return r

    def bulk(self, name):
        before = self.cpu_seconds(name)
        cmd = [LOADGEN, "bulk", f"127.0.0.1:{TCP_PORTS[name][0]}", str(BULK_BYTES)]
        r = json.loads(run(pinned(0, cmd)).stdout)
        if name != "direct":
            r["cpu_s"] = sum(after - b for after, b in zip(self.cpu_seconds(name), before))
        return r

    def memory(self, name):
        """Fresh sidecars: idle memory, then what 512 idle kept-alive connections add; fresh
        again, what 512 idle opaque TCP connections add after OPAQUE_BURST bytes each."""
        if name == "direct":
            return {}
        self.restart(name)
        time.sleep(1)
        idle = self.memory_kb(name)
        rss, pss = self.per_connection_kb(name, lambda n: open_idle(PORTS[name][0], n), settle=1)
        self.restart(name)
        time.sleep(1)
        # 2 s: the sink has read every burst
        opaque_rss, _ = self.per_connection_kb(name, lambda n: open_opaque(TCP_PORTS[name][0], n), settle=2)
        return {
            "idle_rss_kb": [r for r, _ in idle], "idle_pss_kb": [p for _, p in idle],
            "rss_per_conn_kb": rss, "pss_per_conn_kb": pss, "rss_per_opaque_conn_kb": opaque_rss,
        }

    def per_connection_kb(self, name, open_conns, settle):
        """(RSS, PSS) KiB that each of IDLE_CONNECTIONS connections from `open_conns(n)` adds to
        both sidecars, measured `settle` seconds after they opened; one connection first, so
        first-use set-up is not counted per connection."""
        close_all(open_conns(1))
        time.sleep(0.5)
        base = self.memory_kb(name)
        conns = open_conns(IDLE_CONNECTIONS)
        time.sleep(settle)
        loaded = self.memory_kb(name)
        close_all(conns)
        return tuple((sum(m[i] for m in loaded) - sum(m[i] for m in base)) / IDLE_CONNECTIONS for i in (0, 1))

    def kill(self, procs):
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop(self):
        self.kill([p for ps in self.procs.values() for p in ps] + self.others)


def open_idle(port, n):
    """n connections that each carried one request and stay open."""
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        data = b""
        while not data.endswith(BODY.encode()):
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(f"connection {len(conns)} to port {port} closed before its response: {data!r}")
            data += chunk
        conns.append(s)
    return conns


def open_opaque(port, n):
    """n opaque TCP connections to the byte sink that each sent OPAQUE_BURST bytes and stay open."""
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"\xa5" * OPAQUE_BURST)
        conns.append(s)
    return conns


def close_all(conns):
    for s in conns:
        s.close()


# --- summarising ----------------------------------------------------------------------------------
SCENARIOS = ["keepalive", "rate2000", "rate5000", "burst", "close", "bulk", "memory", "grpc", "threads2"]
PEERS = ["nginx", "haproxy", "stunnel", "nginx-l7", "haproxy-l7"]
# What a contestant cannot do here, and why: skipped, and said so in the results.
CANNOT = {
    ("nginx-l7", "grpc"): "nginx 1.22's grpc_pass over kept-alive upstream connections fails "
                          "~1% of calls here (502, 'upstream sent frame for unknown stream': "
                          "the peer's RST_STREAM after an early answer arrives once nginx has "
                          "put the connection back); without keepalive it would handshake per call",
}


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
    if lo == hi:
        return f.format(value)
    return f"{f.format(value)} [{f.format(lo)}-{f.format(hi)}]"


def ratio(a, b, digits=2):
    return f"{a / b:.{digits}f}" if a is not None and b else "-"


class Summary:
    """Medians per contestant and scenario, the ratios, and the markdown tables."""

    def __init__(self, results, contestants):
        self.results, self.contestants = results, contestants
        self.peers = [c for c in contestants if c in PEERS]

    def m(self, scenario, c, key, pick=None):
        values = [r.get(key) for r in self.results[scenario].get(c, [])]
        if pick:
            values = [pick(v) for v in values if v is not None]
        return med(values)

    def v(self, scenario, c, key, pick=None):
        return self.m(scenario, c, key, pick)[0]

    def best_peer(self, scenario, key, lowest=True, pick=None):
        values = [(self.v(scenario, c, key, pick), c) for c in self.peers]
        values = [x for x in values if x[0] is not None]
        if not values:
            return None, None
        return (min if lowest else max)(values)

    def keepalive(self, s="keepalive"):
        out = []
        direct = self.v(s, "direct", "rps")
        best_cpu, best = self.best_peer(s, "cpu_us_per_req")
        out.append("| contestant | req/s | p50 ms | p99 ms | sidecar CPU µs/req (user + sys) | RSS / PSS under load, both sidecars | req/s vs direct | CPU vs best peer |")
        out.append("|---|---|---|---|---|---|---|---|")
        for c in self.contestants:
            cpu = self.m(s, c, "cpu_us_per_req")
            user, system = self.v(s, c, "user_us_per_req"), self.v(s, c, "sys_us_per_req")
            split = f" ({user:.1f} + {system:.1f})" if user is not None else ""
            rss, pss = self.v(s, c, "load_rss_kb"), self.v(s, c, "load_pss_kb")
            mem = f"{rss / 1024:.1f} / {pss / 1024:.1f} MB" if rss else "-"
            out.append(f"| {c} | {fmt(self.m(s, c, 'rps'))} | {fmt(self.m(s, c, 'p50_ms'), 2)} | "
                       f"{fmt(self.m(s, c, 'p99_ms'), 2)} | {fmt(cpu, 1)}{split} | {mem} | "
                       f"{ratio(self.v(s, c, 'rps'), direct)} | {ratio(cpu[0], best_cpu)} |")
        return out, {"best_peer": best, "best_peer_cpu_us_per_req": best_cpu}

    def threads2(self):
        return self.keepalive("threads2")

    def grpc(self):
        return self.keepalive("grpc")

    def rate(self, s):
        """The raw percentiles, then the same with the machine's own stalls set aside (clean_*)."""
        out, added, best, best_added = self.rate_table(s, "")
        facts = {"added": added, "best_peer": best, "best_peer_added_p99_ms": best_added}
        if any(r.get("stalls") is not None for runs in self.results[s].values() for r in runs):
            clean, added, best, best_added = self.rate_table(s, "clean_")
            out += ["", "The same runs with the machine's own stalls set aside: requests scheduled from 2 ms before "
                    "to twice its length after any wake-up of a real-time meter thread (one per CPU) that came "
                    "more than 0.5 ms late (benches/mesh/loadgen.rs):", ""] + clean
            facts.update({"clean_added": added, "clean_best_peer": best, "clean_best_peer_added_p99_ms": best_added})
        return out, facts

    def rate_table(self, s, prefix):
        """One table of `prefix` percentiles: the rows, what each pair adds, the best peer."""
        keys = [f"{prefix}{k}" for k in ("p50_ms", "p99_ms", "p999_ms")]
        head = "| contestant | p50 ms | p99 ms | p99.9 ms | added p50 / p99 / p99.9 ms over direct | added p99 vs best peer |"
        rule = "|---|---|---|---|---|---|"
        last = (" sidecar CPU µs/req (user + sys) |", "---|") if not prefix else (" requests kept | stalls, set aside |", "---|---|")
        out = [head + last[0], rule + last[1]]
        direct = {k: self.v(s, "direct", k) for k in keys}
        added = {c: {k.removeprefix(prefix): (self.v(s, c, k) - direct[k]) if direct[k] is not None and self.v(s, c, k) is not None else None
                     for k in keys} for c in self.contestants}
        peers = [(added[c]["p99_ms"], c) for c in self.peers if added[c]["p99_ms"] is not None]
        best_added, best = min(peers) if peers else (None, None)
        for c in self.contestants:
            a = added[c]
            adds = "-" if c == "direct" or a["p99_ms"] is None else f"{a['p50_ms']:+.3f} / {a['p99_ms']:+.3f} / {a['p999_ms']:+.3f}"
            if prefix:
                kept = self.v(s, c, "clean_measured")
                share = ratio(kept, self.v(s, c, "measured"))
                tail = (f" {fmt(self.m(s, c, 'clean_measured'))} ({share}) | {fmt(self.m(s, c, 'stalls'))}, "
                        f"{fmt(self.m(s, c, 'set_aside_ms'))} ms |")
            else:
                user, system = self.v(s, c, "user_us_per_req"), self.v(s, c, "sys_us_per_req")
                split = f" ({user:.1f} + {system:.1f})" if user is not None else ""
                tail = f" {fmt(self.m(s, c, 'cpu_us_per_req'), 1)}{split} |"
            out.append(f"| {c} | {fmt(self.m(s, c, keys[0]), 3)} | {fmt(self.m(s, c, keys[1]), 3)} | "
                       f"{fmt(self.m(s, c, keys[2]), 3)} | {adds} | "
                       f"{ratio(a['p99_ms'], best_added) if c != 'direct' else '-'} |{tail}")
        return out, added, best, best_added

    def burst(self):
        s = "burst"
        out = ["| contestant | per request p50 / p99 ms | last of a burst p50 / p99 ms | added: per request p99, last p50 / p99 ms | sidecar CPU µs/req (user + sys) |",
               "|---|---|---|---|---|"]
        direct = {k: self.v(s, "direct", k) for k in ("p99_ms", "last_p50_ms", "last_p99_ms")}
        for c in self.contestants:
            v = {k: self.v(s, c, k) for k in direct}
            adds = "-" if c == "direct" or None in v.values() or None in direct.values() else \
                " / ".join(f"{v[k] - direct[k]:+.3f}" for k in direct)
            user, system = self.v(s, c, "user_us_per_req"), self.v(s, c, "sys_us_per_req")
            split = f" ({user:.1f} + {system:.1f})" if user is not None else ""
            out.append(f"| {c} | {fmt(self.m(s, c, 'p50_ms'), 3)} / {fmt(self.m(s, c, 'p99_ms'), 3)} | "
                       f"{fmt(self.m(s, c, 'last_p50_ms'), 3)} / {fmt(self.m(s, c, 'last_p99_ms'), 3)} | {adds} | "
                       f"{fmt(self.m(s, c, 'cpu_us_per_req'), 1)}{split} |")
        best_last, best = self.best_peer(s, "last_p50_ms")
        return out, {"best_peer": best, "best_peer_last_p50_ms": best_last}

    def close(self):
        s = "close"
        direct = self.v(s, "direct", "rps")
        best_rps, best = self.best_peer(s, "rps", lowest=False)
        best_cpu, _ = self.best_peer(s, "cpu_us_per_req")
        out = ["| contestant | req/s | sidecar CPU µs/req (user + sys) | req/s vs direct | req/s vs best peer | CPU vs best peer |",
               "|---|---|---|---|---|---|"]
        for c in self.contestants:
            cpu = self.m(s, c, "cpu_us_per_req")
            user, system = self.v(s, c, "user_us_per_req"), self.v(s, c, "sys_us_per_req")
            split = f" ({user:.1f} + {system:.1f})" if user is not None else ""
            out.append(f"| {c} | {fmt(self.m(s, c, 'rps'))} | {fmt(cpu, 1)}{split} | {ratio(self.v(s, c, 'rps'), direct)} | "
                       f"{ratio(self.v(s, c, 'rps'), best_rps) if c != 'direct' else '-'} | {ratio(cpu[0], best_cpu)} |")
        return out, {"best_peer": best, "best_peer_rps": best_rps}

    def bulk(self):
        s = "bulk"
        direct = self.v(s, "direct", "gbit_per_s")
        best_rate, best = self.best_peer(s, "gbit_per_s", lowest=False)
        out = ["| contestant | Gbit/s | sidecar CPU s per GiB | vs direct | vs best peer |", "|---|---|---|---|---|"]
        for c in self.contestants:
            out.append(f"| {c} | {fmt(self.m(s, c, 'gbit_per_s'), 2)} | {fmt(self.m(s, c, 'cpu_s'), 2)} | "
                       f"{ratio(self.v(s, c, 'gbit_per_s'), direct)} | "
                       f"{ratio(self.v(s, c, 'gbit_per_s'), best_rate) if c != 'direct' else '-'} |")
        return out, {"best_peer": best, "best_peer_gbit_per_s": best_rate}

    def memory(self):
        s = "memory"
        best_conn, best = self.best_peer(s, "rss_per_conn_kb")
        best_opaque, _ = self.best_peer(s, "rss_per_opaque_conn_kb")
        out = ["| contestant | idle RSS per sidecar, out / in | idle PSS per sidecar, out / in | per idle connection, both sidecars: RSS / PSS KiB | per-connection RSS vs best peer | per idle opaque connection after 64 KiB, both sidecars: RSS KiB | vs best peer |",
               "|---|---|---|---|---|---|---|"]
        for c in self.contestants:
            if c == "direct":
                continue
            rss = [self.v(s, c, "idle_rss_kb", pick=lambda v, i=i: v[i]) for i in (0, 1)]
            pss = [self.v(s, c, "idle_pss_kb", pick=lambda v, i=i: v[i]) for i in (0, 1)]
            conn = self.m(s, c, "rss_per_conn_kb")
            opaque = self.m(s, c, "rss_per_opaque_conn_kb")
            out.append(f"| {c} | {rss[0] / 1024:.1f} / {rss[1] / 1024:.1f} MB | {pss[0] / 1024:.1f} / {pss[1] / 1024:.1f} MB | "
                       f"{fmt(conn, 1)} / {fmt(self.m(s, c, 'pss_per_conn_kb'), 1)} | {ratio(conn[0], best_conn)} | "
                       f"{fmt(opaque, 1)} | {ratio(opaque[0], best_opaque)} |")
        if "warden" in self.contestants:
            import symbol_order  # noqa: E402 (it imports this module)
            found, listed = symbol_order.coverage(WARDEN_PROXY)
            out += ["", f"Warden's code layout: {found:,} of the {listed:,} functions in proxy/symbol-order.txt are in "
                        "this build (below 90%: regenerate it, see benches/mesh/symbol_order.py)."]
        return out, {"best_peer": best, "best_peer_rss_per_conn_kb": best_conn}

    def targets(self, facts):
        """The issue's targets for Warden against the best peer of the same run."""
        w = "warden"
        checks = []

        def check(what, value, limit, ok, paired=None):
            checks.append({"target": what, "warden": value, "limit": limit,
                           "met": None if value is None or limit is None else ok(value, limit),
                           "paired": paired})
        ka = facts.get("keepalive")
        if ka:
            check("sidecar CPU per request (keep-alive) at most 0.7x the best peer's, µs",
                  self.v("keepalive", w, "cpu_us_per_req"),
                  ka["best_peer_cpu_us_per_req"] and ka["best_peer_cpu_us_per_req"] * 0.7, lambda v, l: v <= l)
        for s in ("keepalive", "grpc"):
            if s in facts and "warden-audit-all" in self.contestants:
                base = self.v(s, w, "cpu_us_per_req")
                check(f"{s}: CPU per request with every decision audited at most 1.10x deny-only auditing, µs",
                      self.v(s, "warden-audit-all", "cpu_us_per_req"), base and base * 1.10,
                      lambda v, l: v <= l)
        for s in ("rate2000", "rate5000"):
            r = facts.get(s)
            if not r:
                continue
            for added, how in (("added", ""), ("clean_added", ", machine stalls set aside")):
                if added not in r:
                    continue
                for key, what in (("p99_ms", "p99"), ("p999_ms", "p99.9")):
                    # The best peer of each percentile: the one that adds the least at it.
                    peers = [(r[added][c][key], c) for c in self.peers if r[added][c][key] is not None]
                    best = min(peers, default=(None, None))
                    raw_key = key if added == "added" else f"clean_{key}"
                    check(f"added {what} at {s[4:]} req/s at most the best peer's{how}, ms", r[added][w][key],
                          best[0], lambda v, l: v <= l, self.paired(s, raw_key, best[1]))
        cl = facts.get("close")
        if cl:
            direct = self.v("close", "direct", "rps")
            check("connection-per-request req/s at least 0.75x direct", self.v("close", w, "rps"),
                  direct and direct * 0.75, lambda v, l: v >= l)
        mem = facts.get("memory")
        if mem:
            idle = self.v("memory", w, "idle_rss_kb", pick=max)
            check("idle RSS per proxy at most 8 MB (the larger of the two), MiB",
                  idle and idle / 1024, 8.0, lambda v, l: v <= l)
        bk = facts.get("bulk")
        if bk:
            check("bulk throughput at least 10 Gbit/s", self.v("bulk", w, "gbit_per_s"), 10.0, lambda v, l: v >= l)
        out = ["| target | warden | limit | met | runs where Warden's is higher, paired with the best peer's (sign test) |",
               "|---|---|---|---|---|"]
        for t in checks:
            value = "-" if t["warden"] is None else f"{t['warden']:,.2f}"
            limit = "-" if t["limit"] is None else f"{t['limit']:,.2f}"
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            out.append(f"| {t['target']} | {value} | {limit} | {met} | {t['paired'] or '-'} |")
        return out, checks

    def paired(self, s, key, peer):
        """Warden against `peer` run by run (contestants are interleaved, so each run's pair
        shares the host's state): in how many runs Warden's `key` is higher, and the two-sided
        sign test's p-value (below 0.05: a difference the runs' spread does not explain)."""
        if peer is None:
            return None
        pairs = [(a.get(key), b.get(key)) for a, b in zip(self.results[s]["warden"], self.results[s][peer])]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None and a != b]
        if not pairs:
            return None
        n, higher = len(pairs), sum(1 for a, b in pairs if a > b)
        tail = sum(math.comb(n, k) for k in range(max(higher, n - higher), n + 1)) / 2 ** n
        # Below 6 runs no outcome reaches p < 0.05 (5 of 5 gives 0.06).
        few = "; under 6 runs it cannot reach 0.05" if n < 6 else ""
        return f"{higher}/{n} than {peer} (p {min(1.0, 2 * tail):.2f}{few})"


def versions():
    def first(cmd, starts=""):
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l.strip() for l in (r.stdout + r.stderr).splitlines() if l.strip().startswith(starts)]
        return lines[0] if lines else "?"
    return {
        "warden": first([WARDEN_PROXY, "--version"]) + " (slim warden-proxy binary; rustls 0.23, aws-lc-rs; X25519MLKEM768 preferred)",
        "warden-b": (WARDEN_PROXY_B or "-") + (f" with {WARDEN_PROXY_B_CONFIG.strip()!r}" if WARDEN_PROXY_B_CONFIG else ""),
        "nginx": first(["nginx", "-v"]),
        "haproxy": first(["haproxy", "-v"]),
        "nginx-l7": "the nginx above, as an HTTP proxy (proxy_pass, grpc_pass)",
        "haproxy-l7": "the HAProxy above, mode http, HTTP/2 between the pair",
        "stunnel": first(["stunnel4", "-version"], "stunnel "),
        "openssl": first(["openssl", "version"]),
        "wrk": first(["wrk", "--version"]),
        "h2load": first(["h2load", "--version"]),
    }


TITLES = {
    "keepalive": "Keep-alive HTTP/1.1, 16 connections, closed loop (wrk -t1 -c16)",
    "rate2000": "Fixed rate 2,000 req/s, open loop, 32 connections, latency from the scheduled send (loadgen rate), first second excluded",
    "rate5000": "Fixed rate 5,000 req/s, open loop, 32 connections, latency from the scheduled send (loadgen rate), first second excluded",
    "burst": f"Bursts: a GET on each of {BURST_CONNECTIONS} kept-alive connections at once, {BURST_ROUNDS:,} rounds "
             f"{BURST_PAUSE_MS} ms apart (loadgen burst), first 10% not counted",
    "close": "A new app connection per request (wrk -t1 -c16 -H 'Connection: close')",
    "bulk": "Bulk: 1 GiB as opaque TCP through the pair to a byte sink (loadgen bulk)",
    "memory": f"Memory: fresh sidecars idle, then {IDLE_CONNECTIONS} idle kept-alive connections (one request each), "
              f"then {IDLE_CONNECTIONS} idle opaque TCP connections ({OPAQUE_BURST // 1024} KiB sent each)",
    "grpc": "gRPC-shaped unary calls over h2c, 64-byte messages, 16 connections x 8 streams, closed loop (h2load -c16 -m8)",
    "threads2": "Keep-alive HTTP/1.1 with 2 workers per sidecar, 64 connections (wrk -t2 -c64), everything unpinned on both CPUs",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per run (default 10)")
    # warden-b only when there is another build to run
    everyone = [c for c in PORTS if c != "warden-b" or WARDEN_PROXY_B]
    parser.add_argument("--only", nargs="*", default=everyone, help="contestants to run (default: all; warden-b with WARDEN_PROXY_B_BIN or _CONFIG)")
    parser.add_argument("--scenarios", nargs="*", default=SCENARIOS, choices=SCENARIOS, help="scenarios to run")
    parser.add_argument("--access-log", choices=["off", "file", "pipe"], default="off",
                        help="Warden's access logs: off (default), to a file, or to a pipe a reader drains")
    args = parser.parse_args()
    contestants = [c for c in PORTS if c in args.only]
    scenarios = [s for s in SCENARIOS if s in args.scenarios]

    work = tempfile.mkdtemp(prefix="warden-mesh-bench-")
    bench = Bench(work, args.access_log)
    results = {s: {c: [] for c in contestants} for s in scenarios}
    try:
        bench.certificates()
        bench.app()
        for c in contestants:
            if c != "direct":
                getattr(bench, c.replace("-", "_"))()
        for c in contestants:
            bench.wait_ready(c, PORTS[c][0])
        for run_index in range(args.runs):
            # Each run starts with the next contestant, so none always runs first (right
            # after another scenario) or last: an order effect spreads over all of them.
            k = run_index % len(contestants)
            for s in scenarios:
                for c in contestants[k:] + contestants[:k]:
                    if (c, s) in CANNOT:
                        if run_index == 0:
                            print(f"{s} {c}: skipped: {CANNOT[(c, s)]}", file=sys.stderr)
                        continue
                    if s.startswith("rate"):
                        r = bench.rate(c, int(s[4:]), args.seconds)
                    elif s in ("keepalive", "close", "grpc", "threads2"):
                        r = getattr(bench, s)(c, args.seconds)
                    else:
                        r = getattr(bench, s)(c)
                    results[s][c].append(r)
                    print(f"run {run_index + 1}/{args.runs} {s} {c}: {r}", file=sys.stderr)
    finally:
        bench.stop()

    summary = Summary(results, contestants)
    tables, facts = {}, {}
    for s in scenarios:
        tables[s], facts[s] = summary.rate(s) if s.startswith("rate") else getattr(summary, s)()
    target_table, checks = summary.targets(facts) if "warden" in contestants else ([], [])

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    machine = f"{os.cpu_count()} vCPU {platform.machine()}, {platform.platform()}"
    record = {"date": stamp, "machine": machine, "command": " ".join(sys.argv),
              "runs": args.runs, "seconds": args.seconds, "versions": versions(),
              "scenarios": {s: TITLES[s] for s in scenarios},
              "raw": results, "facts": facts, "targets": checks,
              "not_run": {f"{c} {s}": why for (c, s), why in CANNOT.items() if c in contestants and s in scenarios}}
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benches", "results", f"mesh-{stamp}.json")
    with open(out, "w") as f:
        json.dump(record, f, indent=2)

    print(f"Medians of {args.runs} interleaved runs of {args.seconds}s [min-max]; {machine}\n")
    for s in scenarios:
        print(f"### {TITLES[s]}\n")
        print("\n".join(tables[s]) + "\n")
        for c in contestants:
            if (c, s) in CANNOT:
                print(f"{c}: not run: {CANNOT[(c, s)]}.\n")
    if target_table:
        print("### Targets (Warden against the best peer of this run)\n")
        print("\n".join(target_table) + "\n")
    print(f"raw results: {os.path.relpath(out, ROOT)}; logs: {work}")


if __name__ == "__main__":
    main()
