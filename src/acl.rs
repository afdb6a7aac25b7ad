//! Users, passwords and permissions, Redis' way (ACL rules, `requirepass`, the aclfile).
//!
//! - A [`User`] is immutable once built: `ACL SETUSER` applies its rules to a copy and
//!   publishes it (all or nothing, as Redis), bumping [`Acl::version`]. A connection keeps an
//!   `Arc<User>` and the version it saw; when the version moved it looks its user up again
//!   (by name and uid: a user deleted, or deleted and created again, closes the
//!   connection, as `ACL DELUSER` does in Redis).
//! - Permissions are a bitset over [`Registry`] ids: every command of the table, then every
//!   subcommand of the container commands (CLUSTER, CONFIG, CLIENT, COMMAND, ACL, MERIDIAN),
//!   each with its categories, so `+@admin` reaches `cluster|addslots` but not `cluster|info`.
//! - The hot path: a user with every command and every key (`User::unrestricted`, the
//!   default user unless configured otherwise) costs the connection one atomic load and a
//!   bool test per command (`connection::execute_parsed`).
//! - Passwords are stored as SHA-256 digests and compared in constant time (`subtle`), every
//!   stored digest of the user checked, so AUTH is no timing oracle.
//!
//! Keys: `~pattern` (read and write), `%R~`/`%W~`/`%RW~`; what a command needs of its keys
//! is [`key_access`]. Channels (`&pattern`, `allchannels`) gate the pub/sub commands
//! (`check_channels`). Selectors (`(...)`) are not supported.

use crate::cmd::{self, Spec};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;

pub const ERR_NOAUTH: &str = "NOAUTH Authentication required.";
pub const ERR_WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
pub const ERR_NOPERM_KEY: &str = "NOPERM No permissions to access a key";
/// Redis' protected-mode refusal, sent to a non-loopback client before closing it.
pub const DENIED: &[u8] = b"-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers to Redis you may adopt one of the following solutions: 1) Just disable protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting to Redis from the same host the server is running, however MAKE SURE Redis is not publicly accessible from internet if you do so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively you can just disable the protected mode by editing the Redis configuration file, and setting the protected mode option to 'no', and then restarting the server. 3) If you started the server manually just for testing, restart it with the '--protected-mode no' option. 4) Setup a an authentication password for the default user. NOTE: You only need to do one of the above things in order for the server to start accepting connections from the outside.\r\n";

