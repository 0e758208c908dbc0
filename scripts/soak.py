#!/usr/bin/env python3
"""Soak: a bounded run at steady load with certificate rotation about every minute and policy
churn, checking that nothing that should succeed fails, nothing that should be denied gets
through, and memory and file descriptors stay flat.

    cargo build --release && python3 scripts/soak.py [--minutes 10]

Mesh: an identity service issuing 90 s SVIDs (proxies renew at ~70%: about every minute),
an app, a server proxy ("api") with a policy directory, and two client proxies ("web",
"intruder"). Four steady callers, each with a fixed expected answer:
  web GET /api/items      -> 200 (an ALLOW policy)
  web GET /admin/users    -> 403 (a DENY policy wins over the ALLOW)
  intruder GET /api/items -> 403 (no policy allows it; zero trust)
  web opaque TCP upload   -> ok  (64 KiB to 4 MiB sent, then the app's byte count awaited:
                                  every byte must arrive, none may wait in a proxy)
Every 15 s the policy directory gets a rewritten file of unrelated policies (other
ServiceAccounts), and once a minute a broken file that must be refused while the last good
set stays in force. Meanwhile a hostile peer keeps hitting the server proxy's mTLS port with
garbage, plaintext HTTP, handshakes that never finish, a certificate from another CA, and
HTTP/2 rapid resets on a valid connection; each must be refused or closed, never served. Every
10 s each proxy's RSS and open file descriptors are sampled.

Exits non-zero on any unexpected answer, a missed renewal, or growth in memory or file
descriptors; writes benches/results/soak-<date>.json.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
WARDEN = os.path.join(ROOT, "target", "release", "warden")
TD = "cluster.local"


def spiffe(sa):
    return f"spiffe://{TD}/ns/shop/sa/{sa}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, cwd):
    return subprocess.run([WARDEN, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ByteCounter(socketserver.BaseRequestHandler):
    """The opaque app: reads an 8-byte length, then that many bytes, and answers how many came."""

    def handle(self):
        header = self.request.recv(8, socket.MSG_WAITALL)
        if len(header) < 8:
            return
        left = got = int.from_bytes(header, "big")
        while left:
            chunk = self.request.recv(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
        self.request.sendall((got - left).to_bytes(8, "big"))


def policies(http_app_port):
    """web may call api; nobody may call api's /admin/* on the HTTP app's port."""
    return f"""apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: api-allow-web, namespace: shop}}
spec:
  selector: {{serviceAccounts: [api]}}
  action: ALLOW
  rules: [{{from: {{identities: ["{spiffe('web')}"]}}}}]
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: api-deny-admin, namespace: shop}}
spec:
  selector: {{serviceAccounts: [api]}}
  action: DENY
  rules: [{{to: {{ports: [{http_app_port}], paths: ["/admin/*"]}}}}]
"""


def unrelated_policies(n):
    docs = []
    for i in range(n):
        sa = f"other-{random.randrange(1000)}"
        docs.append(f"""apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {sa}-allow-{i}, namespace: shop}}
spec:
  selector: {{serviceAccounts: [{sa}]}}
  action: ALLOW
  rules: [{{from: {{identities: ["{spiffe('intruder')}"]}}}}]
