//! What Redis keeps about the commands it ran: per-command calls, time, failed and rejected
//! calls (`INFO commandstats`), error replies by their first word (`INFO errorstats`,
//! `total_error_replies`), the slow log (`SLOWLOG`, `slowlog-log-slower-than`,
//! `slowlog-max-len`) and the latency monitor (`LATENCY`, `latency-monitor-threshold`).
//!
//! The hot path: every command reads the TSC twice (`quanta`, a few ns each) and bumps four
//! counters in a table of its own I/O thread (single writer: a plain load and store, no
//! locked instruction, no shared cache line). `INFO` sums the threads' tables; `CONFIG
//! RESETSTAT` records the sums as a baseline (a writer never races a reset). The slow log
//! and the latency monitor take their lock only for a command over their threshold; error
//! replies take one lock each.

use crate::frame::Reply;
use bytes::Bytes;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Redis' bounds on what one slow-log entry keeps of a command.
const SLOWLOG_ENTRY_MAX_ARGC: usize = 32;
const SLOWLOG_ENTRY_MAX_STRING: usize = 128;
/// Redis keeps the last 160 samples of each latency event.
const LATENCY_HISTORY_LEN: usize = 160;
/// Error kinds kept apart in errorstats (Redis' bound): the rest are counted as `ERR`.
const MAX_ERROR_KINDS: usize = 128;

/// One command's counters in one thread's table.
#[derive(Default)]
struct Cell {
    calls: AtomicU64,
    nanos: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

impl Cell {
    /// Single writer (the owning thread): no read-modify-write instruction needed.
    #[inline]
    fn bump(c: &AtomicU64, by: u64) {
        c.store(c.load(Relaxed).wrapping_add(by), Relaxed);
    }