/// Redis' categories, in `ACL CAT` order.
pub const CATEGORIES: [&str; 21] = [
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

const fn cat(name: &str) -> u32 {
    let mut i = 0;
    while i < CATEGORIES.len() {
        if const_eq(CATEGORIES[i].as_bytes(), name.as_bytes()) {
            return 1 << i;
        }
        i += 1;
    }
    panic!("unknown category")
}

const fn const_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

pub const KEYSPACE: u32 = cat("keyspace");
pub const READ: u32 = cat("read");
pub const WRITE: u32 = cat("write");
pub const SET: u32 = cat("set");
pub const HASH: u32 = cat("hash");
pub const LIST: u32 = cat("list");
pub const SORTEDSET: u32 = cat("sortedset");
pub const STRING: u32 = cat("string");
pub const BITMAP: u32 = cat("bitmap");
pub const ADMIN: u32 = cat("admin");
pub const FAST: u32 = cat("fast");
pub const SLOW: u32 = cat("slow");
pub const BLOCKING: u32 = cat("blocking");
pub const DANGEROUS: u32 = cat("dangerous");
pub const CONNECTION: u32 = cat("connection");
pub const TRANSACTION: u32 = cat("transaction");
pub const PUBSUB: u32 = cat("pubsub");

/// The pub/sub commands: their arguments are channels (or patterns), checked against the
/// user's `&` rules, never keys.
const PUBSUB_COMMANDS: [&str; 9] = [
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "publish",
    "spublish",
    "pubsub",
];

/// Every internal or destructive entry point: admin and dangerous.
const ADMIN_DANGEROUS: u32 = ADMIN | SLOW | DANGEROUS;

/// The categories of a table command (for a container command: of the container itself,
/// which `+cmd` reaches; its subcommands have their own, [`SUBCOMMANDS`]). Redis' own
/// assignment where the command exists in Redis; a test checks every command has one.
pub fn command_categories(spec: &Spec) -> u32 {
    let speed = if spec.flags & cmd::FAST != 0 {
        FAST
    } else {
        SLOW
    };
    let family = match spec.name {
        n if PUBSUB_COMMANDS.contains(&n) => PUBSUB,
        "get" | "set" | "setnx" | "setex" | "psetex" | "getset" | "getdel" | "getex" | "mget"
        | "mset" | "msetnx" | "append" | "strlen" | "getrange" | "substr" | "setrange" | "incr"
        | "decr" | "incrby" | "decrby" | "incrbyfloat" | "lcs" => STRING,
        "setbit" | "getbit" | "bitcount" | "bitpos" | "bitop" | "bitfield" | "bitfield_ro" => {
            BITMAP
        }
        n if n.starts_with('h') && n != "hello" => HASH,
        n if cmd::list::NAMES.contains(&n) => LIST,
        n if n.starts_with('z') => SORTEDSET,
        n if n.starts_with('s')
            && !matches!(
                n,
                "select" | "scan" | "set" | "setnx" | "setex" | "setrange" | "slowlog"
            ) =>
        {
            SET
        }
        "del" | "unlink" | "exists" | "touch" | "type" | "rename" | "renamenx" | "expire"
        | "pexpire" | "expireat" | "pexpireat" | "ttl" | "pttl" | "expiretime" | "pexpiretime"
        | "persist" | "scan" | "keys" | "dbsize" | "randomkey" | "migrate" | "copy" | "object"
        | "dump" | "restore" => KEYSPACE,
        _ => 0,
    };
    let rw = if spec.flags & cmd::WRITE != 0 {
        WRITE
    } else if spec.flags & cmd::READONLY != 0 {
        READ
    } else {
        0
    };
    let special = match spec.name {
        "ping" | "echo" | "hello" | "auth" | "quit" | "reset" | "select" | "readonly"
        | "readwrite" | "asking" | "command" | "client" => CONNECTION,
        "multi" | "exec" | "discard" | "watch" | "unwatch" => TRANSACTION,
        "wait" => CONNECTION | BLOCKING,
        n if cmd::list::BLOCKING.contains(&n) => BLOCKING,
        // Destructive or internal: never for an ordinary user.
        "flushall" | "flushdb" | "keys" | "migrate" | "info" | "restore" | "sort" | "sort_ro" => {
            DANGEROUS
        }
        "replicaof" | "slaveof" | "role" | "lastsave" | "config" | "meridian" | "debug"
        | "slowlog" | "latency" => ADMIN | DANGEROUS,
        _ => 0,
    };
    speed | family | rw | special
}

/// The subcommands ACL rules can name (`+cluster|info`), with their categories.
pub const SUBCOMMANDS: &[(&str, &[(&str, u32)])] = &[
    (
        "cluster",
        &[
            ("info", SLOW),
            ("myid", SLOW),
            ("myshardid", SLOW),
            ("nodes", SLOW),
            ("slots", SLOW),
            ("shards", SLOW),
            ("keyslot", SLOW),
            ("countkeysinslot", SLOW),
            ("getkeysinslot", SLOW),
            ("replicas", ADMIN_DANGEROUS),
            ("slaves", ADMIN_DANGEROUS),
            ("links", SLOW),
            ("help", SLOW),
            ("meet", ADMIN_DANGEROUS),
            ("addslots", ADMIN_DANGEROUS),
            ("addslotsrange", ADMIN_DANGEROUS),
            ("delslots", ADMIN_DANGEROUS),
            ("delslotsrange", ADMIN_DANGEROUS),
            ("flushslots", ADMIN_DANGEROUS),
            ("setslot", ADMIN_DANGEROUS),
            ("replicate", ADMIN_DANGEROUS),
            ("failover", ADMIN_DANGEROUS),
            ("forget", ADMIN_DANGEROUS),
            ("reset", ADMIN_DANGEROUS),
            ("saveconfig", ADMIN_DANGEROUS),
            ("set-config-epoch", ADMIN_DANGEROUS),
            ("bumpepoch", ADMIN_DANGEROUS),
            ("count-failure-reports", ADMIN_DANGEROUS),
        ],
    ),
    (
        "config",
        &[
            ("get", ADMIN_DANGEROUS),
            ("set", ADMIN_DANGEROUS),
            ("resetstat", ADMIN_DANGEROUS),
            ("rewrite", ADMIN_DANGEROUS),
            ("help", SLOW),
        ],
    ),
    (
        "client",
        &[
            ("id", SLOW | CONNECTION),
            ("info", SLOW | CONNECTION),
            ("getname", SLOW | CONNECTION),
            ("setname", SLOW | CONNECTION),
            ("setinfo", SLOW | CONNECTION),
            ("no-touch", SLOW | CONNECTION),
            ("no-evict", ADMIN_DANGEROUS | CONNECTION),
            ("list", ADMIN_DANGEROUS | CONNECTION),
            ("kill", ADMIN_DANGEROUS | CONNECTION),
            ("unblock", ADMIN_DANGEROUS | CONNECTION),
            ("help", SLOW | CONNECTION),
        ],
    ),
    (
        "command",
        &[
            ("count", SLOW | CONNECTION),
            ("info", SLOW | CONNECTION),
            ("docs", SLOW | CONNECTION),
            ("getkeys", SLOW | CONNECTION),
            ("list", SLOW | CONNECTION),
            ("help", SLOW | CONNECTION),
        ],
    ),
    (
        "acl",
        &[
            ("whoami", SLOW),
            ("cat", SLOW),
            ("genpass", SLOW),
            ("help", SLOW),
            ("setuser", ADMIN_DANGEROUS),
            ("getuser", ADMIN_DANGEROUS),
            ("deluser", ADMIN_DANGEROUS),
            ("list", ADMIN_DANGEROUS),
            ("users", ADMIN_DANGEROUS),
            ("save", ADMIN_DANGEROUS),
            ("load", ADMIN_DANGEROUS),
            ("log", ADMIN_DANGEROUS),
            ("dryrun", ADMIN_DANGEROUS),
        ],
    ),
    (
        "object",
        &[
            ("encoding", KEYSPACE | READ | SLOW),
            ("freq", KEYSPACE | READ | SLOW),
            ("idletime", KEYSPACE | READ | SLOW),
            ("refcount", KEYSPACE | READ | SLOW),
            ("help", KEYSPACE | SLOW),
        ],
    ),
    ("memory", &[("usage", READ | SLOW), ("help", SLOW)]),
    (
        "meridian",
        &[
            // The replica stream (everything, tombstones included) and CRDT state merged
            // as is: internal protocols, for the replication identity only.
            ("sync", ADMIN_DANGEROUS),
            ("merge", ADMIN_DANGEROUS | WRITE),
            ("invalidate", ADMIN_DANGEROUS | WRITE),
            ("link", ADMIN_DANGEROUS),
            ("region", ADMIN_DANGEROUS),
            ("deltas", ADMIN_DANGEROUS),
        ],
    ),
];

/// Command ids for permission bitsets: the table's commands (`Spec::id`), then the
/// subcommands of [`SUBCOMMANDS`].
pub struct Registry {
    /// Full names (`get`, `cluster|info`) by id.
    pub names: Vec<String>,
    pub cats: Vec<u32>,
    by_name: HashMap<String, usize>,
    /// Subcommand ids of each container command (by the container's id).
    subs: HashMap<usize, Vec<usize>>,
}

impl Registry {
    fn build() -> Registry {
        let table = cmd::table();
        let mut specs: Vec<&Spec> = table.values().collect();
        specs.sort_by_key(|s| s.id);
        let mut r = Registry {
            names: Vec::new(),
            cats: Vec::new(),
            by_name: HashMap::new(),
            subs: HashMap::new(),
        };
        for s in specs {
            debug_assert_eq!(usize::from(s.id), r.names.len());
            r.by_name.insert(s.name.to_string(), r.names.len());
            r.names.push(s.name.to_string());
            r.cats.push(command_categories(s));
        }
        for (parent, subs) in SUBCOMMANDS {
            let Some(&pid) = r.by_name.get(*parent) else {
                continue;
            };
            for (sub, cats) in *subs {
                let full = format!("{parent}|{sub}");
                let id = r.names.len();
                r.by_name.insert(full.clone(), id);
                r.names.push(full);
                r.cats.push(*cats);
                r.subs.entry(pid).or_default().push(id);
            }
        }
        r
    }

    pub fn get() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(Registry::build)
    }

    fn words(&self) -> usize {
        self.names.len().div_ceil(64)
    }

    /// The id a request runs as: its subcommand's when the command has subcommands and
    /// `args[1]` names one, else the command's.
    pub fn id_of(&self, spec: &Spec, args: &[&[u8]]) -> usize {
        let id = usize::from(spec.id);
        if self.subs.contains_key(&id) {
            if let Some(sub) = args.get(1) {
                let full = format!(
                    "{}|{}",
                    spec.name,
                    String::from_utf8_lossy(sub).to_ascii_lowercase()
                );
                if let Some(&s) = self.by_name.get(&full) {
                    return s;
                }
            }
        }
        id
    }

    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.by_name.get(&name.to_ascii_lowercase()).copied()
    }

    /// The names of the commands in a category (`ACL CAT <category>`), sorted.
    pub fn in_category(&self, bit: u32) -> Vec<&str> {
        let mut v: Vec<&str> = (0..self.names.len())
            .filter(|&i| self.cats[i] & bit != 0)
            .map(|i| self.names[i].as_str())
            .collect();
        v.sort_unstable();
        v
    }
}

