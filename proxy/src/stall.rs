//! The HTTP/2 stream idle timeout: a guard around each stream's task (`h2_server`) that
//! resets a stream with no activity in either direction for the idle timeout (as Envoy's
//! `stream_idle_timeout`). Without it, a peer that never opens its flow-control window holds
//! each of its streams, and the app connection behind it, forever.
//!
//! Activity is the stream's task being woken by anything it waits on (request or response
//! body data, flow-control capacity, a reset), a request body that pipes by a task of its
//! own included (it wakes the stream's task as it moves: `BodyPipe::unless_cancelled`);
//! when only the timer wakes it, the stream is dropped, which resets it (`RST_STREAM`) and
//! closes the app side.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Notes that the guarded future was woken, then wakes the task.
struct Activity {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Activity {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// A future that is dropped once nothing but its idle timer has woken it for `idle`. The
/// future is boxed: a task's whole state is copied as it starts and ends (tokio moves a
/// task's stage by value), so a small one with the stream's state behind a pointer costs
/// less than an allocation saved.
pub struct StallGuard<F> {
    fut: Pin<Box<F>>,
    idle: Duration,
    /// When the guarded future last ran because something it waits on woke it.
    last_activity: Instant,
    /// Fires at `last_activity + idle` at the earliest; moved on only when it fires, so a
    /// busy stream costs one timer registration, not one per wake-up.
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    waker: Waker,
}

impl<F: Future<Output = ()>> StallGuard<F> {
    /// Guards `fut` with an idle timeout of `idle`.
    pub fn new(fut: F, idle: Duration) -> Self {
        let activity = Arc::new(Activity {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let now = Instant::now();
        Self {
            fut: Box::pin(fut),
            idle,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            waker: Waker::from(activity.clone()),
            activity,
        }
    }
}

impl<F: Future<Output = ()>> Future for StallGuard<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut task = self.activity.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let this = &mut *self;
        if this.activity.woken.swap(false, Ordering::AcqRel) {
            let mut inner = Context::from_waker(&this.waker);
            if this.fut.as_mut().poll(&mut inner).is_ready() {
                return Poll::Ready(());
            }
            this.last_activity = Instant::now();
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let deadline = this.last_activity + this.idle;
            if deadline <= Instant::now() {
                tracing::debug!(idle_s = this.idle.as_secs(), "HTTP/2 stream idle; reset");
                return Poll::Ready(());
            }
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_future_that_keeps_being_woken_runs_and_a_silent_one_is_dropped() {
        // Woken every 300 ms, done after 10 wakes: never idle for a second.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let busy = StallGuard::new(
            async move {
                for _ in 0..10 {
                    rx.recv().await;
                }
                done.store(true, Ordering::SeqCst);
            },
            Duration::from_secs(1),
        );
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tx.send(()).await;
            }
        });
        busy.await;
        feeder.await.unwrap();
        assert!(finished.load(Ordering::SeqCst), "the busy future completed");

        // Never woken: dropped after the idle timeout, not completed.
        let completed = Arc::new(AtomicBool::new(false));
        let flag = completed.clone();
        let started = Instant::now();
        StallGuard::new(
            async move {
                std::future::pending::<()>().await;
                flag.store(true, Ordering::SeqCst);
            },
            Duration::from_secs(1),
        )
        .await;
        assert!(!completed.load(Ordering::SeqCst));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
