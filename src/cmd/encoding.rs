//! Redis' encoding tunables (`hash-max-listpack-entries`, `set-max-intset-entries`, …).
//!
//! meridian's layout does not switch encodings, but code and test suites written for Redis
//! set these (CONFIG SET) and then inspect `OBJECT ENCODING`: the values are accepted,
//! validated as Redis does, reported by CONFIG GET, and decide the encoding name OBJECT
//! reports for a value of that shape.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// One tunable: its name, the older `ziplist` name Redis still accepts, its default and the
/// range CONFIG SET accepts.
pub struct Tunable {
    pub name: &'static str,
    pub alias: Option<&'static str>,
    pub default: i64,
    pub min: i64,
    pub max: i64,
}

/// Redis 7.2's encoding tunables, with its compiled-in defaults (redis.conf sets some lower).
pub const TUNABLES: [Tunable; 9] = [
    t(
        "hash-max-listpack-entries",
        Some("hash-max-ziplist-entries"),
        512,
        0,
        i64::MAX,
    ),
    t(
        "hash-max-listpack-value",
        Some("hash-max-ziplist-value"),
        64,
        0,
        i64::MAX,
    ),
    t("set-max-intset-entries", None, 512, 0, i64::MAX),
    t("set-max-listpack-entries", None, 128, 0, i64::MAX),
    t("set-max-listpack-value", None, 64, 0, i64::MAX),
    t(
        "zset-max-listpack-entries",
        Some("zset-max-ziplist-entries"),
        128,
        0,
        i64::MAX,
    ),
    t(
        "zset-max-listpack-value",
        Some("zset-max-ziplist-value"),
        64,
        0,
        i64::MAX,
    ),
    t(
        "list-max-listpack-size",
        Some("list-max-ziplist-size"),
        -2,
        i32::MIN as i64,
        i32::MAX as i64,
    ),
    t("list-compress-depth", None, 0, 0, i32::MAX as i64),
];

const fn t(
    name: &'static str,
    alias: Option<&'static str>,
    default: i64,
    min: i64,
    max: i64,
) -> Tunable {
    Tunable {
        name,
        alias,
        default,
        min,
        max,
    }
}

/// Index of a tunable by its name or alias (lowercase).
pub fn find(name: &str) -> Option<usize> {
    TUNABLES
        .iter()
        .position(|t| t.name == name || t.alias == Some(name))
}

/// The current values, in [`TUNABLES`]' order.
pub struct Encoding {
    values: [AtomicI64; 9],
}

impl Default for Encoding {
    fn default() -> Self {
        Encoding {
            values: TUNABLES.map(|t| AtomicI64::new(t.default)),
        }
    }
}

impl Encoding {
    pub fn get(&self, i: usize) -> i64 {
        self.values.get(i).map_or(0, |v| v.load(Relaxed))
    }

    pub fn set(&self, i: usize, v: i64) {
        if let Some(slot) = self.values.get(i) {
            slot.store(v, Relaxed);
        }
    }

    fn by_name(&self, name: &str) -> usize {
        find(name).map_or(0, |i| {
            usize::try_from(self.get(i).max(0)).unwrap_or(usize::MAX)
        })
    }

    pub fn hash_entries(&self) -> usize {
        self.by_name("hash-max-listpack-entries")
    }
    pub fn hash_value(&self) -> usize {
        self.by_name("hash-max-listpack-value")
    }
    pub fn zset_entries(&self) -> usize {
        self.by_name("zset-max-listpack-entries")
    }
    pub fn zset_value(&self) -> usize {
        self.by_name("zset-max-listpack-value")
    }
    pub fn intset_entries(&self) -> usize {
        self.by_name("set-max-intset-entries")
    }
    pub fn set_entries(&self) -> usize {
        self.by_name("set-max-listpack-entries")
    }
    /// `list-max-listpack-size`: entries when positive, a size class when negative.
    pub fn list_size(&self) -> i64 {
        find("list-max-listpack-size").map_or(-2, |i| self.get(i))
    }

    pub fn set_value(&self) -> usize {
        self.by_name("set-max-listpack-value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aliases_and_defaults() {
        let e = Encoding::default();
        assert_eq!(e.hash_entries(), 512);
        assert_eq!(e.intset_entries(), 512);
        assert_eq!(
            find("hash-max-ziplist-entries"),
            find("hash-max-listpack-entries")
        );
        let i = find("set-max-intset-entries").expect("known");
        e.set(i, 3);
        assert_eq!(e.intset_entries(), 3);
        assert_eq!(e.get(find("list-max-listpack-size").expect("known")), -2);
    }
}