pub fn category_bit(name: &str) -> Option<u32> {
    CATEGORIES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|i| 1 << i)
}

pub const PERM_R: u8 = 1;
pub const PERM_W: u8 = 2;
pub const PERM_RW: u8 = 3;

pub type Digest32 = [u8; 32];

pub fn sha256(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

pub fn hex(d: &Digest32) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex_digest(s: &[u8]) -> Option<Digest32> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = nib(pair[0])? << 4 | nib(pair[1])?;
    }
    Some(out)
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// Identity across edits: a user deleted and created again is another user.
    pub uid: u64,
    pub enabled: bool,
    pub nopass: bool,
    pub passwords: Vec<Digest32>,
    /// Allowed command ids ([`Registry`]).
    allowed: Vec<u64>,
    /// The command rules as given since the last `+@all`/`-@all` (what GETUSER shows).
    cmd_rules: Vec<String>,
    pub all_keys: bool,
    pub keys: Vec<(Bytes, u8)>,
    pub all_channels: bool,
    pub channels: Vec<Bytes>,
    /// Every command and every key: the connection skips the checks.
    pub unrestricted: bool,
}

impl User {
    /// A new user as `ACL SETUSER name` makes it: off, no password, nothing allowed.
    pub fn new(name: &str, uid: u64) -> User {
        let r = Registry::get();
        User {
            name: name.to_string(),
            uid,
            enabled: false,
            nopass: false,
            passwords: Vec::new(),
            allowed: vec![0; r.words()],
            cmd_rules: vec!["-@all".into()],
            all_keys: false,
            keys: Vec::new(),
            all_channels: false,
            channels: Vec::new(),
            unrestricted: false,
        }
    }

    /// The default user: `on nopass ~* &* +@all`.
    pub fn default_user(uid: u64) -> User {
        let mut u = User::new("default", uid);
        for rule in ["on", "nopass", "~*", "&*", "+@all"] {
            // These rules are valid by construction.
            let _ = u.apply(rule.as_bytes());
        }
        u
    }

