//! The proxy's workers. Each is a single-threaded runtime with its own pools (proxy-to-proxy
//! HTTP/2 connections, app connections); an accepted connection is handed to the worker with
//! the fewest open connections and stays there, with every task it spawns and every pooled
//! connection it uses, as Envoy's and HAProxy's threads own theirs. A work-stealing runtime
//! moved a request's tasks between threads instead: with two threads under keep-alive load
//! the sidecars made ~1.1 context switches per request against ~0.2 with one thread, and
//! spent 40-60% more CPU per request (benches/README.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// One worker: where its connections run, and what they share.
#[derive(Debug)]
pub struct Worker {
    handle: Handle,
    /// Whether the worker runs on another thread than the accept loops (all but the first).
    remote: bool,
    shared: Arc<Shared>,
    open: Arc<AtomicUsize>,
}

/// A connection accepted for a worker.
#[derive(Debug)]
pub struct Assigned<'a> {
    /// The connection, registered with the worker's runtime.
    pub tcp: TcpStream,
    /// The state the worker's connections share.
    pub shared: Arc<Shared>,
    /// Where its task runs.
    pub placement: Placement<'a>,
}

/// Where a connection's task runs, counted as open there until the task ends.
#[derive(Debug)]
pub struct Placement<'a> {
    handle: &'a Handle,
    open: OpenConnection,
}

impl Placement<'_> {
    /// Runs the connection's `task` on its worker (tracked by `tasks`, for shutdown).
    pub fn spawn<F>(self, tasks: &tokio_util::task::TaskTracker, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let open = self.open;
        tasks.spawn_on(
            async move {
                task.await;
                drop(open);
            },
            self.handle,
        );
    }
}

/// Counts a worker's open connection until dropped.
#[derive(Debug)]
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every worker of a proxy; the first runs on the runtime that accepts.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least-loaded worker starts, so ties rotate.
    next: AtomicUsize,
}

impl Workers {
    /// Workers on `runtimes` (the first: the current one), each with the state `shared`
    /// makes for it.
    pub fn new(runtimes: Vec<Handle>, mut shared: impl FnMut() -> Shared) -> Self {
        let workers = runtimes
            .into_iter()
            .enumerate()
            .map(|(i, handle)| Worker {
                handle,
                remote: i > 0,
                shared: Arc::new(shared()),
                open: Arc::default(),
            })
            .collect();
        Self {
            workers,
            next: AtomicUsize::new(0),
        }
    }

    /// Each worker's runtime and shared state, in worker order.
    pub fn each(&self) -> impl Iterator<Item = (&Handle, &Arc<Shared>)> {
        self.workers.iter().map(|w| (&w.handle, &w.shared))
    }

    /// The first worker's state (configuration and limits are the same in every worker).
    pub fn first(&self) -> &Arc<Shared> {
        &self.workers[0].shared
    }

    /// Hands `tcp`, accepted on the first worker's runtime, to the least-loaded worker.
    pub fn assign(&self, tcp: TcpStream) -> std::io::Result<Assigned<'_>> {
        let worker = match self.workers.as_slice() {
            [only] => only,
            workers => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                &workers[least_loaded(workers.len(), start, |i| {
                    workers[i].open.load(Ordering::Relaxed)
                })]
            }
        };
        let tcp = if worker.remote {
            // A socket is registered with one runtime's poller: move it to the worker's.
            let std = tcp.into_std()?;
            let _runtime = worker.handle.enter();
            TcpStream::from_std(std)?
        } else {
            tcp
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        Ok(Assigned {
            tcp,
            shared: worker.shared.clone(),
            placement: Placement {
                handle: &worker.handle,
                open: OpenConnection(worker.open.clone()),
            },
        })
    }
}

/// Which of `n` workers has the fewest open connections (`open(i)`), searching from `start`
/// (modulo `n`) so that ties go round-robin.
pub fn least_loaded(n: usize, start: usize, open: impl Fn(usize) -> usize) -> usize {
    (0..n)
        .map(|i| (start + i) % n)
        .min_by_key(|&i| open(i))
        .unwrap_or(0)
}

