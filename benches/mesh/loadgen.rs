//! The mesh benchmark's own load tools, std only (benches/mesh/run.sh builds it with `rustc -O`):
//!
//! - `loadgen rate ADDR RATE SECONDS CONNECTIONS`: open-loop HTTP/1.1 GETs at a fixed rate with
//!   coordinated-omission correction (each latency runs from the request's scheduled time, so a
//!   stall counts against every request it delays, as wrk2 does). One busy-polling thread with
//!   non-blocking sockets keeps the schedule to microseconds, which tokio's millisecond timer
//!   cannot. Requests scheduled in the first second are sent but not counted. Beside the
//!   generator, a hiccup meter per CPU (a real-time thread that sleeps 1 ms at a time and
//!   notes every wake-up more than 0.5 ms late, as jHiccup and cyclictest do) records when the
//!   machine itself stalled; the `clean_*` percentiles leave out the requests scheduled in or
//!   near such a stall (below), so a proxy's tail can be told from the platform's.
//! - `loadgen sink ADDR`: a TCP app that reads an 8-byte big-endian length, then that many
//!   bytes, and answers with the count it read (no half-close, so every proxy can carry it).
//! - `loadgen bulk ADDR BYTES`: sends BYTES through to a sink and reports the throughput.
//! - `loadgen burst ADDR CONNECTIONS ROUNDS PAUSE_MS`: what a relay does with requests that
//!   arrive together, as after the machine stalled: each round writes one HTTP/1.1 GET on
//!   every kept-alive connection at once, waits for every response, then pauses. Reports
//!   each request's latency from the round's start and each round's time to its last
//!   response (the first 10% of rounds are not counted).
//!
//! Each mode prints one JSON object on stdout.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, what: &str| -> String {
        args.get(i).cloned().unwrap_or_else(|| {
            eprintln!("loadgen: missing {what}; usage: rate ADDR RATE SECONDS CONNECTIONS | sink ADDR | bulk ADDR BYTES | burst ADDR CONNECTIONS ROUNDS PAUSE_MS");
            exit(2)
        })
    };
    let number = |i: usize, what: &str| -> u64 {
        let text = arg(i, what);
        text.parse().unwrap_or_else(|_| {
            eprintln!("loadgen: {what} {text:?} is not a whole number");
            exit(2)
        })
    };
    match arg(0, "mode").as_str() {
        "rate" => rate(&arg(1, "ADDR"), number(2, "RATE"), number(3, "SECONDS"), number(4, "CONNECTIONS") as usize),
        "sink" => sink(&arg(1, "ADDR")),
        "bulk" => bulk(&arg(1, "ADDR"), number(2, "BYTES")),
        "burst" => burst(&arg(1, "ADDR"), number(2, "CONNECTIONS") as usize, number(3, "ROUNDS"), number(4, "PAUSE_MS")),
        other => {
            eprintln!("loadgen: unknown mode {other:?}");
            exit(2)
        }
    }
}

/// Requests scheduled before this offset are sent but not measured.
const WARM_UP: Duration = Duration::from_secs(1);

/// One keep-alive connection of the open-loop generator.
struct Conn {
    stream: TcpStream,
    /// The scheduled time of the request in flight, if any.
    in_flight: Option<Instant>,
    response: Vec<u8>,
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| {
        eprintln!("loadgen: connect {addr}: {e}");
        exit(1)
    });
    stream.set_nodelay(true).ok();
    if let Err(e) = stream.set_nonblocking(true) {
        eprintln!("loadgen: cannot make the socket to {addr} non-blocking: {e}");
        exit(1)
    }
    stream
}

