//! meridian-replication: how regions exchange state, without doing any I/O.
//!
//! Everything here is a state machine driven by its caller (the QUIC shell in production,
//! the simulator in tests): time is a `now_ms` argument, frames go in through `handle_*` and
//! come out of `poll_*`, and the keyspace is reached only through [`LinkStore`].
//!
//! - [`codec`]: versioned, length-prefixed postcard frames with a hard size limit.
//! - [`store`]: the narrow trait the protocol needs from the keyspace, implemented for
//!   [`meridian_crdt::Keyspace`].
//! - [`proto::link`]: [`RegionLink`], one region's endpoint: per-peer delta logs, acks,
//!   resends, backpressure, GC frontier gossip; it embeds the anti-entropy engine.
//! - [`proto::anti_entropy`]: slot digests → key fingerprints → entries, so repair traffic
//!   grows with divergence, not data size; also bootstraps an empty region.
//! - [`replica_stream`]: the in-region replica stream (PSYNC-like): frames, the primary's
//!   bounded backlog, and both ends as state machines (`StreamSender`, `StreamReceiver`).

pub mod codec;
pub mod proto;
pub mod replica_stream;
pub mod store;
#[cfg(feature = "transport")]
pub mod transport;

pub use codec::{
    decode, encode, encode_into, CodecError, Frame, FrameEncoder, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
pub use proto::anti_entropy::{AntiEntropy, AntiEntropyStats};
pub use proto::link::{LinkConfig, LinkStats, PeerStatus, RegionLink, DEFAULT_MAX_CLOCK_OFFSET_MS};
pub use store::LinkStore;

/// The largest key state a local write may leave behind on a node with peer regions, in
/// `Entry::heap_bytes` (the keyspace's O(1) size estimate, key length added): a key's delta
/// and its whole state (anti-entropy, a replica's snapshot) then encode within one region
/// link frame ([`MAX_FRAME_BYTES`]), the margin covering the frame's envelope and element
/// dots the estimate does not count. A write past it is refused before it is applied.
pub const LINK_MAX_ENTRY_BYTES: usize = MAX_FRAME_BYTES - 64 * 1024;
/// [`LINK_MAX_ENTRY_BYTES`] for a node without peer regions, bounded by the replica
/// stream's frame ([`replica_stream::MAX_REPLICA_FRAME_BYTES`]) instead.
pub const REPLICA_MAX_ENTRY_BYTES: usize = replica_stream::MAX_REPLICA_FRAME_BYTES - 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use meridian_crdt::{Delta, Entry, Hlc, Keyspace, KeyspaceConfig, RegionId, Stamp};

    /// A key state grown by `fill` (one element per call, written in each of three regions
    /// and merged) until it passes `max` by one step.
    fn grown(
        max: usize,
        key: &[u8],
        fill: impl Fn(&mut meridian_crdt::EntryWriter, usize),
    ) -> Entry {
        let regions: Vec<RegionId> = (1..=3).map(RegionId).collect();
        let mut spaces: Vec<Keyspace> = regions
            .iter()
            .map(|&region| {
                Keyspace::new(KeyspaceConfig {
                    region,
                    retain_tombstones: true,
                    seed: 7,
                })
            })
            .collect();
        let mut hlc = Hlc(0);
        let mut merged = Entry::default();
        for i in 0.. {
            for (ks, &region) in spaces.iter_mut().zip(&regions) {
                hlc = hlc.tick(1_000 + i as u64);
                ks.write(key, Stamp::new(hlc, region), 1_000, |w| fill(w, i));
                for d in ks.drain_deltas() {
                    merged.merge(&d.state);
                }
            }
            if key.len() + merged.heap_bytes() > max {
                return merged;
            }
        }
        unreachable!()
    }

    /// A key's encoding is within its size estimate (plus a frame's envelope), so a key at
    /// the bound, written from three regions, fits one region link frame: as a delta carrying
    /// its whole state and as an anti-entropy entry. Strings at the bound itself; sets of tiny
    /// members and hashes of tiny fields (the worst cases for the per-element margin) at a
    /// smaller size, the ratio being what matters.
    #[test]
    fn a_key_at_the_entry_bound_fits_one_frame() {
        let key = b"k";
        let states = [
            grown(LINK_MAX_ENTRY_BYTES, key, |w, i| {
                w.set_str(
                    Bytes::from(vec![b'x'; LINK_MAX_ENTRY_BYTES - 64 + 64 * i]),
                    false,
                )
            }),
            grown(96 * 1024, key, |w, i| {
                w.sadd(&(i as u32).to_le_bytes());
            }),
            grown(96 * 1024, key, |w, i| {
                w.hash_set(&(i as u32).to_le_bytes(), Bytes::from_static(b"v"));
            }),
        ];
        for state in states {
            let estimate = key.len() + state.heap_bytes();
            let batch = Frame::Batch(codec::Batch {
                origin: RegionId(1),
                epoch: 1,
                floor: 1,
                first_seq: 1,
                moved: vec![],
                deltas: vec![Delta {
                    key: Bytes::from_static(key),
                    slot: meridian_crdt::key_slot(key),
                    stamp: Stamp::new(Hlc(u64::MAX >> 1), RegionId(u16::MAX)),
                    full: true,
                    state: state.clone(),
                }],
            });
            let ae = Frame::AeEntries(codec::AeEntries {
                round: u64::MAX,
                entries: vec![codec::KeyState {
                    key: Bytes::from_static(key),
                    state,
                }],
                want: Vec::new(),
                last: true,
                offer: Vec::new(),
                left_to_deltas: Bytes::new(),
            });
            for f in [batch, ae] {
                let len = encode(&f).expect("fits one frame").len();
                assert!(len <= estimate + 1024, "{len} > {estimate}");
            }
        }
        const {
            assert!(LINK_MAX_ENTRY_BYTES + 1024 < MAX_FRAME_BYTES);
            assert!(REPLICA_MAX_ENTRY_BYTES + 1024 < replica_stream::MAX_REPLICA_FRAME_BYTES);
        }
    }
}
