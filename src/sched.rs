//! How the replication thread is scheduled against the client threads.
//!
//! Replication is asynchronous: a client's reply never waits for it, but its work (draining
//! shard logs, QUIC crypto and packets, applying peers' batches) competes with the client
//! threads for the cores. A thread at a lower nice value still wakes up into a core a client
//! thread is about to need. `background` (the default) runs it as `SCHED_IDLE`: it gets every
//! idle cycle, never preempts a client thread and is preempted by one at once. On two cores
//! with three regions this took the replicated node's local p99 from about 1.15× that of a
//! node without replication to about 0.95× (`bench/regions.py`).
//!
//! An idle-class thread starves while the clients keep every core busy, so the loop reports
//! how late it runs ([`Governor::observe`]): late by [`STARVED_MS`] or more, it returns to
//! the normal class for [`BOOST_MS`] and catches up (replication lag stays bounded under
//! saturation). Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or a large enough `RLIMIT_NICE`;
//! a throwaway thread tries it first, and where it fails the thread uses `SCHED_BATCH`
//! instead (a fair share, but no wake-up preemption of the clients), never a class it could
//! not leave.

use serde::Deserialize;

/// `[replication] thread-priority`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThreadPriority {
    /// Idle class while it keeps up (see the module docs).
    #[default]
    Background,
    /// The normal class, 5 nicer than the process.
    Normal,
}

/// Lateness of the replication loop that counts as starved.
pub const STARVED_MS: u64 = 10;
/// How long a starved replication thread stays in the normal class.
pub const BOOST_MS: u64 = 1_000;
/// How much nicer than the process (whatever nice value it was started with) the
/// replication thread runs in the normal and batch classes: when it and a client thread
/// want the same core, the client's requests win.
const NICE: i32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Normal,
    Batch,
    Idle,
}

/// The replication thread's scheduling class, adjusted to how late its loop runs.
pub struct Governor {
    /// `SCHED_IDLE` while not starved (`None`: a fixed class).
    idle: bool,
    boosted_until: Option<u64>,
}

impl Governor {
    /// Set the calling thread's class for `priority` (call on the replication thread).
    pub fn start(priority: ThreadPriority) -> Governor {
        let fixed = Governor {
            idle: false,
            boosted_until: None,
        };
        if nicer_by(NICE).is_err() {
            tracing::debug!("cannot lower the replication thread's priority");
        }
        if priority == ThreadPriority::Normal {
            return fixed;
        }
        if can_leave_idle() && set_class(Class::Idle).is_ok() {
            tracing::info!("replication thread: idle class, normal when starved");
            return Governor {
                idle: true,
                boosted_until: None,
            };
        }
        match set_class(Class::Batch) {
            Ok(()) => tracing::info!("replication thread: batch class"),
            Err(e) => tracing::debug!(error = %e, "replication thread: normal class"),
        }
        fixed
    }

    /// The loop ran `late_ms` after the deadline it slept until (0 when woken earlier).
    pub fn observe(&mut self, now_ms: u64, late_ms: u64) {
        if !self.idle {
            return;
        }
        if late_ms >= STARVED_MS {
            if self.boosted_until.is_none() {
                if let Err(e) = set_class(Class::Normal) {
                    tracing::warn!(error = %e, "replication thread starved, cannot leave the idle class");
                    return;
                }
                tracing::debug!(late_ms, "replication thread starved: normal class");
            }
            self.boosted_until = Some(now_ms + BOOST_MS);
        } else if self.boosted_until.is_some_and(|t| now_ms >= t) && set_class(Class::Idle).is_ok()
        {
            self.boosted_until = None;
        }
    }

    /// In the normal class because it was starved.
    pub fn boosted(&self) -> bool {
        self.boosted_until.is_some()
    }
}

/// Whether a thread of this process may leave `SCHED_IDLE` once in it: tried on a
/// throwaway thread, at the replication thread's nice value.
fn can_leave_idle() -> bool {
    std::thread::Builder::new()
        .name("meridian-sched-probe".into())
        .spawn(|| {
            nicer_by(NICE).is_ok()
                && set_class(Class::Idle).is_ok()
                && set_class(Class::Normal).is_ok()
        })
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(false)
}

#[cfg(target_os = "linux")]
fn set_class(class: Class) -> std::io::Result<()> {
    let policy = match class {
        Class::Normal => libc::SCHED_OTHER,
        Class::Batch => libc::SCHED_BATCH,
        Class::Idle => libc::SCHED_IDLE,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the calling
    // thread (on Linux the class is per thread).
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raise the calling thread's nice value by `by` over its current one (at most 19).
#[cfg(target_os = "linux")]
fn nicer_by(by: i32) -> std::io::Result<()> {
    // On Linux a nice value is per thread: PRIO_PROCESS with this thread's id. getpriority
    // may return -1 as a value, so errno tells an error apart.
    // SAFETY: plain syscalls on the calling thread; errno is this thread's.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + by).min(19))
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_class(_: Class) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(not(target_os = "linux"))]
fn nicer_by(_: i32) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn class() -> libc::c_int {
        // SAFETY: no arguments but the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// On a thread of its own: the class is per thread.
    fn on_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::spawn(f).join().expect("test thread")
    }

    #[test]
    fn background_runs_idle_and_a_starved_loop_returns_to_normal_until_it_keeps_up() {
        let classes = on_thread(|| {
            let mut g = Governor::start(ThreadPriority::Background);
            let start = class();
            g.observe(1_000, STARVED_MS - 1);
            let on_time = (class(), g.boosted());
            g.observe(2_000, STARVED_MS);
            let starved = (class(), g.boosted());
            g.observe(2_000 + BOOST_MS / 2, 0);
            let catching_up = class();
            g.observe(2_000 + BOOST_MS, 0);
            let caught_up = (class(), g.boosted());
            (start, on_time, starved, catching_up, caught_up)
        });
        if !can_leave_idle() {
            // Without CAP_SYS_NICE or RLIMIT_NICE: batch, never a class it cannot leave.
            assert_eq!(classes.0, libc::SCHED_BATCH);
            return;
        }
        assert_eq!(classes.0, libc::SCHED_IDLE);
        assert_eq!(classes.1, (libc::SCHED_IDLE, false));
        assert_eq!(classes.2, (libc::SCHED_OTHER, true));
        assert_eq!(classes.3, libc::SCHED_OTHER);
        assert_eq!(classes.4, (libc::SCHED_IDLE, false));
    }

    #[test]
    fn normal_priority_stays_in_the_normal_class() {
        let classes = on_thread(|| {
            let mut g = Governor::start(ThreadPriority::Normal);
            g.observe(1_000, 10 * STARVED_MS);
            (class(), g.boosted())
        });
        assert_eq!(classes, (libc::SCHED_OTHER, false));
    }
}
