//! Writing the audit log off the request path: a request queues its record (never waits for a
//! write) and a writer thread hash-chains, writes and checkpoints them (the format and its
//! verification are `warden_core::audit`). Each run of the proxy is a chain of its own that
//! starts with an epoch record; every `checkpoint_records` records or `checkpoint_interval`,
//! and at shutdown, the writer signs the chain's head with the SVID key (held in memory only).
//! A full queue or a failed write drops the record, counts it, and shows on `/ready`; with
//! `audit_failure: deny` the proxy then refuses the requests it cannot record.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use warden_core::audit::{Checkpoint, DecisionFields, Entry, EpochRecord, GENESIS};
use warden_identity::rotation::Credentials;

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output, where the node's log pipeline collects it (logs go to standard error).
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl AuditTarget {
    /// `stdout`, `off` (`None`), or a path.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "off" => None,
            "stdout" | "-" => Some(Self::Stdout),
            path => Some(Self::File(PathBuf::from(path))),
        }
    }
}

/// What happens to a request whose record cannot be queued or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailure {
    /// Serve it; the lost record is counted (`warden_audit_records_dropped_total`).
    #[default]
    Allow,
    /// Refuse it (503, or the connection closed) and report not ready: fail closed.
    Deny,
}

/// How the log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Record allowed decisions too (denials and audits always are).
    pub log_allowed: bool,
    /// What a record that cannot be kept does to its request.
    pub failure: AuditFailure,
    /// A checkpoint after this many records...
    pub checkpoint_records: u64,
    /// ...or this long after the last one, whichever comes first (if anything was written).
    pub checkpoint_interval: Duration,
    /// Records waiting for the writer, at most.
    pub queue: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            log_allowed: false,
            failure: AuditFailure::Allow,
            checkpoint_records: 1000,
            checkpoint_interval: Duration::from_secs(10),
            queue: 8192,
        }
    }
}

/// The writer's state, for `/ready`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditStatus {
    /// Records dropped so far (full queue or failed write).
    pub dropped: u64,
    /// The last write error, while writes fail.
    pub error: Option<String>,
}

