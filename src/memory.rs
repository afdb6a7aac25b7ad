//! Allocator statistics. meridian runs on jemalloc; `used_memory` is jemalloc's allocated
//! bytes (what Redis' zmalloc reports), `used_memory_rss` its resident bytes.

#[cfg(not(target_env = "msvc"))]
pub fn allocated_bytes() -> u64 {
    use tikv_jemalloc_ctl::{epoch, stats};
    let _ = epoch::advance();
    stats::allocated::read().map_or(0, |b| b as u64)
}

#[cfg(not(target_env = "msvc"))]
pub fn resident_bytes() -> u64 {
    use tikv_jemalloc_ctl::{epoch, stats};
    let _ = epoch::advance();
    stats::resident::read().map_or(0, |b| b as u64)
}

#[cfg(target_env = "msvc")]
pub fn allocated_bytes() -> u64 {
    0
}

#[cfg(target_env = "msvc")]
pub fn resident_bytes() -> u64 {
    0
}

/// `jemalloc-bg-thread`: turn jemalloc's background purging threads on or off; `false` if
/// the allocator refused.
#[cfg(not(target_env = "msvc"))]
pub fn set_background_thread(on: bool) -> bool {
    tikv_jemalloc_ctl::background_thread::write(on).is_ok()
}

#[cfg(not(target_env = "msvc"))]
pub fn background_thread() -> bool {
    tikv_jemalloc_ctl::background_thread::read().unwrap_or(false)
}

#[cfg(target_env = "msvc")]
pub fn set_background_thread(_on: bool) -> bool {
    false
}

#[cfg(target_env = "msvc")]
pub fn background_thread() -> bool {
    false
}

/// Process RSS from /proc (Linux), for INFO's used_memory_rss.
pub fn process_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or_else(resident_bytes, |pages| pages * 4096)
}

/// "1.50M"-style, like Redis' bytesToHuman.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1024.0 {
        format!("{bytes}B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.2}K", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}M", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2}G", b / (1024.0 * 1024.0 * 1024.0))
    }
}
