//! Memory per key in the keyspace, counted by a wrapping global allocator.

use bytes::Bytes;
use meridian_crdt::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

struct Counting;
static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as isize, Relaxed);
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size() as isize, Relaxed);
        ALLOCS.fetch_sub(1, Relaxed);
        System.dealloc(p, l)
    }
}
#[global_allocator]
static A: Counting = Counting;

/// Bytes requested from the allocator per key (before size-class rounding) and allocations
/// per key, for 200 000 string keys (100-byte values) and 200 000 counters in a single-region
/// keyspace: where a key's memory goes, without a server. `cargo run --release -p
/// meridian-crdt --example mem_per_key`.
fn main() {
    use std::mem::size_of;
    println!(
        "sizes: Entry {} B, Comp {} B, Val {} B, Str {} B, Register {} B, OrSet {} B, OrMap {} B",
        size_of::<Entry>(),
        size_of::<Comp>(),
        size_of::<Val>(),
        size_of::<Str>(),
        size_of::<Register>(),
        size_of::<OrSet>(),
        size_of::<OrMap>()
    );
    for kind in ["string", "counter"] {
        let mut ks = Keyspace::new(KeyspaceConfig::default());
        let n = 200_000u64;
        let (b0, a0) = (BYTES.load(Relaxed), ALLOCS.load(Relaxed));
        for i in 0..n {
            let key = format!("key:{i:08}");
            let st = Stamp::new(Hlc::from_parts(1_000 + i, 0), RegionId(0));
            if kind == "string" {
                let v = Bytes::from(vec![b'x'; 100]);
                ks.write(key.as_bytes(), st, 0, |w| {
                    w.set_str_shared(v.clone(), false)
                });
            } else {
                ks.write(key.as_bytes(), st, 0, |w| w.incr_by(1).unwrap());
            }
            ks.drain_deltas().for_each(drop);
        }
        let (b1, a1) = (BYTES.load(Relaxed), ALLOCS.load(Relaxed));
        println!(
            "{kind}: {} B/key, {} allocs/key",
            (b1 - b0) as f64 / n as f64,
            (a1 - a0) as f64 / n as f64
        );
    }
}
