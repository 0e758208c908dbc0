//! The CPU slice the kernel gives the proxy's threads (`cpu_slice` in the configuration).
//!
//! Linux's EEVDF scheduler (6.6 and later) runs each task for a slice and orders tasks by a
//! deadline one slice past when they became eligible; since 6.12 a task may ask for its own
//! slice (`sched_setattr`, `sched_runtime` under the fair policies, 0.1-100 ms). A proxy
//! woken by a packet with a short slice gets an early deadline, so it runs before a busy
//! neighbour finishes a default slice (0.7 ms times 1 + log2 of the CPUs, 1.4 ms on two), and
//! its own bursts (tens of microseconds per request) fit well inside 0.1 ms. Threads inherit
//! the slice, so it is set once, on the main thread, before any runtime starts.

use std::time::Duration;

/// The shortest slice the kernel takes (it clamps shorter ones).
pub const MIN: Duration = Duration::from_micros(100);
/// The longest slice the kernel takes (it clamps longer ones).
pub const MAX: Duration = Duration::from_millis(100);

/// Why the slice was not set.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    /// The kernel refused the call (a seccomp profile, say).
    #[error("sched_setattr refused: {0}")]
    Refused(std::io::Error),
    /// The thread's attributes could not be read.
    #[error("sched_getattr: {0}")]
    Unreadable(std::io::Error),
    /// The thread runs under a real-time, deadline or other non-fair policy, which has no slice.
    #[error("the thread runs under scheduling policy {0}, which has no slice (only SCHED_OTHER, SCHED_BATCH and SCHED_IDLE do)")]
    NotFair(u32),
    /// The kernel took the call and ignored the slice (before Linux 6.12).
    #[error("this kernel ignores a task's own slice (Linux 6.12 and later take it)")]
    Unsupported,
}

/// `struct sched_attr` of `sched_setattr(2)`, version 1 (56 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// The fair policies: SCHED_OTHER, SCHED_BATCH, SCHED_IDLE.
const FAIR_POLICIES: [u32; 3] = [0, 3, 5];

/// Gives the calling thread, and every thread it starts afterwards, a CPU slice of `slice`
/// (between [`MIN`] and [`MAX`]), keeping its policy and nice value.
pub fn set(slice: Duration) -> Result<(), SliceError> {
    let mut attr = current().map_err(SliceError::Unreadable)?;
    if !FAIR_POLICIES.contains(&attr.policy) {
        return Err(SliceError::NotFair(attr.policy));
    }
    let wanted = u64::try_from(slice.clamp(MIN, MAX).as_nanos()).unwrap_or(u64::MAX);
    attr.size = size_of::<SchedAttr>() as u32;
    attr.flags = 0;
    attr.runtime = wanted;
    // SAFETY: `attr` is a valid, initialised sched_attr of the size it declares.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        return Err(SliceError::Refused(std::io::Error::last_os_error()));
    }
    // Kernels before 6.12 accept the call and neither keep nor report the slice.
    match current() {
        Ok(now) if now.runtime == wanted => Ok(()),
        Ok(_) => Err(SliceError::Unsupported),
        Err(e) => Err(SliceError::Unreadable(e)),
    }
}

/// The calling thread's own slice, if it has one the kernel reports (Linux 6.12 and later
/// report the slice in force, custom or not).
pub fn get() -> std::io::Result<Option<Duration>> {
    let attr = current()?;
    Ok((attr.runtime > 0).then(|| Duration::from_nanos(attr.runtime)))
}

/// The calling thread's scheduling attributes.
fn current() -> std::io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel writes at most `size` bytes into `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `/proc/thread-self/sched` says the calling thread's slice is, in nanoseconds: the
    /// scheduler's own view, independent of `sched_getattr`.
    fn slice_in_proc() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = text.lines().find(|l| l.starts_with("se.slice"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    }

    /// Whether the running kernel is 6.12 or later (its release, as `uname -r` prints it).
    fn kernel_takes_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        (major, minor) >= (6, 12)
    }

    #[test]
    fn a_thread_and_the_threads_it_starts_get_the_slice() {
        std::thread::spawn(|| {
            let before = slice_in_proc();
            match set(Duration::from_micros(100)) {
                Ok(()) => {
                    assert!(kernel_takes_slices());
                    assert_eq!(get().unwrap(), Some(Duration::from_micros(100)));
                    assert_eq!(slice_in_proc(), Some(100_000), "was {before:?}");
                    let child = std::thread::spawn(|| (get().unwrap(), slice_in_proc()));
                    assert_eq!(
                        child.join().unwrap(),
                        (Some(Duration::from_micros(100)), Some(100_000)),
                        "a thread started afterwards inherits the slice"
                    );
                }
                Err(SliceError::Unsupported) => assert!(!kernel_takes_slices()),
                Err(e) => panic!("{e}"),
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn slices_out_of_range_are_clamped_as_the_kernel_does() {
        std::thread::spawn(|| {
            if !kernel_takes_slices() {
                return;
            }
            set(Duration::from_secs(1)).unwrap();
            assert_eq!(get().unwrap(), Some(MAX));
            set(Duration::from_micros(1)).unwrap();
            assert_eq!(get().unwrap(), Some(MIN));
        })
        .join()
        .unwrap();
    }
}