    pub fn can_run(&self, id: usize) -> bool {
        self.allowed
            .get(id / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn set_bit(&mut self, id: usize, on: bool) {
        if let Some(w) = self.allowed.get_mut(id / 64) {
            if on {
                *w |= 1 << (id % 64);
            } else {
                *w &= !(1 << (id % 64));
            }
        }
    }

    fn set_all(&mut self, on: bool) {
        let n = Registry::get().names.len();
        for id in 0..n {
            self.set_bit(id, on);
        }
    }

    fn all_commands(&self) -> bool {
        (0..Registry::get().names.len()).all(|id| self.can_run(id))
    }

    /// The key permission `key` has for this user.
    pub fn key_perm(&self, key: &[u8]) -> u8 {
        if self.all_keys {
            return PERM_RW;
        }
        let mut p = 0;
        for (pat, perm) in &self.keys {
            if p | perm != p && crate::util::glob_match(pat, key, false) {
                p |= perm;
            }
        }
        p
    }

    /// Constant-time check of `pass` against every stored digest.
    pub fn password_ok(&self, pass: &[u8]) -> bool {
        let d = sha256(pass);
        let mut ok = subtle::Choice::from(0u8);
        for p in &self.passwords {
            ok |= p.ct_eq(&d);
        }
        bool::from(ok)
    }

    /// Apply one ACL rule (Redis' syntax); the error is the text after "modifier '…': ".
    pub fn apply(&mut self, rule: &[u8]) -> Result<(), String> {
        let lower = rule.to_ascii_lowercase();
        match lower.as_slice() {
            b"on" => self.enabled = true,
            b"off" => self.enabled = false,
            b"nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            b"resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            b"allkeys" => return self.apply(b"~*"),
            b"resetkeys" => {
                self.all_keys = false;
                self.keys.clear();
            }
            b"allchannels" => return self.apply(b"&*"),
            b"resetchannels" => {
                self.all_channels = false;
                self.channels.clear();
            }
            b"allcommands" => return self.apply(b"+@all"),
            b"nocommands" => return self.apply(b"-@all"),
            b"reset" => {
                for r in ["resetpass", "resetkeys", "resetchannels", "-@all", "off"] {
                    self.apply(r.as_bytes())?;
                }
            }
            b"sanitize-payload" | b"skip-sanitize-payload" | b"clearselectors" => {}
            _ => match rule.first() {
                Some(b'>') => {
                    let d = sha256(&rule[1..]);
                    if !self.passwords.contains(&d) {
                        self.passwords.push(d);
                    }
                    self.nopass = false;
                }
                Some(b'<') => {
                    let d = sha256(&rule[1..]);
                    self.remove_password(&d)?;
                }
                Some(b'#') | Some(b'!') => {
                    let Some(d) = parse_hex_digest(&rule[1..]) else {
                        return Err("The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters".into());
                    };
                    if rule[0] == b'#' {
                        if !self.passwords.contains(&d) {
                            self.passwords.push(d);
                        }
                        self.nopass = false;
                    } else {
                        self.remove_password(&d)?;
                    }
                }
                Some(b'~') => self.add_key_pattern(&rule[1..], PERM_RW)?,
                Some(b'%') => {
                    let Some(tilde) = rule.iter().position(|&b| b == b'~') else {
                        return Err("Syntax error".into());
                    };
                    let mut perm = 0;
                    for &c in &rule[1..tilde] {
                        match c.to_ascii_uppercase() {
                            b'R' => perm |= PERM_R,
                            b'W' => perm |= PERM_W,
                            _ => return Err("Syntax error".into()),
                        }
                    }
                    if perm == 0 {
                        return Err("Syntax error".into());
                    }
                    self.add_key_pattern(&rule[tilde + 1..], perm)?;
                }
                Some(b'&') => {
                    let pat = &rule[1..];
                    if self.all_channels {
                        return Err("Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have any effect. Try 'resetchannels' to start with an empty list of channels".into());
                    }
                    if pat == b"*" {
                        self.all_channels = true;
                        self.channels.clear();
                    } else if !self.channels.iter().any(|c| c[..] == *pat) {
                        self.channels.push(Bytes::copy_from_slice(pat));
                    }
                }
                Some(b'+') | Some(b'-') => self.command_rule(rule[0] == b'+', &lower[1..])?,
                _ => return Err("Syntax error".into()),
            },
        }
        self.unrestricted = self.all_keys && self.all_channels && self.all_commands();
        Ok(())
    }

    fn remove_password(&mut self, d: &Digest32) -> Result<(), String> {
        let before = self.passwords.len();
        self.passwords.retain(|p| p != d);
        if self.passwords.len() == before {
            return Err(
                "The password you are trying to remove from the user does not exist".into(),
            );
        }
        Ok(())
    }

    fn add_key_pattern(&mut self, pat: &[u8], perm: u8) -> Result<(), String> {
        if self.all_keys {
            return Err("Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. Try 'resetkeys' to start with an empty list of patterns".into());
        }
        if pat == b"*" && perm == PERM_RW {
            self.all_keys = true;
            self.keys.clear();
            return Ok(());
        }
        match self.keys.iter_mut().find(|(p, _)| p[..] == *pat) {
            Some((_, p)) => *p |= perm,
            None => self.keys.push((Bytes::copy_from_slice(pat), perm)),
        }
        Ok(())
    }

    fn command_rule(&mut self, allow: bool, what: &[u8]) -> Result<(), String> {
        let reg = Registry::get();
        let unknown = || "Unknown command or category name in ACL".to_string();
        let what = std::str::from_utf8(what).map_err(|_| unknown())?;
        let sign = if allow { '+' } else { '-' };
        if let Some(c) = what.strip_prefix('@') {
            if c == "all" {
                self.set_all(allow);
                self.cmd_rules = vec![format!("{sign}@all")];
                return Ok(());
            }
            let bit = category_bit(c).ok_or_else(unknown)?;
            for id in 0..reg.names.len() {
                if reg.cats[id] & bit != 0 {
                    self.set_bit(id, allow);
                }
            }
        } else {
            let id = reg.lookup(what).ok_or_else(unknown)?;
            self.set_bit(id, allow);
            // A container rule covers its subcommands.
            for &s in reg.subs.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                self.set_bit(s, allow);
            }
        }
        let rule = format!("{sign}{what}");
        self.cmd_rules.retain(|r| r[1..] != rule[1..]);
        self.cmd_rules.push(rule);
        Ok(())
    }

    /// The rules that rebuild this user (`ACL LIST`, the aclfile), Redis' order.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = vec![if self.enabled { "on" } else { "off" }.into()];
        if self.nopass {
            parts.push("nopass".into());
        }
        for p in &self.passwords {
            parts.push(format!("#{}", hex(p)));
        }
        parts.push(self.keys_text());
        parts.push(self.channels_text());
        parts.push(self.cmd_rules.join(" "));
        parts.retain(|p| !p.is_empty());
        parts.join(" ")
    }

    pub fn keys_text(&self) -> String {
        if self.all_keys {
            return "~*".into();
        }
        let v: Vec<String> = self
            .keys
            .iter()
            .map(|(p, perm)| {
                let pat = String::from_utf8_lossy(p);
                match *perm {
                    PERM_RW => format!("~{pat}"),
                    PERM_R => format!("%R~{pat}"),
                    _ => format!("%W~{pat}"),
                }
            })
            .collect();
        v.join(" ")
    }