/// A record was not kept and the configuration says to refuse its request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit log cannot take the record ({0})")]
pub struct AuditUnavailable(pub &'static str);

enum Message {
    /// A decision's fields, serialized on the request path ([`warden_core::audit::decision_body`]).
    Record(String),
    /// Write the final checkpoint, then acknowledge.
    Close(std::sync::mpsc::Sender<()>),
}

/// Shared between the request path and the writer.
struct Health {
    /// Set while writes fail.
    failing: AtomicBool,
    /// Dropped before reaching the writer (a full queue, or refused while writes fail).
    lost_before_writer: AtomicU64,
    status: watch::Sender<AuditStatus>,
}

/// Counts records lost, by reason.
fn count_dropped(reason: &'static str, count: u64) {
    metrics::counter!("warden_audit_records_dropped_total", "reason" => reason).increment(count);
}

/// The audit log: a bounded queue in front of a writer thread.
pub struct AuditLog {
    queue: SyncSender<Message>,
    /// The queue's other end and the sink, until [`AuditLog::start`] hands them to the writer.
    pending: Mutex<Option<(Receiver<Message>, Sink)>>,
    /// Whether [`AuditLog::close`] has run (the drop then has nothing left to wait for).
    closed: AtomicBool,
    options: AuditOptions,
    health: Arc<Health>,
    /// Whether allowed decisions are recorded too.
    pub log_allowed: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Where the writer writes, and whether what is there ends mid-line (a crash mid-write).
struct Sink {
    out: Box<dyn Write + Send>,
    newline_needed: bool,
}

impl AuditLog {
    /// Opens the target (so a bad path fails at start-up); nothing is written until
    /// [`AuditLog::start`].
    pub fn open(target: &AuditTarget, options: AuditOptions) -> std::io::Result<Self> {
        let sink = match target {
            AuditTarget::Stdout => {
                // A duplicate of fd 1, written with plain `write` calls: std's `Stdout`
                // buffers by line and would hide how much of a batch a failed write kept.
                use std::os::fd::AsFd;
                let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
                Sink {
                    out: Box::new(std::fs::File::from(fd)),
                    newline_needed: false,
                }
            }
            AuditTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(path)?;
                Sink {
                    newline_needed: ends_mid_line(&file)?,
                    out: Box::new(file),
                }
            }
        };
        Ok(Self::with_sink(sink, options))
    }

    /// The log over an opened sink.
    fn with_sink(sink: Sink, options: AuditOptions) -> Self {
        let (queue, rx) = std::sync::mpsc::sync_channel(options.queue.max(1));
        metrics::describe_counter!(
            "warden_audit_records_total",
            "Audit records written (decisions, epochs and checkpoints)."
        );
        metrics::describe_counter!(
            "warden_audit_records_dropped_total",
            "Audit records dropped, by reason: queue_full (the writer fell behind), write_error, or closed (after shutdown)."
        );
        metrics::describe_counter!(
            "warden_audit_checkpoints_total",
            "Signed audit checkpoints written."
        );
        metrics::describe_counter!(
            "warden_audit_refused_total",
            "Requests refused because their audit record could not be kept (audit_failure: deny)."
        );
        Self {
            queue,
            pending: Mutex::new(Some((rx, sink))),
            closed: AtomicBool::new(false),
            log_allowed: options.log_allowed,
            options,
            health: Arc::new(Health {
                failing: AtomicBool::new(false),
                lost_before_writer: AtomicU64::new(0),
                status: watch::Sender::new(AuditStatus::default()),
            }),
        }
    }

    /// Starts the writer thread (once) for pod `pod` (`namespace/name`), signing with the
    /// SVIDs `credentials` hands out. Records queued before are written after the epoch.
    pub fn start(&self, pod: &str, credentials: watch::Receiver<Arc<Credentials>>) {
        let Some((rx, sink)) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let run = format!("{started}-{:08x}", random_u32());
        let chain = format!("{pod}/{run}");
        let writer = Writer {
            sink,
            chain_json: serde_json::to_string(&chain).unwrap_or_default(),
            chain,
            pod: pod.to_string(),
            run,
            seq: 0,
            prev: GENESIS.to_string(),
            since: 0,
            buf: Vec::new(),
            unflushed: Vec::new(),
            written_prev: GENESIS.to_string(),
            write_errors: 0,
            credentials,
            options: self.options.clone(),
            health: self.health.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit writer");
            self.health.failing.store(true, Ordering::Relaxed);
        }
    }

    /// Queues a decision's record (its chain, `seq` and `prev` are filled in by the writer).
    /// A record that cannot be kept is counted; with `audit_failure: deny` the caller must
    /// refuse.
    pub fn record(&self, decision: &DecisionFields<'_>) -> Result<(), AuditUnavailable> {
        let deny = self.options.failure == AuditFailure::Deny;
        let lost = |reason, why| {
            count_dropped(reason, 1);
            self.health
                .lost_before_writer
                .fetch_add(1, Ordering::Relaxed);
            self.health.status.send_modify(|s| s.dropped += 1);
            if deny {
                metrics::counter!("warden_audit_refused_total").increment(1);
                Err(AuditUnavailable(why))
            } else {
                Ok(())
            }
        };
        if deny && self.health.failing.load(Ordering::Relaxed) {
            return lost("write_error", "writes are failing");
        }
        // Serialized here, into one string: a dozen fields' allocations freed on another
        // thread would cost more than the serializing.
        let body = warden_core::audit::decision_body(decision);
        match self.queue.try_send(Message::Record(body)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => lost("queue_full", "the queue is full"),
            Err(TrySendError::Disconnected(_)) => lost("closed", "the writer has stopped"),
        }
    }

    /// Writes what is queued and the final checkpoint, waiting at most `timeout`.
    pub async fn close(&self, timeout: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        let queue = self.queue.clone();
        let _ = tokio::task::spawn_blocking(move || close_writer(&queue, timeout)).await;
    }

    /// The writer's state, as it changes.
    pub fn status(&self) -> watch::Receiver<AuditStatus> {
        self.health.status.subscribe()
    }

    /// For `/ready`: why requests are being refused (`audit_failure: deny` while records
    /// cannot be written), if they are.
    pub fn refusing(&self) -> Option<String> {
        let failing = self.health.failing.load(Ordering::Relaxed);
        (self.options.failure == AuditFailure::Deny && failing).then(|| {
            let status = self.health.status.borrow();
            format!(
                "the audit log cannot be written ({}); audit_failure is deny, so requests are refused",
                status.error.as_deref().unwrap_or("unknown error")
            )
        })
    }
}

/// Asks the writer behind `queue` to write what is queued and the final checkpoint, and
/// waits until it has or `timeout` passes (never longer, even if the writer is stuck in a
/// write). Returns at once when the writer has already stopped.
fn close_writer(queue: &SyncSender<Message>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let (ack, done) = std::sync::mpsc::channel();
    let mut message = Message::Close(ack);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                message = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

impl Drop for AuditLog {
    /// A log dropped without [`AuditLog::close`] (a proxy task dropped with its runtime, a
    /// program that stops without closing it) is closed here, at most [`CLOSE_ON_DROP`],
    /// before the drop returns (after `close`, even one that timed out, it is not waited for
    /// again): the
    /// writer signs its final checkpoint now, not on its own thread while the process
    /// exits, where aws-lc's exit-time zeroizing of its random-number state makes a
    /// signature in progress abort the process.
    fn drop(&mut self) {
        let closed = *self.closed.get_mut();
        let started = match self.pending.get_mut() {
            Ok(pending) => pending.is_none(),
            Err(poisoned) => poisoned.into_inner().is_none(),
        };
        if started && !closed {
            close_writer(&self.queue, CLOSE_ON_DROP);
        }
    }
}

/// How long dropping an unclosed log waits for its final checkpoint, at most.
const CLOSE_ON_DROP: Duration = Duration::from_secs(5);

/// Whether a file's last byte is not a newline (a line left half written).
fn ends_mid_line(file: &std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// A random number for the run id (uniqueness, not secrecy): std's per-process hash seed.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

/// The writer thread's state: the chain as written so far, and a batch not yet written.
struct Writer {
    sink: Sink,
    chain: String,
    /// The chain id as a JSON string, for decision lines.
    chain_json: String,
    pod: String,
    run: String,
    /// The next position, and the hash of the record before it (counting the batch).
    seq: u64,
    prev: String,
    /// The first position after the last written checkpoint.
    since: u64,
    /// The batch: lines not yet written, and per line its end in `buf`, position and hash.
    buf: Vec<u8>,
    unflushed: Vec<(usize, u64, String)>,
    /// The hash of the last record written whole.
    written_prev: String,
    write_errors: u64,
    credentials: watch::Receiver<Arc<Credentials>>,
    options: AuditOptions,
    health: Arc<Health>,
}

/// Records written in one `write` at most.
const BATCH: usize = 512;
/// How long the writer lets records gather after writing a batch.
const LINGER: Duration = Duration::from_millis(2);
/// How soon a failing writer tries again.
const RETRY: Duration = Duration::from_secs(1);

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        // The epoch at once: a restart shows in the log even before any decision.
        let epoch = self.epoch();
        self.append(epoch);
        self.flush();
        let mut deadline = Instant::now() + self.options.checkpoint_interval;
        loop {
            let failing = self.health.failing.load(Ordering::Relaxed);
            let mut wait = deadline.saturating_duration_since(Instant::now());
            if failing {
                // Retry soon: with `audit_failure: deny` no record arrives to try with.
                wait = wait.min(RETRY);
            }
            let first = match rx.recv_timeout(wait) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    if self.seq > self.since || failing {
                        self.checkpoint(false);
                    }
                    deadline = Instant::now() + self.options.checkpoint_interval;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return self.checkpoint(true),
            };
            let mut next = Some(first);
            let mut batch = 0;
            while let Some(message) = next.take() {
                match message {
                    Message::Record(body) => self.append_decision(&body),
                    Message::Close(ack) => {
                        self.flush();
                        self.checkpoint(true);
                        let _ = ack.send(());
                        return;
                    }
                }
                batch += 1;
                if batch < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.flush();
            if self.seq - self.since >= self.options.checkpoint_records {
                self.checkpoint(false);
                deadline = Instant::now() + self.options.checkpoint_interval;
            }
            // Let the next records gather: under load a wake-up per record (a futex wake for
            // the sender, a context switch on the sidecar's core) would cost more than the
            // record; this way the thread wakes at most every LINGER.
            std::thread::sleep(LINGER);
        }
    }

    /// The chain's first record.
    fn epoch(&self) -> Entry {
        Entry::Epoch(EpochRecord {
            chain: String::new(),
            seq: 0,
            time: warden_identity::timestamp::now_rfc3339(),
            pod: self.pod.clone(),
            run: self.run.clone(),
            workload: self.credentials.borrow().svid.id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            prev: String::new(),
        })
    }

    /// Adds an entry to the batch, in the chain (an epoch first, if the chain has none yet:
    /// the first one's write failed).
    fn append(&mut self, mut entry: Entry) {
        if self.seq == 0 && !matches!(entry, Entry::Epoch(_)) {
            let epoch = self.epoch();
            self.append(epoch);
        }
        entry.link(&self.chain, self.seq, &self.prev);
        let (line, hash) = entry.to_line();
        self.buf.extend_from_slice(line.as_bytes());
        self.line_added(hash);
    }

    /// Adds a decision line to the batch (after the epoch, if the chain has none yet).
    fn append_decision(&mut self, body: &str) {
        if self.seq == 0 {
            let epoch = self.epoch();
            self.append(epoch);
        }
        let hash = warden_core::audit::append_decision_line(
            &mut self.buf,
            &self.chain_json,
            self.seq,
            body,
            &self.prev,
        );
        self.line_added(hash);
    }

    /// Ends the line just added to `buf`, whose hash is `hash`, and moves the chain on.
    fn line_added(&mut self, hash: String) {
        self.buf.push(b'\n');
        self.unflushed
            .push((self.buf.len(), self.seq, hash.clone()));
        self.seq += 1;
        self.prev = hash;
    }

    /// Writes the batch. On an error, the lines written whole stay in the chain and the rest
    /// are dropped (counted); the chain continues from the last line written whole, and a
    /// line left half written is ended first, so the verifier reads it as no record.
    fn flush(&mut self) {
        if self.unflushed.is_empty() {
            return;
        }
        let skip = usize::from(self.sink.newline_needed);
        let mut out = Vec::with_capacity(self.buf.len() + skip);
        if self.sink.newline_needed {
            out.push(b'\n');
        }
        out.extend_from_slice(&self.buf);
        let (written, error) = write_counting(&mut self.sink.out, &out);
        let kept = written.saturating_sub(skip);
        if written >= skip {
            self.sink.newline_needed = false;
        }
        let whole = self
            .unflushed
            .iter()
            .take_while(|(end, _, _)| *end <= kept)
            .count();
        metrics::counter!("warden_audit_records_total").increment(whole as u64);
        match error {
            None => {
                if self.health.failing.swap(false, Ordering::Relaxed) {
                    self.health.status.send_modify(|s| s.error = None);
                    tracing::info!("the audit log is being written again");
                }
            }
            Some(e) => {
                let lost = (self.unflushed.len() - whole) as u64;
                let ends_at = if whole > 0 {
                    let (end, seq, hash) = &self.unflushed[whole - 1];
                    self.seq = seq + 1;
                    self.prev = hash.clone();
                    *end
                } else {
                    self.seq = self.unflushed[0].1;
                    self.prev = self.written_prev.clone();
                    0
                };
                if kept > ends_at {
                    self.sink.newline_needed = true;
                }
                self.write_errors += lost;
                count_dropped("write_error", lost);
                // The flag first: whoever sees the status also sees requests refused.
                if !self.health.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, lost, "cannot write the audit log; dropping records");
                }
                self.health.status.send_modify(|s| {
                    s.dropped += lost;
                    s.error = Some(e.to_string());
                });
            }
        }
        self.written_prev = self.prev.clone();
        self.buf.clear();
        self.unflushed.clear();
    }

    /// Signs and writes a checkpoint of everything before it.
    fn checkpoint(&mut self, last: bool) {
        let svid = self.credentials.borrow().svid.clone();
        if svid.not_after() <= SystemTime::now() {
            // A signature by an expired SVID would not verify; the next one will be signed
            // once renewal succeeds, and covers these records too.
            tracing::warn!("the SVID has expired; the audit checkpoint waits for renewal");
            return;
        }
        if self.seq == 0 {
            let epoch = self.epoch();
            self.append(epoch);
        }
        let dropped = self.write_errors + self.health.lost_before_writer.load(Ordering::Relaxed);
        let mut cp = Checkpoint {
            chain: self.chain.clone(),
            seq: self.seq,
            time: warden_identity::timestamp::now_rfc3339(),
            first: self.since,
            dropped,
            last,
            workload: String::new(),
            alg: String::new(),
            svid: Vec::new(),
            sig: String::new(),
            prev: self.prev.clone(),
        };
        if let Err(e) = warden_identity::audit_signature::sign(&svid, &mut cp) {
            tracing::error!(error = %e, "cannot sign an audit checkpoint");
            return;
        }
        let at = cp.seq;
        self.append(Entry::Checkpoint(cp));
        self.flush();
        if self.seq > at {
            self.since = at + 1;
            metrics::counter!("warden_audit_checkpoints_total").increment(1);
        }
    }
}

