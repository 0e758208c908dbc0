//! The network-namespace lab of the transparent-mode tests: a switch namespace with a
//! bridge (10.213.0.254, fd00:213::fe) and pods a-d (10.213.0.1-4, fd00:213::1-4), each
//! on a veth to it; processes started inside them; apps and clients that run in a pod's
//! namespace. Everything is removed when the lab is dropped, also when a test fails.

#![allow(dead_code)] // each test binary uses its own part

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::host::run;

/// The lab: namespaces, processes and files, all removed on drop (also when a test fails).
pub struct Lab {
    /// The prefix of every name this lab creates (namespaces, links).
    pub tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// Every stderr line of each child, by index.
    logs: Vec<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
    dir: tempfile::TempDir,
    warden: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub const SW: &str = "sw";
pub const PODS: [(&str, u8); 4] = [("a", 1), ("b", 2), ("c", 3), ("d", 4)];

pub fn pod_v4(idx: u8) -> String {
    format!("10.213.0.{idx}")
}

pub fn pod_v6(idx: u8) -> String {
    format!("fd00:213::{idx}")
}

impl Lab {
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }

    /// A switch namespace with a bridge, and pods a, b, c each on a veth to it.
    pub fn new() -> Self {
        // Unique per lab: a test binary's labs run side by side.
        static LABS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "wd{}{}",
            std::process::id() % 100_000,
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().unwrap();
        // The proxy runs as UID 2626: it must be able to read and execute what it needs.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let warden = dir.path().join("warden");
        std::fs::copy(env!("CARGO_BIN_EXE_warden"), &warden).unwrap();
        let mut lab = Lab {
            tag,
            namespaces: Vec::new(),
            children: Vec::new(),
            logs: Vec::new(),
            dir,
            warden,
        };
        let sw = lab.ns(SW);
        run(&["ip", "netns", "add", &sw]);
        lab.namespaces.push(sw.clone());
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        run(&[
            "ip",
            "-n",
            &sw,
            "addr",
            "add",
            "10.213.0.254/24",
            "dev",
            "br0",
        ]);
        run(&[
            "ip",
            "-n",
            &sw,
            "addr",
            "add",
            "fd00:213::fe/64",
            "dev",
            "br0",
            "nodad",
        ]);
        for (pod, idx) in PODS {
            let ns = lab.ns(pod);
            run(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let (inside, outside) = (format!("{}{pod}0", lab.tag), format!("{}{pod}1", lab.tag));
            run(&[
                "ip", "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ]);
            run(&["ip", "link", "set", &inside, "netns", &ns]);
            run(&["ip", "link", "set", &outside, "netns", &sw]);
            run(&["ip", "-n", &ns, "link", "set", &inside, "name", "eth0"]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", pod_v4(idx)),
                "dev",
                "eth0",
            ]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/64", pod_v6(idx)),
                "dev",
                "eth0",
                "nodad",
            ]);
            run(&[
                "ip", "-n", &sw, "link", "set", &outside, "master", "br0", "up",
            ]);
        }
        lab
    }

    pub fn warden(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.warden)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// `warden` inside namespace `ns`, as root.
    pub fn warden_in(&self, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .arg(&self.warden)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// The stderr lines the process `index` (from [`Lab::spawn`]) has written so far.
    pub fn log(&self, index: usize) -> Vec<String> {
        self.logs[index].lock().unwrap().clone()
    }

    /// Starts a long-running process in `ns` and waits for `ready` on its stderr; its index
    /// for [`Lab::kill`].
    pub fn spawn(
        &mut self,
        ns: &str,
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, String)],
        ready: &str,
    ) -> usize {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(ns)])
            .args(prefix)
            .arg(&self.warden)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .current_dir(self.dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = ready.to_string();
        let ns = ns.to_string();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains(&ready) {
                    let _ = tx.send(());
                    sent = true;
                }
                if line.contains("ERROR") || line.contains("error:") {
                    eprintln!("[{ns}] {line}");
                }
                kept.lock().unwrap().push(line);
            }
        });
        self.children.push(child);
        self.logs.push(log);
        rx.recv_timeout(Duration::from_secs(30))
            .expect("process became ready");
        self.children.len() - 1
    }

    /// Kills process `index` (as [`Lab::spawn`] returned it) now.
    pub fn kill(&mut self, index: usize) {
        let child = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A CA (if there is none yet) and `warden identity` on the switch at 10.213.0.254:7150
    /// (admin :7191), admitting the join tokens of the file `tokens`.
    pub fn identity_service(&mut self) {
        if !self.path("ca").exists() {
            assert!(self.warden(&["ca", "init", "--dir", "ca"]).status.success());
        }
        if !self.path("tokens").exists() {
            std::fs::write(self.path("tokens"), "").unwrap();
        }
        let args = [
            "identity",
            "--ca-dir",
            "ca",
            "--auth",
            "join-tokens",
            "--join-tokens",
            "tokens",
            "--listen",
            "10.213.0.254:7150",
            "--admin-listen",
            "10.213.0.254:7191",
        ];
        self.spawn(SW, &[], &args, &[], "warden identity: serving");
    }

    /// A file holding a new join token for `id` (readable by the proxy's UID). The identity
    /// service re-reads its token file every second: this waits that long.
    pub fn join_token(&self, id: &str) -> PathBuf {
        let out = self.warden(&["ca", "join-token", "--tokens", "tokens", "--id", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = self.path(&format!("{}.token", id.replace(['/', ':'], "_")));
        std::fs::write(&file, String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        file
    }

    /// A path in the lab's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it opens live there).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace file descriptor.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// An unmodified HTTP app: answers every request with the request's head. Counts requests.
pub fn http_app(ns: &str, addr: String, hits: Arc<AtomicUsize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let listener = std::net::TcpListener::bind(&addr).unwrap();
        tx.send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let hits = hits.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let body = String::from_utf8_lossy(&head).to_lowercase();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// An unmodified TCP echo app.
pub fn echo_app(ns: &str, addr: String) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let listener = std::net::TcpListener::bind(&addr).unwrap();
        tx.send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut conn);
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// An HTTP GET from inside `ns`, as an app does it: the whole response, or what arrived.
pub fn http_get(ns: &str, addr: &str, path: &str) -> String {
    let (addr, path) = (addr.to_string(), path.to_string());
    in_ns(ns, move || {
        let Ok(mut tcp) =
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        else {
            return String::from("(connect failed)");
        };
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
        let _ = tcp.write_all(req.as_bytes());
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .join()
    .unwrap()
}

/// Sends `payload` over TCP from inside `ns` and reads as many bytes back.
pub fn tcp_echo(ns: &str, addr: &str, payload: &'static [u8]) -> Vec<u8> {
    let addr = addr.to_string();
    in_ns(ns, move || {
        let mut tcp =
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(payload).unwrap();
        let mut got = vec![0u8; payload.len()];
        tcp.read_exact(&mut got).unwrap();
        got
    })
    .join()
    .unwrap()
}

/// Makes `target` (an address of this test's own namespace, e.g. the test API server on
/// loopback) reachable from inside `ns` at the returned `127.0.0.1:<port>` there: a relay
/// listening in `ns` whose outgoing side connects from this process's namespace. Lives as
/// long as the process.
pub fn relay_into(ns: &str, target: std::net::SocketAddr) -> std::net::SocketAddr {
    run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel::<std::net::TcpStream>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        bound_tx.send(listener.local_addr().unwrap()).unwrap();
        for conn in listener.incoming().map_while(Result::ok) {
            if accepted_tx.send(conn).is_err() {
                return;
            }
        }
    });
    // This thread and those it starts stay in the test's own namespace.
    std::thread::spawn(move || {
        for inside in accepted_rx {
            std::thread::spawn(move || {
                let Ok(outside) = TcpStream::connect(target) else {
                    return;
                };
                let (mut a, mut b) = (inside.try_clone().unwrap(), outside.try_clone().unwrap());
                let forward = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                let (mut inside, mut outside) = (inside, outside);
                let _ = std::io::copy(&mut outside, &mut inside);
                let _ = inside.shutdown(std::net::Shutdown::Write);
                let _ = forward.join();
            });
        }
    });
    bound_rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

/// A server-speaks-first app (SMTP- or MySQL-like): writes a banner as soon as a client
/// connects, before reading anything.
pub fn banner_app(ns: &str, addr: String, banner: &'static [u8]) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let listener = std::net::TcpListener::bind(&addr).unwrap();
        tx.send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.write_all(banner);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// Connects from inside `ns` and reads the first `len` bytes the server sends, sending
/// nothing (`None` if they do not come within 10 s).
pub fn read_banner(ns: &str, addr: &str, len: usize) -> Option<Vec<u8>> {
    let addr = addr.to_string();
    in_ns(ns, move || {
        let mut tcp =
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; len];
        tcp.read_exact(&mut got).ok()?;
        Some(got)
    })
    .join()
    .unwrap()
}
