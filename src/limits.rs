//! Per-client resource limits a hostile or broken client must not get past, with Redis'
//! names, defaults and syntax: `client-query-buffer-limit` (unparsed input),
//! `client-output-buffer-limit` (replies queued for a client that does not read them, per
//! class: normal, replica, pubsub) and `timeout` (idle clients). `CONFIG SET` changes them
//! at run time (atomics: a connection reads them once per read, never per request). The
//! disconnections they cause are counted here (`INFO stats`, `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Cluster bus listener figures (the bus task has no `Shared`; one server per process).
pub static BUS_ACCEPT_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static BUS_CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Most metrics connections served at once; more are answered 503 and closed.
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// Most inbound cluster bus links at once (a region cluster has at most ~1000 nodes).
pub const MAX_BUS_CONNECTIONS: usize = 2048;
/// A metrics connection must send its request within this.
pub const METRICS_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// An inbound bus link silent this long is closed (peers ping every link at least every
/// half node timeout; its sender reconnects).
pub const BUS_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Redis' default `client-query-buffer-limit`: 1gb.
pub const DEFAULT_QUERY_BUFFER_LIMIT: u64 = 1024 * 1024 * 1024;
/// Redis' default `client-output-buffer-limit`.
pub const DEFAULT_OUTPUT_BUFFER_LIMIT: &str =
    "normal 0 0 0 replica 256mb 64mb 60 pubsub 32mb 8mb 60";

/// A client class of `client-output-buffer-limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputClass {
    Normal = 0,
    Replica = 1,
    Pubsub = 2,
}

impl OutputClass {
    const ALL: [OutputClass; 3] = [
        OutputClass::Normal,
        OutputClass::Replica,
        OutputClass::Pubsub,
    ];

    fn name(self) -> &'static str {
        match self {
            OutputClass::Normal => "normal",
            OutputClass::Replica => "slave",
            OutputClass::Pubsub => "pubsub",
        }
    }

    fn parse(s: &str) -> Option<OutputClass> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Some(OutputClass::Normal),
            "replica" | "slave" => Some(OutputClass::Replica),
            "pubsub" => Some(OutputClass::Pubsub),
            _ => None,
        }
    }
}

/// One class's output buffer limit: over `hard` bytes the client is closed at once; over
/// `soft` bytes for `soft_secs` seconds in a row, too. 0 disables a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputLimit {
    pub hard: u64,
    pub soft: u64,
    pub soft_secs: u64,
}

impl OutputLimit {
    /// Whether a client with `pending` bytes queued, over the soft limit since
    /// `*soft_since` (ms; 0: not over it), must be closed at `now`. Updates `soft_since`.
    pub fn exceeded(&self, pending: u64, soft_since: &mut u64, now: u64) -> bool {
        if self.hard > 0 && pending >= self.hard {
            return true;
        }
        if self.soft > 0 && pending >= self.soft {
            if *soft_since == 0 {
                *soft_since = now.max(1);
            }
            return now.saturating_sub(*soft_since) >= self.soft_secs.saturating_mul(1000);
        }
        *soft_since = 0;
        false
    }
}

/// Parse Redis' `client-output-buffer-limit` value: one or more `<class> <hard> <soft>
/// <soft seconds>` groups (memory units allowed). Classes not named keep `current`'s.
pub fn parse_output_limits(
    value: &str,
    current: [OutputLimit; 3],
) -> Result<[OutputLimit; 3], &'static str> {
    let words: Vec<&str> = value.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(4) {
        return Err("Wrong number of arguments in buffer limit configuration.");
    }
    let mut out = current;
    for g in words.chunks(4) {
        let Some(class) = OutputClass::parse(g[0]) else {
            return Err("Invalid client class specified in buffer limit configuration.");
        };
        let hard = crate::config::parse_memory(g[1]);
        let soft = crate::config::parse_memory(g[2]);
        let secs = g[3].parse::<u64>().ok();
        let (Some(hard), Some(soft), Some(soft_secs)) = (hard, soft, secs) else {
            return Err(
                "Error in hard, soft or soft_seconds setting in buffer limit configuration.",
            );
        };
        out[class as usize] = OutputLimit {
            hard,
            soft,
            soft_secs,
        };
    }
    Ok(out)
}

/// Redis 7's `enable-debug-command` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugCommand {
    No,
    Yes,
    Local,
}

impl DebugCommand {
    pub fn parse(s: &str) -> Option<DebugCommand> {
        match s.to_ascii_lowercase().as_str() {
            "no" => Some(DebugCommand::No),
            "yes" => Some(DebugCommand::Yes),
            "local" => Some(DebugCommand::Local),
            _ => None,
        }
    }
}

