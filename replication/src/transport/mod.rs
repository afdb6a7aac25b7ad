//! Transports: the I/O shells that carry codec frames between regions.
//!
//! The protocol state machines in [`crate::proto`] never touch a socket; a transport moves
//! their already-encoded frames between processes and hands decoded frames back. Only QUIC
//! exists today ([`quic`]): mutually authenticated TLS 1.3, region id bound to the certificate.

pub mod quic;

pub use quic::{
    generate_ca, generate_node_cert, region_dns_name, write_deployment, PeerConfig, PeerConnStats,
    PeerKey, QuicConfig, QuicTransport, SendError, TransportError, TransportStats, ALPN,
};
