//! Cluster-bus messages and their wire codec.
//!
//! Every message carries a [`Header`] with the sender's view of itself (as in Redis'
//! `clusterMsg` header): epochs, role, replication offset, claimed slots. Ping/Pong/Meet
//! also gossip about a few other nodes, always including those the sender sees failing.
//!
//! Framing is [`crate::wire`]'s (`len: u32 LE` · `version: u8` · postcard body); decoding is
//! pure: an incomplete frame is `Ok(None)`, anything malformed or out of bounds is an error —
//! never a panic — and the connection should be dropped.

use serde::{Deserialize, Serialize};

use crate::topology::{NodeFlags, NodeId, SlotBitmap};
use crate::wire::{FrameError, Framing};

/// 2: `Header::repl_port` and `GossipEntry::repl_port` (inter-region replication endpoint).
/// 3: `Body::Publish` (PUBLISH reaches every node of the region, SPUBLISH a slot's shard).
pub const BUS_PROTOCOL_VERSION: u8 = 3;
/// Hard limit on one frame body; a header with its 2 KiB slot bitmap plus full gossip stays
/// far below.
pub const MAX_BUS_FRAME_BYTES: usize = 16 * 1024;
/// Most bytes of channel plus message a `Body::Publish` carries (the frame holds a header
/// too): a larger PUBLISH reaches this node's subscribers only.
pub const MAX_BUS_PUBLISH_BYTES: usize = 12 * 1024;
/// Gossip entries per Ping/Pong/Meet.
pub const MAX_GOSSIP_ENTRIES: usize = 16;
/// Longest host name accepted in a header or gossip entry.
pub const MAX_HOST_BYTES: usize = 255;
const FRAMING: Framing = Framing {
    version: BUS_PROTOCOL_VERSION,
    max_body: MAX_BUS_FRAME_BYTES,
};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("cluster bus: {0}")]
    Frame(#[from] FrameError),
    #[error("invalid frame content: {0}")]
    Invalid(&'static str),
}

/// The sender's view of itself, attached to every message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub sender: NodeId,
    pub host: String,
    pub port: u16,
    pub bus_port: u16,
    /// The sender's inter-region replication port on `host` (0 = none).
    pub repl_port: u16,
    pub current_epoch: u64,
    /// The sender's config epoch; a replica sends its primary's (as Redis does).
    pub config_epoch: u64,
    /// `None` for a primary, else the primary it replicates.
    pub replica_of: Option<NodeId>,
    pub repl_offset: u64,
    /// The sender's flags about itself (only NOFAILOVER is meaningful).
    pub flags: NodeFlags,
    /// Slots the sender owns; a replica sends its primary's.
    pub slots: SlotBitmap,
    /// Set by a primary that paused writes for a manual failover.
    pub mf_paused: bool,
}

/// What the sender knows about another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipEntry {
    pub id: NodeId,
    pub host: String,
    pub port: u16,
    pub bus_port: u16,
    /// Its inter-region replication port on `host` (0 = none).
    pub repl_port: u16,
    /// PFAIL/FAIL bits here are failure reports.
    pub flags: NodeFlags,
    pub pong_received_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Join request to an address we know only by `host:bus_port`.
    Meet {
        gossip: Vec<GossipEntry>,
    },
    Ping {
        gossip: Vec<GossipEntry>,
    },
    Pong {
        gossip: Vec<GossipEntry>,
    },
    /// `node` is FAIL: set the flag without waiting for reports.
    Fail {
        node: NodeId,
    },
    /// A replica asks primaries for a vote in `Header::current_epoch`.
    /// `force_ack`: manual failover — vote even if the primary is not FAIL.
    FailoverAuthRequest {
        force_ack: bool,
    },
    FailoverAuthAck,
    /// The receiver's slot claim is stale: `node` owns these slots at `config_epoch`.
    Update {
        node: NodeId,
        config_epoch: u64,
        slots: SlotBitmap,
    },
    /// Replica → its primary: start a manual failover (pause writes, send offset).
    MfStart,
    /// A PUBLISH (or, `shard`, an SPUBLISH) made on the sender, for this node's subscribers.
    /// Not part of the cluster state: the shell delivers it (`ClusterNode` ignores it).
    Publish {
        channel: Vec<u8>,
        message: Vec<u8>,
        shard: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusMessage {
    pub header: Header,
    pub body: Body,
}

impl BusMessage {
    /// Kind name for stats and logs.
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Meet { .. } => "meet",
            Body::Ping { .. } => "ping",
            Body::Pong { .. } => "pong",
            Body::Fail { .. } => "fail",
            Body::FailoverAuthRequest { .. } => "auth-req",
            Body::FailoverAuthAck => "auth-ack",
            Body::Update { .. } => "update",
            Body::MfStart => "mfstart",
            Body::Publish { .. } => "publish",
        }
    }
}

/// Appends one frame to `out`; returns the bytes written.
pub fn encode_into(msg: &BusMessage, out: &mut Vec<u8>) -> Result<usize, BusError> {
    Ok(FRAMING.encode_into(msg, out)?)
}