    pub fn channels_text(&self) -> String {
        if self.all_channels {
            return "&*".into();
        }
        let mut v = vec!["resetchannels".to_string()];
        v.extend(
            self.channels
                .iter()
                .map(|c| format!("&{}", String::from_utf8_lossy(c))),
        );
        v.join(" ")
    }

    pub fn commands_text(&self) -> String {
        self.cmd_rules.join(" ")
    }
}

/// What a command needs of its key arguments: read (`R`), write (`W`), both, or any
/// access (0: the key's existence or metadata only, as Redis' key specs without ACCESS,
/// INSERT, UPDATE or DELETE).
pub fn key_access(spec: &Spec) -> u8 {
    match spec.name {
        "exists" | "type" | "ttl" | "pttl" | "expiretime" | "pexpiretime" | "touch" | "strlen"
        | "hlen" | "scard" | "hstrlen" | "hexists" | "watch" => 0,
        // Writes that read the value too (they return it or build on it).
        "getset" | "getdel" | "getex" | "incr" | "decr" | "incrby" | "decrby" | "incrbyfloat"
        | "append" | "hincrby" | "hincrbyfloat" | "spop" | "rename" | "renamenx" | "migrate"
        | "smove" => PERM_RW,
        _ if spec.flags & cmd::WRITE != 0 => PERM_W,
        _ => PERM_R,
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    Command(String),
    Key(Bytes),
    Channel(Bytes),
}

/// Whether `user` may run `args` (`spec` looked up from `args[0]`).
pub fn check(user: &User, spec: &Spec, args: &[&[u8]]) -> Result<(), Denied> {
    if user.unrestricted {
        return Ok(());
    }
    let reg = Registry::get();
    let id = reg.id_of(spec, args);
    if !user.can_run(id) {
        return Err(Denied::Command(reg.names[id].clone()));
    }
    if PUBSUB_COMMANDS.contains(&spec.name) {
        return check_channels(user, spec, args);
    }
    if user.all_keys {
        return Ok(());
    }
    let need = key_access(spec);
    let check_key = |k: &[u8]| {
        let have = user.key_perm(k);
        if have == 0 || have & need != need {
            return Err(Denied::Key(Bytes::copy_from_slice(k)));
        }
        Ok(())
    };
    if spec.name == "migrate" {
        // MIGRATE host port key|"" db timeout … [KEYS k …]
        if let Some(k) = args.get(3).filter(|k| !k.is_empty()) {
            check_key(k)?;
        }
        if let Some(at) = args.iter().position(|a| a.eq_ignore_ascii_case(b"keys")) {
            for k in &args[at + 1..] {
                check_key(k)?;
            }
        }
        return Ok(());
    }
    for i in spec.key_indices(args) {
        check_key(args[i])?;
    }
    Ok(())
}

/// The channels a pub/sub command names, against the user's `&` rules (as Redis 7): a
/// channel (SUBSCRIBE, SSUBSCRIBE, PUBLISH, SPUBLISH) must match one of the patterns; a
/// pattern (PSUBSCRIBE) must be one of them literally. Unsubscribing is always allowed.
fn check_channels(user: &User, spec: &Spec, args: &[&[u8]]) -> Result<(), Denied> {
    if user.all_channels {
        return Ok(());
    }
    let (names, literal): (&[&[u8]], bool) = match spec.name {
        "subscribe" | "ssubscribe" => (&args[1..], false),
        "publish" | "spublish" => (&args[1..2], false),
        "psubscribe" => (&args[1..], true),
        _ => (&[], false),
    };
    for &c in names {
        let allowed = user.channels.iter().any(|p| {
            if literal {
                p[..] == *c
            } else {
                crate::util::glob_match(p, c, false)
            }
        });
        if !allowed {
            return Err(Denied::Channel(Bytes::copy_from_slice(c)));
        }
    }
    Ok(())
}

impl Denied {
    /// The error a command refused gets (Redis 7.2's texts).
    pub fn reply_text(&self, user: &str) -> String {
        match self {
            Denied::Command(c) => {
                format!("NOPERM User {user} has no permissions to run the '{c}' command")
            }
            Denied::Key(_) => ERR_NOPERM_KEY.to_string(),
            Denied::Channel(_) => "NOPERM No permissions to access a channel".to_string(),
        }
    }

    /// ACL DRYRUN's text (verbose, as Redis).
    pub fn dryrun_text(&self, user: &str) -> String {
        match self {
            Denied::Command(c) => {
                format!("User {user} has no permissions to run the '{c}' command")
            }
            Denied::Key(k) => format!(
                "User {user} has no permissions to access the '{}' key",
                String::from_utf8_lossy(k)
            ),
            Denied::Channel(c) => format!(
                "User {user} has no permissions to access the '{}' channel",
                String::from_utf8_lossy(c)
            ),
        }
    }
}

/// One ACL LOG entry (Redis 7.2's fields).
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub count: u64,
    pub reason: &'static str,
    pub context: &'static str,
    pub object: String,
    pub username: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub client_info: String,
    pub entry_id: u64,
}

/// Entries within this long of each other with the same reason, context, object and user
/// are one entry with a count (Redis' `ACL_LOG_GROUPING_MAX_TIME_DELTA`).
const LOG_GROUPING_MS: u64 = 60_000;

/// The users and the ACL log.
pub struct Acl {
    users: RwLock<BTreeMap<String, Arc<User>>>,
    /// Bumped on every change of `users`: connections look their user up again.
    version: AtomicU64,
    next_uid: AtomicU64,
    log: Mutex<VecDeque<LogEntry>>,
    next_log_id: AtomicU64,
    pub log_max_len: AtomicUsize,
    pub aclfile: Option<PathBuf>,
    /// `protected-mode`: see `server::refused_by_protected_mode`.
    pub protected_mode: AtomicBool,
    /// `masteruser`/`masterauth`: what this node's replica link authenticates with.
    master_auth: RwLock<(Option<String>, Option<String>)>,
    /// The last `requirepass` set, as text (CONFIG GET shows it, as Redis does).
    requirepass: RwLock<String>,
}