/// Writes `data` with plain `write` calls; returns how many bytes were written and the error
/// that stopped it, if one did.
fn write_counting(out: &mut dyn Write, data: &[u8]) -> (usize, Option<std::io::Error>) {
    let mut written = 0;
    while written < data.len() {
        match out.write(&data[written..]) {
            Ok(0) => {
                return (
                    written,
                    Some(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "the audit log accepts no more bytes",
                    )),
                )
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Some(e)),
        }
    }
    (written, out.flush().err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::audit::verify::{verify, FindingKind, Status};
    use warden_core::{SpiffeId, TrustDomain};
    use warden_identity::rotation::TlsOptions;
    use warden_identity::TrustStore;

    /// Credentials for `spiffe://cluster.local/ns/shop/sa/backend` and the store to check with.
    fn credentials() -> (watch::Receiver<Arc<Credentials>>, TrustStore) {
        let ca = warden_identity::ca::generate(&warden_identity::ca::InitOptions::new(
            TrustDomain::default(),
        ))
        .unwrap()
        .authority()
        .unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").unwrap();
        let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let store = TrustStore::single(ca.bundle().clone());
        let tls = TlsOptions {
            server_alpn: vec![],
            client_alpn: vec![],
            client_auth: warden_identity::tls::ClientAuth::Required,
        };
        let creds = Credentials::build(svid, Arc::new(store.clone()), &tls).unwrap();
        (watch::channel(Arc::new(creds)).1, store)
    }

    /// A denial of `GET path`.
    fn record(path: &str) -> DecisionFields<'_> {
        DecisionFields {
            time: "2026-11-26T08:00:00Z",
            direction: "inbound",
            client: None,
            client_addr: None,
            workload: "spiffe://cluster.local/ns/shop/sa/backend",
            port: 80,
            method: Some("GET"),
            path: Some(path),
            decision: "deny",
            policy: None,
            rule: None,
            reason: "no policy applies",
            audit_policies: None,
            request_id: None,
        }
    }

    fn options() -> AuditOptions {
        AuditOptions {
            checkpoint_records: 3,
            // Only record counts and the close checkpoint, so the output is deterministic.
            checkpoint_interval: Duration::from_secs(3600),
            ..AuditOptions::default()
        }
    }

    fn check(store: &TrustStore) -> impl Fn(&Checkpoint) -> Result<String, String> + '_ {
        |cp| warden_identity::audit_signature::check(store, cp).map(|id| id.to_string())
    }

    /// A sink that can be made to fail, after taking `partial` more bytes.
    #[derive(Clone, Default)]
    struct Flaky {
        written: Arc<Mutex<Vec<u8>>>,
        failing: Arc<Mutex<Option<usize>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut failing = self.failing.lock().unwrap();
            let n = match failing.as_mut() {
                None => buf.len(),
                Some(0) => return Err(std::io::Error::from(std::io::ErrorKind::StorageFull)),
                Some(partial) => {
                    let n = (*partial).min(buf.len());
                    *partial -= n;
                    n
                }
            };
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log writing to `sink`.
    fn flaky_log(sink: Flaky, options: AuditOptions) -> AuditLog {
        AuditLog::with_sink(
            Sink {
                out: Box::new(sink),
                newline_needed: false,
            },
            options,
        )
    }

    #[tokio::test]
    async fn a_file_log_is_a_signed_chain_per_run_and_verifies() {
        let (creds, store) = credentials();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // What a crash mid-write leaves: a line without its end.
        std::fs::write(&path, "{\"type\":\"decision\",\"cha").unwrap();
        let checkpoints = || {
            let text = std::fs::read_to_string(&path).unwrap();
            text.lines()
                .filter(|l| l.contains("\"type\":\"checkpoint\""))
                .count()
        };
        for run in 0..2 {
            let before = checkpoints();
            let log = AuditLog::open(&AuditTarget::File(path.clone()), options()).unwrap();
            log.start("shop/backend-1", creds.clone());
            for i in 0..7 {
                log.record(&record(&format!("/{run}/{i}"))).unwrap();
            }
            // Three records or more since the last checkpoint bring one, before the close.
            let checkpointed = || checkpoints() > before;
            for _ in 0..1000 {
                if checkpointed() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(checkpointed(), "a checkpoint every 3 records");
            log.close(Duration::from_secs(10)).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let report = verify(&[("audit.log".into(), text.clone())], &check(&store));
        assert_eq!(report.status, Status::Verified, "{report:#?}\n{text}");
        assert_eq!(report.chains.len(), 2, "a chain per run");
        assert_eq!(report.unreadable.len(), 1, "the crash's half line, alone");
        for chain in &report.chains {
            // The epoch, 7 decisions, a checkpoint or more (batches decide how many), the
            // final one.
            assert!(chain.records >= 10, "{chain:#?}");
            assert!(chain.closed);
            assert_eq!(chain.pod.as_deref(), Some("shop/backend-1"));
            assert!(chain.chain.starts_with("shop/backend-1/"));
        }
        let decisions = text
            .lines()
            .filter(|l| l.starts_with("{\"type\":\"decision\",\"chain\":\"shop/"))
            .count();
        assert_eq!(decisions, 14);
    }

    #[test]
    fn a_log_dropped_unclosed_is_closed_before_the_drop_returns() {
        let (creds, store) = credentials();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&AuditTarget::File(path.clone()), options()).unwrap();
        log.start("shop/backend-1", creds);
        log.record(&record("/dropped")).unwrap();
        drop(log);
        // No waiting: the final checkpoint was written by the time the drop returned.
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert!(
            last.contains("\"type\":\"checkpoint\"") && last.contains("\"final\":true"),
            "{text}"
        );
        let report = verify(&[("audit.log".into(), text.clone())], &check(&store));
        assert_eq!(report.status, Status::Verified, "{report:#?}\n{text}");
        assert!(report.chains[0].closed);

        // A log never started has no writer to wait for.
        let unstarted = AuditLog::open(&AuditTarget::File(path), options()).unwrap();
        let dropped_at = Instant::now();
        drop(unstarted);
        assert!(dropped_at.elapsed() < CLOSE_ON_DROP, "no wait for a writer");
    }

    #[tokio::test]
    async fn a_failed_write_drops_whole_records_and_the_chain_stays_verifiable() {
        let (creds, store) = credentials();
        let sink = Flaky::default();
        let log = flaky_log(
            sink.clone(),
            AuditOptions {
                checkpoint_records: 1000,
                ..options()
            },
        );
        let mut status = log.status();
        log.start("shop/backend-1", creds);
        log.record(&record("/kept")).unwrap();
        let written =
            |what: &str| String::from_utf8_lossy(&sink.written.lock().unwrap()).contains(what);
        for _ in 0..1000 {
            if written("/kept") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(written("/kept"));
        // The disk fills up mid-line: 30 more bytes, then nothing.
        *sink.failing.lock().unwrap() = Some(30);
        log.record(&record("/lost")).unwrap();
        status.wait_for(|s| s.error.is_some()).await.unwrap();
        assert!(
            status
                .borrow()
                .error
                .as_deref()
                .unwrap()
                .contains("no storage space"),
            "{:?}",
            status.borrow()
        );
        // Space again: the next record is written and the failure clears.
        *sink.failing.lock().unwrap() = None;
        log.record(&record("/after")).unwrap();
        status.wait_for(|s| s.error.is_none()).await.unwrap();
        log.close(Duration::from_secs(10)).await;

        let text = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("/lost\""), "{text}");
        let report = verify(&[("out".into(), text.clone())], &check(&store));
        let chain = &report.chains[0];
        assert_eq!(report.status, Status::Verified, "{report:#?}\n{text}");
        assert_eq!(
            report.unreadable.len(),
            1,
            "the half-written line: {report:#?}"
        );
        assert_eq!(chain.dropped, 1);
        assert_eq!(
            chain.findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
            vec![FindingKind::Dropped]
        );
        assert_eq!(status.borrow().dropped, 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_or_refuses_as_configured() {
        for failure in [AuditFailure::Allow, AuditFailure::Deny] {
            let log = flaky_log(
                Flaky::default(),
                AuditOptions {
                    queue: 2,
                    failure,
                    ..options()
                },
            );
            // Not started: nothing drains the queue.
            assert_eq!(log.record(&record("/1")), Ok(()));
            assert_eq!(log.record(&record("/2")), Ok(()));
            let third = log.record(&record("/3"));
            match failure {
                AuditFailure::Allow => assert_eq!(third, Ok(())),
                AuditFailure::Deny => {
                    assert_eq!(third, Err(AuditUnavailable("the queue is full")))
                }
            }
            assert_eq!(log.status().borrow().dropped, 1);
        }
    }

    #[tokio::test]
    async fn with_deny_a_failing_writer_refuses_and_says_so_until_it_recovers() {
        let (creds, _) = credentials();
        let sink = Flaky::default();
        *sink.failing.lock().unwrap() = Some(0);
        let log = flaky_log(
            sink.clone(),
            AuditOptions {
                failure: AuditFailure::Deny,
                ..options()
            },
        );
        let mut status = log.status();
        log.start("shop/backend-1", creds);
        // The epoch's write fails first.
        status.wait_for(|s| s.error.is_some()).await.unwrap();
        assert_eq!(
            log.record(&record("/x")),
            Err(AuditUnavailable("writes are failing"))
        );
        let why = log.refusing().unwrap();
        assert!(
            why.contains("no storage space") && why.contains("deny"),
            "{why}"
        );
        // Refused records never reach the writer: it tries again by itself.
        *sink.failing.lock().unwrap() = None;
        status.wait_for(|s| s.error.is_none()).await.unwrap();
        assert_eq!(log.refusing(), None);
        assert_eq!(log.record(&record("/y")), Ok(()));
        log.close(Duration::from_secs(10)).await;
        let text = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\"path\":\"/y\""), "{text}");
    }
}