/// The settings and counters; one per server, in `Shared`.
pub struct ClientLimits {
    /// `client-query-buffer-limit`: most bytes of unparsed input a client may have.
    pub query_buffer: AtomicU64,
    /// `timeout`: seconds of idleness after which a client is closed (0: never).
    pub timeout_secs: AtomicU64,
    /// `client-output-buffer-limit`, per [`OutputClass`]: hard, soft, soft seconds.
    output: [[AtomicU64; 3]; 3],
    /// `enable-debug-command` (start-up only): `DEBUG` is served to everyone (`yes`), to
    /// loopback clients (`local`) or to nobody (`no`, the default).
    pub debug_command: DebugCommand,
    /// Clients closed for going over `client-query-buffer-limit`.
    pub query_buffer_disconnections: AtomicU64,
    /// Clients (and replica links) closed for going over `client-output-buffer-limit`.
    pub output_buffer_disconnections: AtomicU64,
    /// Clients closed by `timeout`.
    pub idle_disconnections: AtomicU64,
    /// Connection tasks that panicked (their slot, entry and WATCHes released).
    pub connection_panics: AtomicU64,
    /// Accepts that failed (EMFILE and the like), on every listener.
    pub accept_errors: AtomicU64,
    /// Metrics or cluster bus connections refused at their concurrency bound, or closed
    /// for sending nothing in time.
    pub service_connections_refused: AtomicU64,
}

impl ClientLimits {
    pub fn new(
        query_buffer: u64,
        timeout_secs: u64,
        output: [OutputLimit; 3],
        debug_command: DebugCommand,
    ) -> ClientLimits {
        let l = ClientLimits {
            query_buffer: AtomicU64::new(query_buffer),
            timeout_secs: AtomicU64::new(timeout_secs),
            output: Default::default(),
            debug_command,
            query_buffer_disconnections: AtomicU64::new(0),
            output_buffer_disconnections: AtomicU64::new(0),
            idle_disconnections: AtomicU64::new(0),
            connection_panics: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            service_connections_refused: AtomicU64::new(0),
        };
        l.set_output(output);
        l
    }

    pub fn output(&self, class: OutputClass) -> OutputLimit {
        let [h, s, t] = &self.output[class as usize];
        OutputLimit {
            hard: h.load(Relaxed),
            soft: s.load(Relaxed),
            soft_secs: t.load(Relaxed),
        }
    }

    pub fn outputs(&self) -> [OutputLimit; 3] {
        OutputClass::ALL.map(|c| self.output(c))
    }

    pub fn set_output(&self, limits: [OutputLimit; 3]) {
        for (slot, l) in self.output.iter().zip(limits) {
            slot[0].store(l.hard, Relaxed);
            slot[1].store(l.soft, Relaxed);
            slot[2].store(l.soft_secs, Relaxed);
        }
    }

    /// `CONFIG GET client-output-buffer-limit`, as Redis prints it (bytes, `slave`).
    pub fn output_text(&self) -> String {
        OutputClass::ALL
            .iter()
            .map(|&c| {
                let l = self.output(c);
                format!("{} {} {} {}", c.name(), l.hard, l.soft, l.soft_secs)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `CONFIG RESETSTAT`.
    pub fn reset_stats(&self) {
        for c in [
            &self.query_buffer_disconnections,
            &self.output_buffer_disconnections,
            &self.idle_disconnections,
            &self.accept_errors,
            &self.service_connections_refused,
            &BUS_ACCEPT_ERRORS,
            &BUS_CONNECTIONS_REFUSED,
        ] {
            c.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_syntax() {
        let d = parse_output_limits(DEFAULT_OUTPUT_BUFFER_LIMIT, Default::default()).unwrap();
        assert_eq!(d[0], OutputLimit::default());
        assert_eq!(
            d[1],
            OutputLimit {
                hard: 256 << 20,
                soft: 64 << 20,
                soft_secs: 60
            }
        );
        let l = ClientLimits::new(0, 0, d, DebugCommand::No);
        assert_eq!(
            l.output_text(),
            "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"
        );
        let e = parse_output_limits("normal 1mb 0 0 bogus 1 1 1", d);
        assert!(e.is_err());
        assert!(parse_output_limits("normal 1mb 0", d).is_err());
        assert!(parse_output_limits("normal x 0 0", d).is_err());
        let n = parse_output_limits("normal 1mb 512kb 10", d).unwrap();
        assert_eq!(n[0].hard, 1 << 20);
        assert_eq!(n[1], d[1]);
    }

    #[test]
    fn soft_limit_needs_its_seconds() {
        let l = OutputLimit {
            hard: 100,
            soft: 10,
            soft_secs: 2,
        };
        let mut since = 0;
        assert!(!l.exceeded(5, &mut since, 1000));
        assert!(!l.exceeded(20, &mut since, 1000));
        assert!(!l.exceeded(20, &mut since, 2500));
        assert!(l.exceeded(20, &mut since, 3000));
        assert!(!l.exceeded(5, &mut since, 3100));
        assert_eq!(since, 0);
        assert!(l.exceeded(100, &mut since, 3200));
    }
}