impl Acl {
    /// The users from the configuration: `requirepass` sets the default user's password,
    /// then `users` (Redis' `user` directives) or the aclfile.
    pub fn from_config(c: &crate::config::Config) -> Result<Acl, String> {
        let acl = Acl {
            users: RwLock::new(BTreeMap::new()),
            version: AtomicU64::new(1),
            next_uid: AtomicU64::new(1),
            log: Mutex::new(VecDeque::new()),
            next_log_id: AtomicU64::new(0),
            log_max_len: AtomicUsize::new(c.acllog_max_len),
            protected_mode: AtomicBool::new(c.protected_mode),
            master_auth: RwLock::new((c.masteruser.clone(), c.masterauth.clone())),
            requirepass: RwLock::new(c.requirepass.clone().unwrap_or_default()),
            aclfile: c.aclfile.as_ref().map(|p| match &c.config_dir {
                Some(d) if p.is_relative() => d.join(p),
                _ => p.clone(),
            }),
        };
        let mut default = User::default_user(acl.uid());
        if let Some(p) = c.requirepass.as_deref().filter(|p| !p.is_empty()) {
            default.apply(format!(">{p}").as_bytes())?;
        }
        acl.users
            .write()
            .insert("default".into(), Arc::new(default));
        if !c.users.is_empty() && acl.aclfile.is_some() {
            return Err("Configuring users in the config (`users`) and an `aclfile` at the same time is invalid: define either, not both (as Redis).".into());
        }
        for line in &c.users {
            acl.setuser_line(line)
                .map_err(|e| format!("users: {line:?}: {e}"))?;
        }
        if acl.aclfile.is_some() {
            acl.load_file()?;
        }
        Ok(acl)
    }

    /// The AUTH a replica sends its primary: `(masteruser, masterauth)`, when a password is
    /// configured.
    pub fn master_credentials(&self) -> Option<(Option<String>, String)> {
        let g = self.master_auth.read();
        g.1.clone().map(|p| (g.0.clone(), p))
    }

    pub fn master_auth(&self) -> (Option<String>, Option<String>) {
        self.master_auth.read().clone()
    }

    pub fn set_masteruser(&self, user: Option<String>) {
        self.master_auth.write().0 = user;
    }

    pub fn set_masterauth(&self, pass: Option<String>) {
        self.master_auth.write().1 = pass;
    }

    fn uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    pub fn default_user(&self) -> Arc<User> {
        self.user("default")
            .unwrap_or_else(|| Arc::new(User::default_user(0)))
    }

    /// Whether a new connection starts authenticated (the default user is on, no password).
    pub fn default_nopass(&self) -> bool {
        let u = self.default_user();
        u.nopass && u.enabled
    }

    pub fn users(&self) -> Vec<Arc<User>> {
        self.users.read().values().cloned().collect()
    }

    /// AUTH: the user when it exists, is on and the password matches. The password's digest
    /// is computed and compared whether or not the user exists.
    pub fn authenticate(&self, name: &[u8], pass: &[u8]) -> Option<Arc<User>> {
        let name = std::str::from_utf8(name).ok();
        let user = name.and_then(|n| self.user(n));
        let ok = match &user {
            Some(u) => u.enabled && (u.nopass || u.password_ok(pass)),
            None => {
                let _ = User::new("", 0).password_ok(pass);
                false
            }
        };
        user.filter(|_| ok)
    }

    /// ACL SETUSER: apply every rule to a copy of the user (or a new one), all or nothing.
    pub fn setuser(&self, name: &str, rules: &[&[u8]]) -> Result<(), String> {
        let mut users = self.users.write();
        let mut u = match users.get(name) {
            Some(u) => (**u).clone(),
            None => User::new(name, self.uid()),
        };
        for r in rules {
            u.apply(r).map_err(|e| {
                format!(
                    "Error in ACL SETUSER modifier '{}': {e}",
                    String::from_utf8_lossy(r)
                )
            })?;
        }
        users.insert(name.to_string(), Arc::new(u));
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// A `name rule rule…` line (the config's `users`).
    fn setuser_line(&self, line: &str) -> Result<(), String> {
        let mut it = line.split_whitespace();
        let name = it.next().ok_or("empty user line")?;
        let rules: Vec<&[u8]> = it.map(str::as_bytes).collect();
        self.setuser(name, &rules)
    }

    /// ACL DELUSER: how many of `names` existed (`default` cannot be removed).
    pub fn deluser(&self, names: &[&[u8]]) -> Result<usize, &'static str> {
        if names.iter().any(|n| *n == b"default") {
            return Err("ERR The 'default' user cannot be removed");
        }
        let mut users = self.users.write();
        let n = names
            .iter()
            .filter(|n| {
                std::str::from_utf8(n)
                    .ok()
                    .and_then(|n| users.remove(n))
                    .is_some()
            })
            .count();
        self.version.fetch_add(1, Ordering::Release);
        Ok(n)
    }

    /// CONFIG SET requirepass: the default user's passwords become this one (empty: nopass).
    pub fn requirepass(&self) -> String {
        self.requirepass.read().clone()
    }