fn rate(addr: &str, rate: u64, seconds: u64, connections: usize) {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    let mut conns: Vec<Conn> = (0..connections)
        .map(|_| Conn { stream: connect(addr), in_flight: None, response: Vec::with_capacity(1024) })
        .collect();
    // Round-robin over the connections (first idle, first used), as wrk2 spreads its load:
    // every connection carries requests, and none sits silent long enough to be taken for a
    // server-speaks-first protocol by a proxy that detects protocols.
    let mut idle: VecDeque<usize> = (0..connections).collect();
    let mut due: VecDeque<Instant> = VecDeque::new();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = rate * seconds;
    let start = Instant::now() + Duration::from_millis(10);
    let measured_from = start + WARM_UP;
    let deadline = start + Duration::from_secs(seconds + 10);
    let (mut scheduled, mut errors, mut late_at_end) = (0u64, 0u64, 0u64);
    // (latency, scheduled offset from the start), both in nanoseconds
    let mut latencies: Vec<(u64, u64)> = Vec::with_capacity(total as usize);
    let meter = HiccupMeter::start(start);
    // The slowest requests and when they were scheduled (seconds from the start), to tell a
    // periodic stall from noise.
    let mut worst: Vec<(u64, f64)> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        while scheduled < total && start + interval * scheduled as u32 <= now {
            due.push_back(start + interval * scheduled as u32);
            scheduled += 1;
        }
        while !due.is_empty() && !idle.is_empty() {
            let i = idle.pop_front().expect("an idle connection");
            let conn = &mut conns[i];
            if conn.stream.write_all(&request).is_err() {
                // A broken connection: count the request as failed and reconnect.
                errors += 1;
                due.pop_front();
                conn.stream = connect(addr);
                idle.push_back(i);
                continue;
            }
            conn.in_flight = due.pop_front();
            conn.response.clear();
        }
        for (i, conn) in conns.iter_mut().enumerate() {
            let Some(scheduled_at) = conn.in_flight else { continue };
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    errors += 1;
                    conn.in_flight = None;
                    conn.stream = connect(addr);
                    idle.push_back(i);
                }
                Ok(n) => {
                    conn.response.extend_from_slice(&buf[..n]);
                    if let Some(ok) = complete(&conn.response) {
                        let done = Instant::now();
                        if !ok {
                            errors += 1;
                        } else if scheduled_at >= measured_from {
                            let latency = (done - scheduled_at).as_nanos() as u64;
                            latencies.push((latency, (scheduled_at - start).as_nanos() as u64));
                            worst.push((latency, (scheduled_at - start).as_secs_f64()));
                            if worst.len() > 64 {
                                worst.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
                                worst.truncate(5);
                            }
                        }
                        conn.in_flight = None;
                        idle.push_back(i);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    errors += 1;
                    conn.in_flight = None;
                    conn.stream = connect(addr);
                    idle.push_back(i);
                }
            }
        }
        if scheduled == total && due.is_empty() && conns.iter().all(|c| c.in_flight.is_none()) {
            break;
        }
        if now > deadline {
            late_at_end = due.len() as u64 + conns.iter().filter(|c| c.in_flight.is_some()).count() as u64;
            break;
        }
    }
    let stalls = meter.stop();
    worst.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
    worst.truncate(5);
    let worst: Vec<String> = worst
        .iter()
        .map(|(ns, at)| format!("[{at:.3}, {:.3}]", *ns as f64 / 1e6))
        .collect();
    let all: Vec<u64> = latencies.iter().map(|l| l.0).collect();
    let clean = match &stalls {
        Ok(stalls) => {
            let windows = set_aside(stalls);
            let kept: Vec<u64> = latencies.iter().filter(|l| !inside(&windows, l.1)).map(|l| l.0).collect();
            let longest = stalls.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
            let aside: u64 = windows.iter().map(|w| w.1 - w.0).sum();
            format!(
                "\"stalls\": {}, \"longest_stall_ms\": {:.3}, \"set_aside_ms\": {:.1}, \"clean_measured\": {}, {}",
                stalls.len(),
                longest as f64 / 1e6,
                aside as f64 / 1e6,
                kept.len(),
                percentiles("clean_", kept)
            )
        }
        Err(e) => {
            eprintln!("loadgen: no hiccup meter, so no clean percentiles: {e}");
            "\"stalls\": null".to_string()
        }
    };
    println!(
        "{{\"rate\": {rate}, \"seconds\": {seconds}, \"connections\": {connections}, \"measured\": {}, \"errors\": {errors}, \"unfinished\": {late_at_end}, {}, \"worst_at_s_ms\": [{}], {clean}}}",
        latencies.len(),
        percentiles("", all),
        worst.join(", ")
    );
}