""")
    return "---\n".join(docs)


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


class Caller(threading.Thread):
    """One steady caller with one expected status; counts what it got."""

    def __init__(self, name, port, path, expected, stop):
        super().__init__(daemon=True)
        self.name, self.port, self.path, self.expected, self.stop = name, port, path, expected, stop
        self.counts = {}
        self.unexpected = []

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path, headers={"host": "api"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                status = f"error: {type(e).__name__}: {e}"
                conn = None
            self.record(status)
            time.sleep(0.002)

    def record(self, status):
        """Counts one answer, keeping the first unexpected ones with their time."""
        self.counts[status] = self.counts.get(status, 0) + 1
        if status != self.expected and len(self.unexpected) < 50:
            self.unexpected.append((round(time.time(), 3), status))


class Uploader(Caller):
    """A steady opaque-TCP caller: sends a random 64 KiB-4 MiB payload, then waits for the
    app's count of what arrived (a sender that waits after its last bytes, as a database
    client does): "ok" when all of it did."""

    def __init__(self, name, port, stop):
        super().__init__(name, port, None, "ok", stop)

    def run(self):
        payload = os.urandom(4 << 20)
        while not self.stop.is_set():
            size = random.randrange(64 << 10, 4 << 20)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
                    conn.sendall(size.to_bytes(8, "big") + payload[:size])
                    answer = conn.recv(8, socket.MSG_WAITALL)
                got = int.from_bytes(answer, "big") if len(answer) == 8 else None
                status = "ok" if got == size else f"sent {size} bytes, the app counted {got}"
            except OSError as e:
                status = f"error: {type(e).__name__}: {e}"
            self.record(status)
            time.sleep(0.05)


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


class Hostile(threading.Thread):
    """Attacks the server proxy's mTLS port in a loop; counts what each attack got."""

    def __init__(self, work, port, stop):
        super().__init__(daemon=True)
        self.work, self.port, self.stop = work, port, stop
        self.refused = {}
        self.served = []  # attacks that got an answer they must not get

    def tls(self, cert, alpn):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who answers
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(os.path.join(self.work, cert + ".crt"), os.path.join(self.work, cert + ".key"))
        ctx.set_alpn_protocols([alpn])
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname="warden")

    def attempt(self, name, attack):
        try:
            answer = attack()
        except (OSError, ssl.SSLError):
            answer = b""
        if answer:
            self.served.append((name, answer[:80]))
        else:
            self.refused[name] = self.refused.get(name, 0) + 1

    def read_all(self, sock):
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (OSError, ssl.SSLError):
            pass
        return data

    def garbage(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"\x00\x01 not TLS at all\r\n\r\n")
            data = self.read_all(s)
            return b"" if not data or data[0] == 0x15 else data  # an alert is a refusal

    def plaintext(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /api/items HTTP/1.1\r\nhost: api\r\n\r\n")
            data = self.read_all(s)
            return data if b"200" in data else b""

    def rogue(self):
        with self.tls("rogue", "warden/h2") as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0))
            return self.read_all(s)

    def rapid_reset(self):
        # A valid workload certificate, then 500 streams opened and cancelled at once.
        with self.tls("valid", "warden/h2") as s:
            burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0)
            block = bytes([0x82, 0x87, 0x84, 0x01, 0x01]) + b"s"
            for i in range(500):
                burst += h2_frame(1, 0x5, 2 * i + 1, block) + h2_frame(3, 0, 2 * i + 1, (8).to_bytes(4, "big"))
            s.sendall(burst)
            started = time.time()
            self.read_all(s)  # the server ends the connection (GOAWAY) long before the timeout
            return b"kept open" if time.time() - started > 9 else b""

    def run(self):
        stalled = []
        while not self.stop.is_set():
            self.attempt("garbage", self.garbage)
            self.attempt("plaintext HTTP", self.plaintext)
            self.attempt("certificate from another CA", self.rogue)
            self.attempt("HTTP/2 rapid reset", self.rapid_reset)
            # Handshakes that never finish, 20 at a time, closed by the proxy's timeout.
            for _ in range(20):
                try:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    s.sendall(b"\x16\x03\x01")
                    stalled.append(s)
                except OSError:
                    pass
            while len(stalled) > 200:
                stalled.pop(0).close()
            self.refused["stalled handshake"] = self.refused.get("stalled handshake", 0) + 20
            time.sleep(0.5)
        for s in stalled:
            s.close()


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def renewals(admin_port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith('warden_identity_renewals_total{result="success"}'):
            return int(float(line.split()[-1]))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    if not os.path.exists(WARDEN):
        sys.exit(f"{WARDEN} is missing: run `cargo build --release` first")
    work = tempfile.mkdtemp(prefix="warden-soak-")
    procs = []
    try:
        run("ca", "init", "--dir", "ca", cwd=work)
        # The attacker's material: a certificate from another CA, and a valid one.
        run("ca", "init", "--dir", "rogue-ca", cwd=work)
        run("ca", "issue", "--dir", "rogue-ca", "--id", spiffe("web"), "--out", "rogue", "--ttl", "24h", cwd=work)
        run("ca", "issue", "--dir", "ca", "--id", spiffe("web"), "--out", "valid", "--ttl", "24h", cwd=work)
        for sa in ("api", "web", "intruder"):
            token = run("ca", "join-token", "--tokens", "tokens", "--id", spiffe(sa), cwd=work).strip()
            write_atomically(os.path.join(work, f"{sa}.token"), token + "\n")
        identity_port = free_port()
        procs.append(subprocess.Popen(
            [WARDEN, "identity", "--ca-dir", "ca", "--auth", "join-tokens", "--join-tokens", "tokens",
             "--listen", f"127.0.0.1:{identity_port}", "--admin-listen", "127.0.0.1:0",
             "--svid-ttl", "90s"],
            cwd=work, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "identity.log"), "w")))

        app = ThreadingHTTPServer(("127.0.0.1", 0), App)
        threading.Thread(target=app.serve_forever, daemon=True).start()
        os.mkdir(os.path.join(work, "policies"))
        write_atomically(os.path.join(work, "policies", "allow.yaml"), policies(app.server_port))
        counter = socketserver.ThreadingTCPServer(("127.0.0.1", 0), ByteCounter)
        counter.daemon_threads = True
        threading.Thread(target=counter.serve_forever, daemon=True).start()

        inbound, inbound_tcp = free_port(), free_port()
        admin = {sa: free_port() for sa in ("api", "web", "intruder")}
        outbound = {sa: free_port() for sa in ("web", "intruder")}
        outbound_tcp = free_port()
        common = lambda sa: (f"identity:\n  url: https://127.0.0.1:{identity_port}\n"
                             f"  trust_bundle: ca/bundle.crt\n  namespace: shop\n"
                             f"  service_account: {sa}\n  token_file: {sa}.token\n"
                             f"admin: {{listen: 127.0.0.1:{admin[sa]}}}\n")
        configs = {
            "api": common("api") + f"inbound:\n  - {{listen: 127.0.0.1:{inbound}, app: 127.0.0.1:{app.server_port}}}\n"
                   f"  - {{listen: 127.0.0.1:{inbound_tcp}, app: 127.0.0.1:{counter.server_address[1]}}}\n"
                   "authorization: {policy_dir: policies, audit_log: 'off'}\n",
        }
        for sa in ("web", "intruder"):
            configs[sa] = common(sa) + (f"outbound:\n  - {{listen: 127.0.0.1:{outbound[sa]}, "
                                        f"destination: 127.0.0.1:{inbound}, identity: {spiffe('api')}}}\n")
        configs["web"] += (f"  - {{listen: 127.0.0.1:{outbound_tcp}, destination: 127.0.0.1:{inbound_tcp}, "
                           f"identity: {spiffe('api')}, protocol: opaque}}\n")
        proxies = {}
        for sa, text in configs.items():
            write_atomically(os.path.join(work, f"{sa}.yaml"), text)
            p = subprocess.Popen([WARDEN, "proxy", "--config", f"{sa}.yaml"], cwd=work,
                                 env=dict(os.environ, WARDEN_LOG="warn"), stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(work, f"{sa}.log"), "w"))
            procs.append(p)
            proxies[sa] = p
        for sa in configs:
            subprocess.run([WARDEN, "proxy", "--config", f"{sa}.yaml", "--wait-ready", "--wait-timeout", "30s"],
                           cwd=work, check=True)

        stop = threading.Event()
        callers = [
            Caller("web GET /api/items", outbound["web"], "/api/items", 200, stop),
            Caller("web GET /admin/users", outbound["web"], "/admin/users", 403, stop),
            Caller("intruder GET /api/items", outbound["intruder"], "/api/items", 403, stop),
            Uploader("web opaque TCP upload", outbound_tcp, stop),
        ]
        for c in callers:
            c.start()
        hostile = Hostile(work, inbound, stop)
        hostile.start()

        samples = []  # (seconds, {sa: (rss_kb, fds)})
        policy_changes = broken_pushes = 0
        start = time.time()
        end = start + args.minutes * 60
        next_sample = next_churn = start
        next_broken = start + 30
        broken_path = os.path.join(work, "policies", "broken.yaml")
        while time.time() < end:
            now = time.time()
            if now >= next_sample:
                samples.append((round(now - start), {sa: proc_sample(p.pid) for sa, p in proxies.items()}))
                next_sample += 10
            if now >= next_churn:
                write_atomically(os.path.join(work, "policies", "extra.yaml"), unrelated_policies(random.randrange(1, 50)))
                policy_changes += 1
                next_churn += 15
            if now >= next_broken:
                write_atomically(broken_path, "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nspec: [unclosed\n")
                broken_pushes += 1
                time.sleep(5)
                os.remove(broken_path)
                next_broken += 60
            for p in procs:
                if p.poll() is not None:
                    sys.exit(f"a process exited during the soak: {p.args}; logs in {work}")
            time.sleep(0.5)
        stop.set()
        for c in callers:
            c.join()
        hostile.join()
        renewed = {sa: renewals(admin[sa]) for sa in proxies}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def flat(sa, index):
        # Skip the first minute (warm-up: pools, TLS sessions, allocator arenas).
        values = [s[1][sa][index] for s in samples if s[0] >= 60]
        first, last = values[: max(1, len(values) // 5)], values[-max(1, len(values) // 5):]
        return statistics.median(first), statistics.median(last)

    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ"), "minutes": args.minutes,
              "command": " ".join(sys.argv), "svid_ttl_s": 90, "policy_changes": policy_changes,
              "broken_policy_pushes": broken_pushes, "renewals": renewed, "callers": [], "proxies": {},
              "hostile_refused": hostile.refused, "hostile_served": hostile.served,
              "samples": samples}
    failures = []
    for c in callers:
        total = sum(c.counts.values())
        wrong = total - c.counts.get(c.expected, 0)
        leaked = c.counts.get(200, 0) if c.expected == 403 else 0
        report["callers"].append({"caller": c.name, "expected": c.expected, "requests": total,
                                  "unexpected": wrong, "denied_but_allowed": leaked,
                                  "counts": {str(k): v for k, v in c.counts.items()},
                                  "first_unexpected": c.unexpected[:10]})
        if wrong:
            failures.append(f"{c.name}: {wrong} of {total} answers were not {c.expected}: {c.unexpected[:5]}")
    if hostile.served:
        failures.append(f"hostile attempts were served: {hostile.served[:5]}")
    minimum = int(args.minutes * 60 / 63) - 1
    for sa in proxies:
        rss, fds = flat(sa, 0), flat(sa, 1)
        report["proxies"][sa] = {"rss_kb_start_end": rss, "fds_start_end": fds, "renewals": renewed[sa]}
        if renewed[sa] is None or renewed[sa] < minimum:
            failures.append(f"{sa}: {renewed[sa]} certificate renewals, expected at least {minimum}")
        if rss[1] > rss[0] * 1.25 + 1024:
            failures.append(f"{sa}: RSS grew from {rss[0]} to {rss[1]} KiB")
        if fds[1] > fds[0] + 5:
            failures.append(f"{sa}: open files grew from {fds[0]} to {fds[1]}")
    report["failures"] = failures
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benches", "results", f"soak-{report['date']}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)

    print(f"soak: {args.minutes} min, SVIDs of 90 s, {policy_changes} policy changes, {broken_pushes} broken pushes")
    print("| caller | expected | requests | unexpected | denied but allowed |")
    print("|---|---|---|---|---|")
    for c in report["callers"]:
        print(f"| {c['caller']} | {c['expected']} | {c['requests']:,} | {c['unexpected']} | {c['denied_but_allowed']} |")
    print("\n| hostile attempt | refused or closed | served |")
    print("|---|---|---|")
    for name, n in hostile.refused.items():
        print(f"| {name} | {n:,} | {sum(1 for s in hostile.served if s[0] == name)} |")
    print("\n| proxy | renewals | RSS KiB, after the first minute -> end | open files -> end |")
    print("|---|---|---|---|")
    for sa, p in report["proxies"].items():
        print(f"| {sa} | {p['renewals']} | {p['rss_kb_start_end'][0]:,.0f} -> {p['rss_kb_start_end'][1]:,.0f} | "
              f"{p['fds_start_end'][0]:.0f} -> {p['fds_start_end'][1]:.0f} |")
    print(f"\nresults: {os.path.relpath(out, ROOT)}; logs: {work}")
    if failures:
        print("\nFAILED:\n" + "\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