    pub fn set_requirepass(&self, pass: &[u8]) {
        *self.requirepass.write() = String::from_utf8_lossy(pass).into_owned();
        let mut users = self.users.write();
        let mut u = users
            .get("default")
            .map_or_else(|| User::default_user(self.uid()), |u| (**u).clone());
        if pass.is_empty() {
            let _ = u.apply(b"nopass");
        } else {
            let _ = u.apply(b"resetpass");
            let mut rule = Vec::with_capacity(pass.len() + 1);
            rule.push(b'>');
            rule.extend_from_slice(pass);
            let _ = u.apply(&rule);
        }
        users.insert("default".into(), Arc::new(u));
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The aclfile's text for the current users.
    pub fn file_text(&self) -> String {
        self.users
            .read()
            .values()
            .map(|u| format!("user {} {}\n", u.name, u.describe()))
            .collect()
    }

    /// ACL SAVE: write the users to the aclfile (a temporary file renamed over it).
    pub fn save_file(&self) -> Result<(), String> {
        let path = self
            .aclfile
            .as_ref()
            .ok_or("This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.")?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.file_text())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("There was an error trying to save the ACLs. Please check the server logs for more information: {e}"))
    }

    /// ACL LOAD (and the start): replace every user with the aclfile's, all or nothing. A
    /// file without `default` keeps the current default user. Users that keep their name
    /// keep their identity (their connections stay).
    pub fn load_file(&self) -> Result<(), String> {
        let path = self
            .aclfile
            .as_ref()
            .ok_or("This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.")?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("Error loading ACLs, opening file '{}': {e}", path.display()))?;
        let mut users = self.users.write();
        let mut loaded: BTreeMap<String, Arc<User>> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut it = line.split_whitespace();
            let at = |e: &str| format!("{}:{}: {e}", path.display(), n + 1);
            if it.next() != Some("user") {
                return Err(at("line should start with user keyword"));
            }
            let name = it.next().ok_or_else(|| at("user name missing"))?;
            if loaded.contains_key(name) {
                return Err(at(&format!("Duplicate user '{name}' found")));
            }
            let uid = users.get(name).map_or_else(|| self.uid(), |u| u.uid);
            let mut u = User::new(name, uid);
            for r in it {
                u.apply(r.as_bytes())
                    .map_err(|e| at(&format!("{e}. Use ACL SETUSER for more details")))?;
            }
            loaded.insert(name.to_string(), Arc::new(u));
        }
        if !loaded.contains_key("default") {
            let d = users
                .get("default")
                .cloned()
                .unwrap_or_else(|| Arc::new(User::default_user(self.uid())));
            loaded.insert("default".into(), d);
        }
        *users = loaded;
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Record a refusal in the ACL log (grouped with a like entry of the last minute).
    pub fn log(
        &self,
        reason: &'static str,
        context: &'static str,
        object: String,
        username: String,
        client_info: String,
        now_ms: u64,
    ) {
        let mut log = self.log.lock();
        if let Some(pos) = log.iter().position(|e| {
            e.reason == reason
                && e.context == context
                && e.object == object
                && e.username == username
                && now_ms.saturating_sub(e.updated_ms) < LOG_GROUPING_MS
        }) {
            if let Some(mut e) = log.remove(pos) {
                e.count += 1;
                e.updated_ms = now_ms;
                e.client_info = client_info;
                log.push_front(e);
            }
            return;
        }
        log.push_front(LogEntry {
            count: 1,
            reason,
            context,
            object,
            username,
            created_ms: now_ms,
            updated_ms: now_ms,
            client_info,
            entry_id: self.next_log_id.fetch_add(1, Ordering::Relaxed),
        });
        log.truncate(self.log_max_len.load(Ordering::Relaxed));
    }

    pub fn log_entries(&self, n: usize) -> Vec<LogEntry> {
        self.log.lock().iter().take(n).cloned().collect()
    }

    pub fn log_reset(&self) {
        self.log.lock().clear();
    }
}

/// A connection's identity: its user, whether it authenticated, and the [`Acl::version`]
/// it last looked its user up at (0 at first: looked up on the first command).
#[derive(Clone, Default)]
pub struct Session {
    pub user: Option<Arc<User>>,
    pub authenticated: bool,
    pub version: u64,
    /// Authenticated as a user with every command and key: nothing to check.
    pub free: bool,
}

impl Session {
    pub fn user_name(&self) -> &str {
        self.user.as_ref().map_or("default", |u| u.name.as_str())
    }

    /// Become `user` (AUTH, HELLO AUTH).
    pub fn login(&mut self, user: Arc<User>, version: u64) {
        self.free = user.unrestricted;
        self.user = Some(user);
        self.authenticated = true;
        self.version = version;
    }

    /// The connection's start (and RESET): the default user, authenticated when it needs no
    /// password.
    pub fn start(&mut self, acl: &Acl) {
        let version = acl.version();
        let d = acl.default_user();
        self.authenticated = d.nopass && d.enabled;
        self.free = self.authenticated && d.unrestricted;
        self.user = Some(d);
        self.version = version;
    }

    /// Look the user up again after an ACL change; false when it is gone (the connection
    /// closes, as for a user deleted in Redis).
    pub fn refresh(&mut self, acl: &Acl) -> bool {
        let Some(u) = &self.user else {
            self.start(acl);
            return true;
        };
        let version = acl.version();
        match acl.user(&u.name) {
            Some(n) if n.uid == u.uid => {
                // Not yet authenticated as the default user, which needs no password now
                // (CONFIG SET requirepass ""): nothing left to ask (Redis' authRequired).
                if !self.authenticated && n.name == "default" && n.nopass && n.enabled {
                    self.authenticated = true;
                }
                self.free = self.authenticated && n.unrestricted;
                self.user = Some(n);
                self.version = version;
                true
            }
            _ => false,
        }
    }
}