    fn read(&self) -> [u64; 4] {
        [
            self.calls.load(Relaxed),
            self.nanos.load(Relaxed),
            self.failed.load(Relaxed),
            self.rejected.load(Relaxed),
        ]
    }
}

struct Table {
    cells: Box<[Cell]>,
}

thread_local! {
    /// This thread's tables, one per `CmdStats` (a process may run several servers in
    /// tests), by the instance's id.
    static TABLES: RefCell<Vec<(u64, Arc<Table>)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One slow-log entry (Redis' layout).
#[derive(Clone, Debug)]
pub struct SlowEntry {
    pub id: u64,
    pub unix_secs: u64,
    pub micros: u64,
    pub args: Vec<Bytes>,
    pub addr: String,
    pub name: Bytes,
}

/// One latency event's samples, newest last, and its all-time maximum.
#[derive(Default)]
struct LatencyEvent {
    samples: VecDeque<(u64, u64)>,
    max_ms: u64,
}

pub struct CmdStats {
    id: u64,
    commands: usize,
    clock: quanta::Clock,
    tables: Mutex<Vec<Arc<Table>>>,
    /// Sums at the last `CONFIG RESETSTAT`, per command.
    base: Mutex<Vec<[u64; 4]>>,
    errors: Mutex<HashMap<String, u64>>,
    total_errors: AtomicU64,
    /// Microseconds; negative: off; 0: every command.
    pub slower_than_us: AtomicI64,
    pub slowlog_max_len: AtomicU64,
    slowlog: Mutex<(u64, VecDeque<SlowEntry>)>,
    /// Milliseconds; 0: the latency monitor is off.
    pub latency_threshold_ms: AtomicU64,
    latency: Mutex<BTreeMap<&'static str, LatencyEvent>>,
}

impl CmdStats {
    pub fn new(
        commands: usize,
        slower_than_us: i64,
        slowlog_max_len: u64,
        latency_threshold_ms: u64,
    ) -> CmdStats {
        CmdStats {
            id: NEXT_ID.fetch_add(1, Relaxed),
            commands,
            clock: quanta::Clock::new(),
            tables: Mutex::new(Vec::new()),
            base: Mutex::new(vec![[0; 4]; commands]),
            errors: Mutex::new(HashMap::new()),
            total_errors: AtomicU64::new(0),
            slower_than_us: AtomicI64::new(slower_than_us),
            slowlog_max_len: AtomicU64::new(slowlog_max_len),
            slowlog: Mutex::new((0, VecDeque::new())),
            latency_threshold_ms: AtomicU64::new(latency_threshold_ms),
            latency: Mutex::new(BTreeMap::new()),
        }
    }

    /// A TSC reading to pass to [`CmdStats::ran`].
    #[inline]
    pub fn start(&self) -> u64 {
        self.clock.raw()
    }

    #[inline]
    fn with_cell(&self, id: u16, f: impl FnOnce(&Cell)) {
        TABLES.with(|t| {
            let mut t = t.borrow_mut();
            let table = match t.iter().find(|(i, _)| *i == self.id) {
                Some((_, table)) => table.clone(),
                None => {
                    let table = Arc::new(Table {
                        cells: (0..self.commands).map(|_| Cell::default()).collect(),
                    });
                    self.tables.lock().push(table.clone());
                    t.push((self.id, table.clone()));
                    table
                }
            };
            if let Some(c) = table.cells.get(usize::from(id)) {
                f(c);
            }
        });
    }

    /// A command ran (its handler was called) from `t0` ([`CmdStats::start`]) until now.
    #[inline]
    pub fn ran(&self, id: u16, t0: u64, failed: bool, slow: SlowInfo<'_>) {
        let nanos = self.clock.delta_as_nanos(t0, self.clock.raw());
        self.with_cell(id, |c| {
            Cell::bump(&c.calls, 1);
            Cell::bump(&c.nanos, nanos);
            if failed {
                Cell::bump(&c.failed, 1);
            }
        });
        let micros = nanos / 1000;
        let slower = self.slower_than_us.load(Relaxed);
        if slower >= 0 && micros >= slower as u64 {
            self.log_slow(micros, slow);
        }
        let threshold = self.latency_threshold_ms.load(Relaxed);
        if threshold > 0 && micros / 1000 >= threshold {
            let event = if slow.fast { "fast-command" } else { "command" };
            self.add_latency_sample(event, micros / 1000);
        }
    }

    /// A command refused before it ran (arity, permissions, routing, OOM…).
    #[inline]
    pub fn rejected(&self, id: u16) {
        self.with_cell(id, |c| Cell::bump(&c.rejected, 1));
    }

    /// An error reply went out: counted by its first word (`ERR`, `WRONGTYPE`, `MOVED`…).
    pub fn error_reply(&self, text: &str) {
        self.total_errors.fetch_add(1, Relaxed);
        let kind = text.split(' ').next().unwrap_or("ERR");
        let mut e = self.errors.lock();
        if let Some(n) = e.get_mut(kind) {
            *n += 1;
        } else if e.len() < MAX_ERROR_KINDS {
            e.insert(kind.to_string(), 1);
        } else {
            *e.entry("ERR".to_string()).or_insert(0) += 1;
        }
    }

    pub fn total_error_replies(&self) -> u64 {
        self.total_errors.load(Relaxed)
    }

    #[cold]
    fn log_slow(&self, micros: u64, s: SlowInfo<'_>) {
        let max = self.slowlog_max_len.load(Relaxed) as usize;
        let argc = s.args.len();
        let mut args: Vec<Bytes> = Vec::with_capacity(argc.min(SLOWLOG_ENTRY_MAX_ARGC));
        for (i, a) in s.args.iter().enumerate() {
            if i + 1 == SLOWLOG_ENTRY_MAX_ARGC && argc > SLOWLOG_ENTRY_MAX_ARGC {
                args.push(Bytes::from(format!(
                    "... ({} more arguments)",
                    argc - SLOWLOG_ENTRY_MAX_ARGC + 1
                )));
                break;
            }
            if a.len() > SLOWLOG_ENTRY_MAX_STRING {
                let mut v = a[..SLOWLOG_ENTRY_MAX_STRING].to_vec();
                v.extend_from_slice(
                    format!("... ({} more bytes)", a.len() - SLOWLOG_ENTRY_MAX_STRING).as_bytes(),
                );
                args.push(Bytes::from(v));
            } else {
                args.push(Bytes::copy_from_slice(a));
            }
        }
        let mut log = self.slowlog.lock();
        let id = log.0;
        log.0 += 1;
        log.1.push_front(SlowEntry {
            id,
            unix_secs: crate::util::now_micros() / 1_000_000,
            micros,
            args,
            addr: s.addr.to_string(),
            name: s.name.cloned().unwrap_or_default(),
        });
        log.1.truncate(max);
    }

    fn add_latency_sample(&self, event: &'static str, ms: u64) {
        let now = crate::util::now_micros() / 1_000_000;
        let mut l = self.latency.lock();
        let e = l.entry(event).or_default();
        e.max_ms = e.max_ms.max(ms);
        // One sample per second, the greatest (as Redis).
        match e.samples.back_mut() {
            Some((t, v)) if *t == now => *v = (*v).max(ms),
            _ => {
                e.samples.push_back((now, ms));
                if e.samples.len() > LATENCY_HISTORY_LEN {
                    e.samples.pop_front();
                }
            }
        }
    }

    /// Per command id: `[calls, nanoseconds, failed, rejected]` since the last reset.
    pub fn per_command(&self) -> Vec<[u64; 4]> {
        let mut sums = vec![[0u64; 4]; self.commands];
        for t in self.tables.lock().iter() {
            for (s, c) in sums.iter_mut().zip(t.cells.iter()) {
                for (x, y) in s.iter_mut().zip(c.read()) {
                    *x = x.wrapping_add(y);
                }
            }
        }
        let base = self.base.lock();
        for (s, b) in sums.iter_mut().zip(base.iter()) {
            for (x, y) in s.iter_mut().zip(b) {
                *x = x.saturating_sub(*y);
            }
        }
        sums
    }

    /// Error kinds and counts, sorted by kind.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .errors
            .lock()
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// `CONFIG RESETSTAT`: commandstats and errorstats start again.
    pub fn reset(&self) {
        let mut sums = vec![[0u64; 4]; self.commands];
        for t in self.tables.lock().iter() {
            for (s, c) in sums.iter_mut().zip(t.cells.iter()) {
                for (x, y) in s.iter_mut().zip(c.read()) {
                    *x = x.wrapping_add(y);
                }
            }
        }
        *self.base.lock() = sums;
        self.errors.lock().clear();
        self.total_errors.store(0, Relaxed);
    }

    pub fn slowlog_get(&self, count: Option<usize>) -> Vec<SlowEntry> {
        let log = self.slowlog.lock();
        let n = count.unwrap_or(10).min(log.1.len());
        log.1.iter().take(n).cloned().collect()
    }

    pub fn slowlog_len(&self) -> usize {
        self.slowlog.lock().1.len()
    }

    pub fn slowlog_reset(&self) {
        self.slowlog.lock().1.clear();
    }

    /// `LATENCY LATEST`: per event, its latest sample's time and value, and its maximum.
    pub fn latency_latest(&self) -> Vec<(&'static str, u64, u64, u64)> {
        self.latency
            .lock()
            .iter()
            .filter_map(|(name, e)| {
                let &(t, v) = e.samples.back()?;
                Some((*name, t, v, e.max_ms))
            })
            .collect()
    }

    pub fn latency_history(&self, event: &str) -> Vec<(u64, u64)> {
        self.latency
            .lock()
            .get(event)
            .map(|e| e.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// `LATENCY RESET [event…]`: how many events were reset.
    pub fn latency_reset(&self, events: &[&[u8]]) -> usize {
        let mut l = self.latency.lock();
        if events.is_empty() {
            let n = l.len();
            l.clear();
            return n;
        }
        let before = l.len();
        l.retain(|name, _| {
            !events
                .iter()
                .any(|e| e.eq_ignore_ascii_case(name.as_bytes()))
        });
        before - l.len()
    }
}

/// What the slow log keeps of a command (only read when it is slow).
#[derive(Clone, Copy)]
pub struct SlowInfo<'a> {
    pub args: &'a [&'a [u8]],
    pub addr: &'a str,
    pub name: Option<&'a Bytes>,
    /// A `FAST` command (the latency monitor's `fast-command` event).
    pub fast: bool,
}

/// An error reply's text, for [`CmdStats::error_reply`].
pub fn error_text(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::Error(e) => Some(match e {
            Cow::Borrowed(s) => s,
            Cow::Owned(s) => s.as_str(),
        }),
        _ => None,
    }
}