fn burst(addr: &str, connections: usize, rounds: u64, pause_ms: u64) {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    let mut conns: Vec<Conn> = (0..connections)
        .map(|_| Conn { stream: connect(addr), in_flight: None, response: Vec::with_capacity(1024) })
        .collect();
    let mut buf = [0u8; 16 * 1024];
    let (mut latencies, mut lasts) = (Vec::new(), Vec::new());
    let warm_up = rounds / 10;
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(pause_ms));
        let start = Instant::now();
        for conn in conns.iter_mut() {
            if let Err(e) = conn.stream.write_all(&request) {
                eprintln!("loadgen: burst write to {addr}: {e}");
                exit(1)
            }
            conn.in_flight = Some(start);
            conn.response.clear();
        }
        let mut open = connections;
        let deadline = start + Duration::from_secs(10);
        while open > 0 {
            for conn in conns.iter_mut().filter(|c| c.in_flight.is_some()) {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        eprintln!("loadgen: {addr} closed a connection mid-burst");
                        exit(1)
                    }
                    Ok(n) => {
                        conn.response.extend_from_slice(&buf[..n]);
                        if let Some(ok) = complete(&conn.response) {
                            if !ok {
                                eprintln!("loadgen: {addr} answered a burst's request with an error");
                                exit(1)
                            }
                            conn.in_flight = None;
                            open -= 1;
                            if round >= warm_up {
                                latencies.push(start.elapsed().as_nanos() as u64);
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => {
                        eprintln!("loadgen: burst read from {addr}: {e}");
                        exit(1)
                    }
                }
            }
            if Instant::now() > deadline {
                eprintln!("loadgen: a burst to {addr} was not answered in 10 s");
                exit(1)
            }
        }
        if round >= warm_up {
            lasts.push(start.elapsed().as_nanos() as u64);
        }
    }
    println!(
        "{{\"connections\": {connections}, \"rounds\": {}, {}, {}}}",
        lasts.len(),
        percentiles("", latencies),
        percentiles("last_", lasts)
    );
}

/// `"{prefix}p50_ms": .., "{prefix}p99_ms": .., "{prefix}p999_ms": .., "{prefix}max_ms": ..` of
/// `latencies` (nanoseconds).
fn percentiles(prefix: &str, mut latencies: Vec<u64>) -> String {
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1] as f64 / 1e6
    };
    format!(
        "\"{prefix}p50_ms\": {:.4}, \"{prefix}p99_ms\": {:.4}, \"{prefix}p999_ms\": {:.4}, \"{prefix}max_ms\": {:.4}",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    )
}

/// How long the meter sleeps at a time.
const METER_TICK: Duration = Duration::from_millis(1);
/// A wake-up later than this after its tick is a stall of the machine.
const STALL: Duration = Duration::from_micros(500);
/// Requests scheduled this long before a stall may be in flight when it starts.
const BEFORE_STALL: Duration = Duration::from_millis(2);

/// One real-time thread per CPU, noting when the machine stalled: a thread of the highest
/// FIFO priority preempts every process at once, so a wake-up that comes late means the CPU
/// itself did not run (the hypervisor took it, or the kernel had interrupts off), not that
/// a proxy was busy.
struct HiccupMeter {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Vec<(u64, u64)>, String>>>,
}

impl HiccupMeter {
    /// Starts one meter thread per online CPU; stall times are nanoseconds from `origin`.
    fn start(origin: Instant) -> HiccupMeter {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..online_cpus())
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    realtime_on(cpu)?;
                    let mut stalls = Vec::new();
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(METER_TICK);
                        let now = Instant::now();
                        if now - last > METER_TICK + STALL {
                            let at = |t: Instant| t.saturating_duration_since(origin).as_nanos() as u64;
                            stalls.push((at(last), at(now)));
                        }
                        last = now;
                    }
                    Ok(stalls)
                })
            })
            .collect();
        HiccupMeter { stop, threads }
    }

    /// Stops the meters: every stall seen on any CPU, as (start, end) nanoseconds.
    fn stop(self) -> Result<Vec<(u64, u64)>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for thread in self.threads {
            all.extend(thread.join().map_err(|_| "a meter thread panicked".to_string())??);
        }
        all.sort_unstable();
        Ok(all)
    }
}