/// `ACL GENPASS [bits]`: random hex from the OS-seeded CSPRNG.
pub fn genpass(bits: usize) -> String {
    let bytes = bits.div_ceil(8);
    let mut buf = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf);
    let mut s: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(bits.div_ceil(4));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(rules: &[&str]) -> User {
        let mut u = User::new("u", 1);
        for r in rules {
            u.apply(r.as_bytes()).unwrap_or_else(|e| panic!("{r}: {e}"));
        }
        u
    }

    fn args<'a>(a: &[&'a str]) -> Vec<&'a [u8]> {
        a.iter().map(|s| s.as_bytes()).collect()
    }

    fn run(u: &User, a: &[&str]) -> Result<(), Denied> {
        let a = args(a);
        let spec = cmd::lookup(a[0]).expect("known command");
        check(u, spec, &a)
    }

    #[test]
    fn every_command_has_categories_and_internal_ones_are_admin() {
        let reg = Registry::get();
        for (i, name) in reg.names.iter().enumerate() {
            let c = reg.cats[i];
            assert!(c & (FAST | SLOW) != 0, "{name} has no speed category");
        }
        for name in [
            "meridian|merge",
            "meridian|sync",
            "meridian|link",
            "meridian|region",
            "meridian|invalidate",
            "replicaof",
            "slaveof",
            "config|set",
            "config|get",
            "cluster|addslots",
            "cluster|setslot",
            "cluster|meet",
            "cluster|failover",
            "cluster|reset",
            "acl|setuser",
            "acl|deluser",
            "acl|load",
        ] {
            let id = reg.lookup(name).unwrap_or_else(|| panic!("{name}"));
            assert!(reg.cats[id] & ADMIN != 0, "{name} is not @admin");
            assert!(reg.cats[id] & DANGEROUS != 0, "{name} is not @dangerous");
        }
        for name in ["flushall", "flushdb", "migrate", "keys"] {
            let id = reg.lookup(name).unwrap_or_else(|| panic!("{name}"));
            assert!(reg.cats[id] & DANGEROUS != 0, "{name} is not @dangerous");
        }
        for name in [
            "cluster|slots",
            "cluster|info",
            "acl|whoami",
            "client|id",
            "get",
        ] {
            let id = reg.lookup(name).unwrap_or_else(|| panic!("{name}"));
            assert!(reg.cats[id] & (ADMIN | DANGEROUS) == 0, "{name}");
        }
    }

    #[test]
    fn rules_allow_and_deny_commands_and_keys() {
        let u = user(&[
            "on", ">pw", "~cache:*", "%R~ro:*", "%W~wo:*", "+@read", "+set",
        ]);
        assert!(u.password_ok(b"pw") && !u.password_ok(b"px"));
        assert_eq!(run(&u, &["get", "cache:1"]), Ok(()));
        assert_eq!(
            run(&u, &["get", "other"]),
            Err(Denied::Key(Bytes::from_static(b"other")))
        );
        assert!(matches!(run(&u, &["del", "cache:1"]), Err(Denied::Command(c)) if c == "del"));
        assert_eq!(run(&u, &["get", "ro:1"]), Ok(()));
        assert!(run(&u, &["set", "ro:1", "v"]).is_err());
        assert_eq!(run(&u, &["set", "wo:1", "v"]), Ok(()));
        assert!(run(&u, &["get", "wo:1"]).is_err());
        assert!(!u.unrestricted);
        let admin = user(&["on", "nopass", "allkeys", "+@all", "-@dangerous"]);
        assert!(run(&admin, &["meridian", "merge", "k", "x"]).is_err());
        assert!(run(&admin, &["cluster", "addslots", "1"]).is_err());
        assert_eq!(run(&admin, &["cluster", "slots"]), Ok(()));
        assert_eq!(run(&admin, &["acl", "whoami"]), Ok(()));
        assert!(run(&admin, &["flushall"]).is_err());
        let sub = user(&["+@all", "-config|set", "~*"]);
        assert_eq!(run(&sub, &["config", "get", "x"]), Ok(()));
        assert!(run(&sub, &["config", "set", "x", "y"]).is_err());
        let only = user(&["nocommands", "+cluster|info"]);
        assert!(run(&only, &["cluster", "nodes"]).is_err());
        assert!(only.can_run(Registry::get().lookup("cluster|info").unwrap_or(0)));
    }

    #[test]
    fn the_default_user_unconfigured_is_free_on_the_hot_path() {
        let acl = Acl::from_config(&crate::config::Config::default()).expect("acl");
        let mut s = Session::default();
        assert!(
            s.version != acl.version(),
            "a new session looks its user up first"
        );
        assert!(s.refresh(&acl));
        assert!(s.free && s.authenticated && s.version == acl.version());
        // A password: new sessions must AUTH; this one stays authenticated (as Redis).
        acl.set_requirepass(b"pw");
        assert!(s.refresh(&acl) && s.free);
        let mut fresh = Session::default();
        fresh.start(&acl);
        assert!(!fresh.authenticated && !fresh.free);
        assert!(acl.authenticate(b"default", b"pw").is_some());
        assert!(acl.authenticate(b"default", b"px").is_none());
        assert!(acl.authenticate(b"nobody", b"pw").is_none());
        acl.set_requirepass(b"");
        assert!(fresh.refresh(&acl) && fresh.authenticated && fresh.free);
    }

    #[test]
    fn description_round_trips_and_errors_are_redis_texts() {
        let u = user(&["on", ">p1", "~a", "%R~b", "&ch", "-@all", "+get", "+@hash"]);
        assert_eq!(
            u.describe(),
            format!(
                "on #{} ~a %R~b resetchannels &ch -@all +get +@hash",
                hex(&sha256(b"p1"))
            )
        );
        let mut again = User::new("u", 2);
        for r in u.describe().split(' ') {
            again
                .apply(r.as_bytes())
                .unwrap_or_else(|e| panic!("{r}: {e}"));
        }
        assert_eq!(again.describe(), u.describe());
        let mut e = User::new("e", 3);
        assert_eq!(e.apply(b"bad").unwrap_err(), "Syntax error");
        assert_eq!(
            e.apply(b"+nosuch").unwrap_err(),
            "Unknown command or category name in ACL"
        );
        assert!(e
            .apply(b"#abc")
            .unwrap_err()
            .starts_with("The password hash"));
        assert!(e.apply(b"<nope").unwrap_err().contains("does not exist"));
        let d = User::default_user(0);
        assert!(d.unrestricted && d.nopass && d.enabled);
        assert_eq!(d.describe(), "on nopass ~* &* +@all");
    }
}