pub fn encode(msg: &BusMessage) -> Result<Vec<u8>, BusError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Decodes one frame from the front of `buf`: `Ok(Some((msg, consumed)))`, `Ok(None)` when
/// more bytes are needed, or an error (drop the link).
pub fn decode(buf: &[u8]) -> Result<Option<(BusMessage, usize)>, BusError> {
    let Some((msg, n)) = FRAMING.decode::<BusMessage>(buf)? else {
        return Ok(None);
    };
    validate(&msg)?;
    Ok(Some((msg, n)))
}

/// Checks what the type system does not: lengths and flag bits.
pub fn validate(msg: &BusMessage) -> Result<(), BusError> {
    let h = &msg.header;
    if !h.slots.is_valid() {
        return Err(BusError::Invalid("slot bitmap length"));
    }
    if h.host.len() > MAX_HOST_BYTES {
        return Err(BusError::Invalid("host too long"));
    }
    if h.flags.0 & !NodeFlags::ALL != 0 {
        return Err(BusError::Invalid("unknown flag bits"));
    }
    if h.replica_of == Some(h.sender) {
        return Err(BusError::Invalid("node replicates itself"));
    }
    match &msg.body {
        Body::Meet { gossip } | Body::Ping { gossip } | Body::Pong { gossip } => {
            if gossip.len() > MAX_GOSSIP_ENTRIES {
                return Err(BusError::Invalid("too many gossip entries"));
            }
            for g in gossip {
                if g.host.len() > MAX_HOST_BYTES {
                    return Err(BusError::Invalid("host too long"));
                }
                if g.flags.0 & !NodeFlags::ALL != 0 {
                    return Err(BusError::Invalid("unknown flag bits"));
                }
            }
        }
        Body::Update { slots, .. } => {
            if !slots.is_valid() {
                return Err(BusError::Invalid("slot bitmap length"));
            }
        }
        Body::Fail { .. } | Body::FailoverAuthRequest { .. } | Body::FailoverAuthAck => {}
        Body::MfStart => {}
        Body::Publish {
            channel, message, ..
        } => {
            if channel.len() + message.len() > MAX_BUS_PUBLISH_BYTES {
                return Err(BusError::Invalid("publish too large"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        let mut slots = SlotBitmap::default();
        slots.set(0, true);
        slots.set(16383, true);
        Header {
            sender: NodeId::from_u128(7),
            host: "10.0.0.1".into(),
            port: 7000,
            bus_port: 17000,
            repl_port: 7102,
            current_epoch: 9,
            config_epoch: 4,
            replica_of: None,
            repl_offset: 1234,
            flags: NodeFlags::default(),
            slots,
            mf_paused: false,
        }
    }

    fn sample() -> BusMessage {
        BusMessage {
            header: header(),
            body: Body::Ping {
                gossip: vec![GossipEntry {
                    id: NodeId::from_u128(8),
                    host: "10.0.0.2".into(),
                    port: 7001,
                    bus_port: 17001,
                    repl_port: 7103,
                    flags: NodeFlags(NodeFlags::PFAIL),
                    pong_received_ms: 55,
                }],
            },
        }
    }

    #[test]
    fn roundtrip_and_incomplete() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode(&bytes).unwrap(), Some((sample(), bytes.len())));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn rejects_bad_prefix_version_and_bitmap() {
        assert_eq!(
            decode(&[0, 0, 0, 0]),
            Err(BusError::Frame(FrameError::Empty))
        );
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff, 0x7f]),
            Err(BusError::Frame(FrameError::TooLarge { .. }))
        ));
        let mut bytes = encode(&sample()).unwrap();
        bytes[4] = 99;
        assert_eq!(
            decode(&bytes),
            Err(BusError::Frame(FrameError::Version(99)))
        );

        // A 3-byte bitmap: well-formed postcard, invalid content.
        let mut bad = sample();
        bad.header.slots = postcard::from_bytes(&[3, 1, 2, 3]).unwrap();
        let bytes = encode(&bad).unwrap();
        assert_eq!(decode(&bytes), Err(BusError::Invalid("slot bitmap length")));
    }

    #[test]
    fn rejects_too_much_gossip() {
        let mut m = sample();
        if let Body::Ping { gossip } = &mut m.body {
            let g = gossip[0].clone();
            gossip.resize(MAX_GOSSIP_ENTRIES + 1, g);
        }
        let bytes = encode(&m).unwrap();
        assert_eq!(
            decode(&bytes),
            Err(BusError::Invalid("too many gossip entries"))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn garbage_body_after_valid_prefix_never_panics(
            body in proptest::collection::vec(any::<u8>(), 1..3000)
        ) {
            let mut frame = (body.len() as u32 + 1).to_le_bytes().to_vec();
            frame.push(BUS_PROTOCOL_VERSION);
            frame.extend_from_slice(&body);
            // Either an error or a message that passed validation.
            if let Ok(Some((msg, used))) = decode(&frame) {
                prop_assert_eq!(used, frame.len());
                prop_assert!(validate(&msg).is_ok());
            }
        }

        #[test]
        fn mutated_valid_frames_never_panic(idx in 0usize..2200, byte in any::<u8>()) {
            let mut bytes = encode(&sample()).unwrap();
            let i = idx % bytes.len();
            bytes[i] = byte;
            let _ = decode(&bytes);
        }
    }
}