/// The worker threads beyond the current one; they stop when this is dropped or stopped.
#[derive(Debug)]
pub struct WorkerThreads {
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerThreads {
    /// Starts up to `count - 1` threads, each running a single-threaded runtime until
    /// stopped; returns every started worker's runtime, the current one first. A thread
    /// that cannot start (a pids limit, say) is logged and the proxy runs with fewer.
    pub async fn start(count: usize) -> (Vec<Handle>, Self) {
        let mut started = Self {
            stop: CancellationToken::new(),
            threads: Vec::new(),
        };
        let mut handles = vec![Handle::current()];
        for i in 1..count.max(1) {
            match started.spawn(i).await {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    tracing::warn!(error = %e, workers = handles.len(), wanted = count, "cannot start another worker thread; running with fewer");
                    break;
                }
            }
        }
        (handles, started)
    }

    /// Starts worker thread `i`; its runtime is built (and dropped) on that thread.
    async fn spawn(&mut self, i: usize) -> std::io::Result<Handle> {
        let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
        let stopped = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("warden-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                if handle_tx.send(Ok(runtime.handle().clone())).is_err() {
                    return;
                }
                runtime.block_on(stopped.cancelled());
                // Whatever still runs there is dropped; a blocking task gets a second to
                // end, not a say in when the proxy exits.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })?;
        self.threads.push(thread);
        handle_rx
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the worker thread ended at start")))
    }

    /// Stops the threads (dropping what their runtimes still run) and waits for them.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// How long dropped worker threads are waited for, at most.
const JOIN_ON_DROP: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for WorkerThreads {
    /// Dropped without [`WorkerThreads::stop`] (the proxy's task dropped with its
    /// runtime): the threads are stopped and waited for all the same, at most
    /// [`JOIN_ON_DROP`], so that what their runtimes drop (the audit log's last handle,
    /// which closes the log) is done before the process can exit. A thread that has not
    /// ended by then is left to end on its own.
    fn drop(&mut self) {
        self.stop.cancel();
        let me = std::thread::current().id();
        let deadline = std::time::Instant::now() + JOIN_ON_DROP;
        for thread in std::mem::take(&mut self.threads) {
            if thread.thread().id() == me {
                continue;
            }
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_worker_wins_and_ties_rotate() {
        let cases: &[(&[usize], usize, usize)] = &[
            (&[0], 0, 0),
            (&[0], 7, 0),
            (&[0, 0], 0, 0),
            (&[0, 0], 1, 1),
            (&[0, 0], 2, 0),
            (&[1, 0], 0, 1),
            (&[0, 1], 1, 0),
            (&[3, 2, 2], 0, 1),
            (&[3, 2, 2], 2, 2),
            (&[5, 9, 1, 1], 3, 3),
            (&[], 4, 0),
        ];
        for &(counts, start, want) in cases {
            let open = |i: usize| counts[i];
            assert_eq!(
                least_loaded(counts.len(), start, open),
                want,
                "{counts:?} from {start}"
            );
        }
    }

    #[tokio::test]
    async fn worker_threads_run_their_tasks_and_stop() {
        let (runtimes, threads) = WorkerThreads::start(3).await;
        assert_eq!(runtimes.len(), 3);
        for (i, runtime) in runtimes.iter().enumerate().skip(1) {
            let name = runtime
                .spawn(async { std::thread::current().name().map(str::to_string) })
                .await
                .unwrap();
            assert_eq!(name, Some(format!("warden-worker-{i}")));
        }
        let pending = runtimes[1].spawn(std::future::pending::<()>());
        threads.stop().await;
        // The worker's runtime is gone, and what it still ran with it.
        assert!(pending.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn dropped_worker_threads_are_stopped_before_the_drop_returns() {
        /// Notes when what a worker still ran is dropped.
        struct Held(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (runtimes, threads) = WorkerThreads::start(2).await;
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Held(dropped.clone());
        let (running_tx, running_rx) = tokio::sync::oneshot::channel();
        let _task = runtimes[1].spawn(async move {
            let _held = held;
            let _ = running_tx.send(());
            std::future::pending::<()>().await;
        });
        running_rx.await.unwrap();
        drop(threads);
        assert!(
            dropped.load(Ordering::SeqCst),
            "what the worker ran was dropped before the drop returned"
        );
    }
}