/// The schedule times set aside for `stalls`: from `BEFORE_STALL` before each to as long
/// again after it as it lasted plus `BEFORE_STALL` (the backlog it left drains at least as
/// fast as it built up while a proxy is at most half busy), merged and sorted.
fn set_aside(stalls: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let margin = BEFORE_STALL.as_nanos() as u64;
    let mut windows: Vec<(u64, u64)> = Vec::new();
    for &(from, to) in stalls {
        let window = (from.saturating_sub(margin), to + (to - from) + margin);
        match windows.last_mut() {
            Some(last) if window.0 <= last.1 => last.1 = last.1.max(window.1),
            _ => windows.push(window),
        }
    }
    windows
}

/// Whether `at` falls in one of the sorted, disjoint `windows`.
fn inside(windows: &[(u64, u64)], at: u64) -> bool {
    let after = windows.partition_point(|w| w.0 <= at);
    after > 0 && at < windows[after - 1].1
}

unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    fn sched_setscheduler(pid: i32, policy: i32, param: *const i32) -> i32;
}

/// CPUs online (not only those this process may use: the generator itself is pinned).
fn online_cpus() -> usize {
    const SC_NPROCESSORS_ONLN: i32 = 84;
    // SAFETY: sysconf reads a system value.
    unsafe { sysconf(SC_NPROCESSORS_ONLN) }.clamp(1, 1024) as usize
}

/// Pins the calling thread to `cpu` at the highest FIFO priority.
fn realtime_on(cpu: usize) -> Result<(), String> {
    const SCHED_FIFO: i32 = 1;
    let mut mask = [0u64; 16];
    mask[cpu / 64] |= 1 << (cpu % 64);
    let priority: i32 = 99;
    // SAFETY: pid 0 is the calling thread; the mask and the parameter outlive the calls.
    unsafe {
        if sched_setaffinity(0, std::mem::size_of_val(&mask), mask.as_ptr()) != 0 {
            return Err(format!("cannot run on CPU {cpu}: {}", std::io::Error::last_os_error()));
        }
        if sched_setscheduler(0, SCHED_FIFO, &priority) != 0 {
            return Err(format!("no real-time priority (needs root): {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Whether `response` holds a whole HTTP/1.1 response yet, and if so whether it was a 200.
fn complete(response: &[u8]) -> Option<bool> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let ok = head.starts_with("http/1.1 200");
    let body = &response[end..];
    if let Some(line) = head.lines().find(|l| l.starts_with("content-length:")) {
        let length: usize = line["content-length:".len()..].trim().parse().ok()?;
        return (body.len() >= length).then_some(ok);
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n").then_some(ok);
    }
    Some(ok)
}

fn sink(addr: &str) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("loadgen: bind {addr}: {e}");
        exit(1)
    });
    println!("{{\"listening\": \"{}\"}}", listener.local_addr().expect("bound address"));
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut header = [0u8; 8];
            if stream.read_exact(&mut header).is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(header);
            let mut read = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                match stream.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        left -= n as u64;
                        read += n as u64;
                    }
                }
            }
            let _ = stream.write_all(&read.to_be_bytes());
        });
    }
}

fn bulk(addr: &str, bytes: u64) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| {
        eprintln!("loadgen: connect {addr}: {e}");
        exit(1)
    });
    let chunk = vec![0xa5u8; 256 * 1024];
    let start = Instant::now();
    if let Err(e) = stream.write_all(&bytes.to_be_bytes()) {
        eprintln!("loadgen: sending the length to {addr} failed: {e}");
        exit(1)
    }
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if let Err(e) = stream.write_all(&chunk[..n]) {
            eprintln!("loadgen: bulk send to {addr} failed after {} bytes: {e}", bytes - left);
            exit(1)
        }
        left -= n as u64;
    }
    let mut answer = [0u8; 8];
    if let Err(e) = stream.read_exact(&mut answer) {
        eprintln!("loadgen: no byte count back from the sink via {addr}: {e}");
        exit(1)
    }
    let seconds = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(answer);
    if received != bytes {
        eprintln!("loadgen: the sink got {received} of {bytes} bytes via {addr}");
        exit(1)
    }
    println!(
        "{{\"bytes\": {bytes}, \"seconds\": {seconds:.4}, \"gbit_per_s\": {:.3}}}",
        bytes as f64 * 8.0 / seconds / 1e9
    );
}
