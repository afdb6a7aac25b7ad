//! QUIC transport between regions (quinn + rustls, ring provider, TLS 1.3 only).
//!
//! Trust model: one deployment CA signs every node certificate; a node certificate names
//! its region as DNS SAN (and CN) `<region>.meridian`. Links are mutually authenticated:
//! the dialer checks the acceptor's certificate is valid for `<peer>.meridian`, the acceptor
//! requires a client certificate signed by the CA and maps its SAN to exactly one expected
//! peer region. Anything else (unknown CA, unexpected region, wrong ALPN) is closed and
//! logged; it never affects other links.
//!
//! Topology: one QUIC connection per pair of *nodes*; a peer is a [`PeerKey`] (its region,
//! proven by its certificate, and its advertised replication address), so the nodes of a
//! region that is a cluster are distinct peers. Between two regions configured with each
//! other, the one whose name sorts lower dials (`"a" < "b"`: a's nodes dial b's, b's only
//! accept from a's), so two nodes never race to open two connections. The dialer opens its
//! stream with an identity preamble ([`IDENT_MAGIC`]: its advertised address and region);
//! the acceptor keys the connection by it, registering a node of an accepted region it did
//! not know yet (at most [`MAX_PEERS_PER_REGION`] per region). Peers come from the config
//! and at run time ([`QuicTransport::add_peer`], [`QuicTransport::remove_peer`]: a
//! discovered topology).
//!
//! Regions that join at run time: a node accepts a connection from a region it is not
//! configured with when [`QuicConfig::accept_new_regions`] is set and the certificate, from
//! the deployment CA, is valid for the region the preamble claims; that region is known from
//! then on ([`QuicTransport::regions`]). Such a region is never dialed by the acceptor: the
//! joiner dials, whatever the names. So a node also dials a configured peer whose name
//! sorts lower when that peer has not connected within [`JOIN_GRACE_MS`] (the peer may not
//! know this region); a peer that does know it refuses with [`CLOSE_DIAL_ORDER`] (it dials
//! itself), and the dial is retried only after [`JOIN_RETRY_MS`] without a connection.
//! The dialer keeps the link up: reconnect with exponential backoff ([`INITIAL_BACKOFF_MS`]
//! doubling to [`MAX_BACKOFF_MS`]), keep-alives from quinn's `TransportConfig`. A new
//! connection from a peer node replaces its previous one (restart); nodes of one region
//! never replace each other's.
//!
//! Framing: each side opens one unidirectional stream per connection and writes codec
//! frames (`len: u32 LE` prefix, see [`crate::codec`]) back to back. The reader decodes with
//! [`crate::codec::decode`]; a malformed or oversize frame closes that connection (the
//! dialer then reconnects). Frames still queued or in flight when a connection dies are
//! lost: the protocol above resends unacknowledged batches, and merges are idempotent.
//!
//! Queues are bounded: [`QuicTransport::send`] never blocks (a full per-peer queue is an
//! error the caller handles, e.g. by falling back to anti-entropy); received frames go to
//! one bounded channel, so a slow consumer back-pressures the QUIC streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::VarInt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::codec::{decode, Frame};

/// ALPN protocol id; bump with incompatible transport changes.
pub const ALPN: &[u8] = b"meridian-repl/1";
/// DNS suffix binding a region id into a certificate: region `a` → `a.meridian`.
pub const REGION_DNS_SUFFIX: &str = "meridian";
pub const INITIAL_BACKOFF_MS: u64 = 50;
pub const MAX_BACKOFF_MS: u64 = 2_000;
/// A connection that stayed up this long resets the dial backoff.
const STABLE_CONNECTION_MS: u64 = 1_000;
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The writer hands queued frames to the stream together, up to these bounds per write.
const WRITE_COALESCE_FRAMES: usize = 64;
const WRITE_COALESCE_BYTES: usize = 1 << 20;
const MAX_REGION_NAME_BYTES: usize = 63;
/// First bytes a dialer writes on its stream, then its advertised address (`u16` LE length,
/// UTF-8 `host:port`), then codec frames.
pub const IDENT_MAGIC: &[u8; 4] = b"MRI1";
const MAX_IDENT_BYTES: usize = 255;
/// Nodes of one peer region this endpoint keeps (configured, added or accepted).
pub const MAX_PEERS_PER_REGION: usize = 1024;
/// Identity preamble of a dialer that also names its region (`MRI2`: address, then a `u8`
/// length and the region name): the acceptor checks the certificate against that name
/// when the region is not one it knows (a region joining at run time).
pub const IDENT_MAGIC_REGION: &[u8; 4] = b"MRI2";
/// A node waits this long for a configured peer whose name sorts lower to dial it before
/// dialing it itself (see the module doc: a region that joins at run time).
pub const JOIN_GRACE_MS: u64 = 1_500;
/// After a peer refused such a dial ([`CLOSE_DIAL_ORDER`]: it dials us itself), the next
/// attempt waits this long without a connection.
pub const JOIN_RETRY_MS: u64 = 10_000;

/// QUIC application close codes (visible to the peer).
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;
const CLOSE_IDENTITY: u32 = 2;
const CLOSE_REPLACED: u32 = 3;
const CLOSE_STREAM_END: u32 = 4;
/// The acceptor knows the dialer's region and dials it itself (the lower name dials).
pub const CLOSE_DIAL_ORDER: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "invalid region name {0:?}: use 1-63 characters of a-z, 0-9 and '-' (not at the ends)"
    )]
    InvalidRegion(String),
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("bad PEM ({0})")]
    Pem(&'static str),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC configuration: {0}")]
    Quic(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("unknown peer region {0:?}")]
    UnknownPeer(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("unknown peer region {0:?}")]
    UnknownPeer(String),
    #[error("no connection to peer region {0:?}")]
    NotConnected(String),
    #[error("send queue to peer region {0:?} is full")]
    Full(String),
}

/// `a` → `a.meridian`: the name a region's certificate must be valid for.
pub fn region_dns_name(region: &str) -> String {
    format!("{region}.{REGION_DNS_SUFFIX}")
}

fn check_region(region: &str) -> Result<(), TransportError> {
    let ok = !region.is_empty()
        && region.len() <= MAX_REGION_NAME_BYTES
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TransportError::InvalidRegion(region.to_string()))
    }
}

/// The CA's parameters. Node certificates are issued from these same parameters plus the
/// CA key (its subject DN must match the CA certificate byte for byte, which rcgen
/// guarantees by encoding the same DN), so no X.509 parser is needed to sign.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "meridian deployment CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A fresh deployment CA: `(ca_cert_pem, ca_key_pem)`.
pub fn generate_ca() -> Result<(String, String), TransportError> {
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node certificate for `region`, signed by the CA: `(cert_pem, key_pem)`. The region is
/// bound as DNS SAN and CN `<region>.meridian`; usable as TLS server and client certificate.
pub fn generate_node_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    region: &str,
) -> Result<(String, String), TransportError> {
    check_region(region)?;
    // The CA certificate itself is not parsed (see `ca_params`); check it is PEM at least.
    CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|_| TransportError::Pem("CA certificate"))?;
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let name = region_dns_name(region);
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(name.clone().try_into()?)];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write a local/test deployment into `dir` (created if missing): `ca.pem`, `ca-key.pem`,
/// and for each region `<region>.pem`, `<region>-key.pem`. Keys are mode 0600 on Unix.
pub fn write_deployment(dir: &Path, regions: &[&str]) -> Result<(), TransportError> {
    for region in regions {
        check_region(region)?;
    }
    std::fs::create_dir_all(dir)?;
    let (ca_cert, ca_key) = generate_ca()?;
    std::fs::write(dir.join("ca.pem"), &ca_cert)?;
    write_private(&dir.join("ca-key.pem"), &ca_key)?;
    for region in regions {
        let (cert, key) = generate_node_cert(&ca_cert, &ca_key, region)?;
        std::fs::write(dir.join(format!("{region}.pem")), cert)?;
        write_private(&dir.join(format!("{region}-key.pem")), &key)?;
    }
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// A peer region and the replication endpoint to dial it at (used only when this region
/// is the dialer, i.e. its name sorts lower).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub region: String,
    pub addr: SocketAddr,
}

/// One peer node: its region (its certificate's) and its advertised replication address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey {
    pub region: String,
    pub addr: SocketAddr,
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.region, self.addr)
    }
}

#[derive(Debug, Clone)]
pub struct QuicConfig {
    pub region: String,
    /// UDP address to bind (port 0 picks one; see [`QuicTransport::local_addr`]).
    pub bind: SocketAddr,
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub peers: Vec<PeerConfig>,
    /// Regions accepted besides those of `peers` (their nodes are added at run time).
    pub accept_regions: Vec<String>,
    /// Accept connections from any other region whose certificate the deployment CA
    /// signed (a region joining at run time; see the module doc). Off by default here.
    pub accept_new_regions: bool,
    /// The address peers know this node by (sent in the identity preamble); `None`: the
    /// bound address.
    pub advertise: Option<SocketAddr>,
    /// Bound of each per-peer send queue, in frames.
    pub send_queue_frames: usize,
    /// Bound of the received-frames channel, in frames.
    pub recv_queue_frames: usize,
    pub keep_alive_ms: u64,
    pub idle_timeout_ms: u64,
    /// A dial attempt (handshake included) that takes longer is abandoned and retried.
    pub connect_timeout_ms: u64,
}

impl QuicConfig {
    pub fn new(
        region: impl Into<String>,
        bind: SocketAddr,
        ca_cert_pem: impl Into<String>,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
        peers: Vec<PeerConfig>,
    ) -> QuicConfig {
        QuicConfig {
            region: region.into(),
            bind,
            ca_cert_pem: ca_cert_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            peers,
            accept_regions: Vec::new(),
            accept_new_regions: false,
            advertise: None,
            send_queue_frames: 4096,
            recv_queue_frames: 4096,
            keep_alive_ms: 1_000,
            idle_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
        }
    }
}

/// A peer's QUIC connection: up or not, and its traffic counters (for `INFO crdt` and
/// metrics). Not to be confused with the link core's `proto::link::PeerState` (active,
/// expelled, refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerConnStats {
    pub connected: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Connections established (dialed or accepted) so far.
    pub connects: u64,
    /// Connections closed because the peer sent a malformed or oversize frame.
    pub protocol_errors: u64,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Incoming connections whose TLS handshake failed (unknown CA, no client cert, ALPN...).
    pub handshake_failures: u64,
    /// Incoming connections with a valid certificate for a region we do not accept from.
    pub identity_rejections: u64,
    pub accepted: u64,
    /// Connections from regions not configured here, accepted (a region joining).
    pub regions_joined: u64,
    /// Dials from a configured region refused because we dial it ([`CLOSE_DIAL_ORDER`]).
    pub dial_order_refusals: u64,
}

#[derive(Default)]
struct Counters {
    handshake_failures: AtomicU64,
    identity_rejections: AtomicU64,
    accepted: AtomicU64,
    regions_joined: AtomicU64,
    dial_order_refusals: AtomicU64,
}

struct Peer {
    key: PeerKey,
    region: String,
    /// The task dialing it (we are the dialer), aborted when the peer is removed.
    dial_task: Mutex<Option<JoinHandle<()>>>,
    send_tx: mpsc::Sender<Bytes>,
    /// Held by the writer of the live connection; a replaced connection releases it when
    /// its task ends.
    send_rx: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    /// The live connection and its generation.
    current: Mutex<Option<(u64, quinn::Connection)>>,
    generation: AtomicU64,
    dialing: AtomicBool,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    connects: AtomicU64,
    protocol_errors: AtomicU64,
}

impl Peer {
    fn new(key: PeerKey, send_queue_frames: usize) -> Peer {
        let (send_tx, send_rx) = mpsc::channel(send_queue_frames);
        Peer {
            region: key.region.clone(),
            key,
            dial_task: Mutex::new(None),
            send_tx,
            send_rx: tokio::sync::Mutex::new(send_rx),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            dialing: AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
        }
    }

    /// Close the live connection and stop dialing (the peer was removed).
    fn close(&self) {
        if let Some(t) = self
            .dial_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
        if let Some((_, c)) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            c.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"peer removed");
        }
    }

    fn install(&self, conn: quinn::Connection) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = current.replace((generation, conn)) {
            old.close(
                VarInt::from_u32(CLOSE_REPLACED),
                b"replaced by a new connection",
            );
        }
        self.connects.fetch_add(1, Ordering::Relaxed);
        generation
    }

    fn uninstall(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*current, Some((g, _)) if g == generation) {
            *current = None;
        }
    }

    fn connected(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn state(&self) -> PeerConnStats {
        PeerConnStats {
            connected: self.connected(),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
        }
    }
}

struct EndpointShared {
    region: String,
    /// Sent in the identity preamble when dialing.
    advertise: String,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// Regions whose nodes we talk to: configured, accepted, and joined at run time.
    regions: Mutex<std::collections::BTreeSet<String>>,
    /// Of those, the configured ones still configured (not forgotten): between two such
    /// regions the lower name dials.
    configured: Mutex<std::collections::BTreeSet<String>>,
    accept_new_regions: bool,
    peers: Mutex<HashMap<PeerKey, Arc<Peer>>>,
    send_queue_frames: usize,
    recv_tx: mpsc::Sender<(PeerKey, Frame)>,
    counters: Counters,
    connect_timeout: Duration,
}

impl EndpointShared {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, Arc<Peer>>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer `key`, registered if new (`None`: its region is not one we talk to, or it
    /// has too many nodes already). Returns whether it was new.
    fn peer_or_add(&self, key: &PeerKey) -> Option<(Arc<Peer>, bool)> {
        if !self.knows(&key.region) {
            return None;
        }
        let mut peers = self.peers();
        if let Some(p) = peers.get(key) {
            return Some((p.clone(), false));
        }
        if peers.keys().filter(|k| k.region == key.region).count() >= MAX_PEERS_PER_REGION {
            return None;
        }
        let p = Arc::new(Peer::new(key.clone(), self.send_queue_frames));
        peers.insert(key.clone(), p.clone());
        Some((p, true))
    }

    fn knows(&self, region: &str) -> bool {
        self.regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(region)
    }

    fn is_configured(&self, region: &str) -> bool {
        self.configured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(region)
    }

    /// The nodes of `region`, in key order.
    fn region_peers(&self, region: &str) -> Vec<Arc<Peer>> {
        let mut v: Vec<Arc<Peer>> = self
            .peers()
            .values()
            .filter(|p| p.region == region)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

/// One node's replication endpoint. Must be created inside a tokio runtime; dropping it
/// closes the endpoint and stops its tasks.
pub struct QuicTransport {
    shared: Arc<EndpointShared>,
    recv_rx: tokio::sync::Mutex<mpsc::Receiver<(PeerKey, Frame)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl QuicTransport {
    /// Bind the endpoint, start accepting, and dial every configured peer whose name sorts
    /// above ours.
    pub fn start(cfg: QuicConfig) -> Result<QuicTransport, TransportError> {
        check_region(&cfg.region)?;
        for peer in &cfg.peers {
            check_region(&peer.region)?;
            if peer.region == cfg.region {
                return Err(TransportError::InvalidRegion(peer.region.clone()));
            }
        }
        assert!(cfg.send_queue_frames > 0 && cfg.recv_queue_frames > 0);

        let ca = CertificateDer::from_pem_slice(cfg.ca_cert_pem.as_bytes())
            .map_err(|_| TransportError::Pem("CA certificate"))?;
        let cert = CertificateDer::from_pem_slice(cfg.cert_pem.as_bytes())
            .map_err(|_| TransportError::Pem("node certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes())
            .map_err(|_| TransportError::Pem("node key"))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca)?;
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(vec![cert.clone()], key.clone_key())?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];

        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(cfg.keep_alive_ms)));
        transport.max_idle_timeout(Some(
            Duration::from_millis(cfg.idle_timeout_ms)
                .try_into()
                .map_err(|e| TransportError::Quic(format!("idle timeout: {e}")))?,
        ));
        // Flow-control windows sized for the link's bandwidth-delay product: 300 k deltas/s
        // of ~54 B over a 100 ms round trip keep ~1.6 MB in flight, more than quinn's
        // defaults (1.25 MB per stream) allow. Buffers grow only as data arrives.
        transport.stream_receive_window(VarInt::from_u32(8 << 20));
        transport.receive_window(VarInt::from_u32(16 << 20));
        transport.send_window(16 << 20);
        // One uni stream per direction per connection; nothing else is accepted.
        transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
        transport.max_concurrent_uni_streams(VarInt::from_u32(1));
        let transport = Arc::new(transport);

        let quic_server = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server_config.transport_config(transport.clone());
        let quic_client = QuicClientConfig::try_from(client_tls)
            .map_err(|e| TransportError::Quic(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic_client));
        client_config.transport_config(transport);

        let endpoint = quinn::Endpoint::server(server_config, cfg.bind)?;
        let advertise = match cfg.advertise {
            Some(a) => a,
            None => endpoint.local_addr()?,
        };
        let mut regions: std::collections::BTreeSet<String> =
            cfg.peers.iter().map(|p| p.region.clone()).collect();
        for r in &cfg.accept_regions {
            check_region(r)?;
            if *r == cfg.region {
                return Err(TransportError::InvalidRegion(r.clone()));
            }
            regions.insert(r.clone());
        }
        let (recv_tx, recv_rx) = mpsc::channel(cfg.recv_queue_frames);
        let configured = regions.clone();
        let shared = Arc::new(EndpointShared {
            region: cfg.region.clone(),
            advertise: advertise.to_string(),
            endpoint,
            client_config,
            regions: Mutex::new(regions),
            configured: Mutex::new(configured),
            accept_new_regions: cfg.accept_new_regions,
            peers: Mutex::new(HashMap::new()),
            send_queue_frames: cfg.send_queue_frames,
            recv_tx,
            counters: Counters::default(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        });
        let accept_task = tokio::spawn(accept_loop(shared.clone()));
        let transport = QuicTransport {
            shared,
            recv_rx: tokio::sync::Mutex::new(recv_rx),
            tasks: Mutex::new(vec![accept_task]),
        };
        for peer in &cfg.peers {
            transport.add_peer(&peer.region, peer.addr)?;
        }
        info!(region = %cfg.region, addr = ?transport.local_addr().ok(), "replication endpoint up");
        Ok(transport)
    }

    pub fn region(&self) -> &str {
        &self.shared.region
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// The address this node gives peers (its identity preamble).
    pub fn advertised(&self) -> &str {
        &self.shared.advertise
    }

    /// Talk to the node of `region` at `addr` (its advertised replication address): when
    /// this region dials (its name sorts lower), keep a connection up (dial, then redial
    /// with backoff); otherwise wait for the node to dial, and dial it if it has not within
    /// [`JOIN_GRACE_MS`] (it may not know this region: see the module doc). A node of a
    /// region that joined at run time (not configured here) is not dialed: it dials. A
    /// second call for a node is a no-op. `region` must be a known one.
    pub fn add_peer(&self, region: &str, addr: SocketAddr) -> Result<PeerKey, TransportError> {
        let key = PeerKey {
            region: region.to_string(),
            addr,
        };
        let (p, _) = self
            .shared
            .peer_or_add(&key)
            .ok_or_else(|| TransportError::UnknownPeer(region.to_string()))?;
        // A region that joined at run time dials us (whatever the names): never dialed.
        if self.shared.is_configured(region) && !p.dialing.swap(true, Ordering::Relaxed) {
            let task = if self.shared.region.as_str() < region {
                tokio::spawn(dial_loop(self.shared.clone(), p.clone(), addr))
            } else {
                tokio::spawn(join_loop(self.shared.clone(), p.clone(), addr))
            };
            *p.dial_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(key)
    }

    /// Every region this node talks to (configured, accepted, joined at run time).
    pub fn regions(&self) -> Vec<String> {
        self.shared
            .regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Stop talking to `region` (`MERIDIAN REGION FORGET`, or a region refused): every
    /// node of it is removed (connections closed, no more dials), and it is no longer a
    /// configured region: if it connects again it is taken as a region joining (if
    /// `accept_new_regions`), which the protocol above then refuses or readmits.
    pub fn forget_region(&self, region: &str) {
        let removed: Vec<Arc<Peer>> = {
            let mut peers = self.shared.peers();
            let keys: Vec<PeerKey> = peers
                .keys()
                .filter(|k| k.region == region)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| peers.remove(k)).collect()
        };
        for p in removed {
            p.close();
        }
        self.shared
            .configured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(region);
    }

    /// Keep a connection to the node of `region` at `addr` up, whatever the dial-order rule
    /// says (tests; the acceptor may refuse it). A second call for a node is a no-op.
    pub fn connect(&self, region: &str, addr: SocketAddr) -> Result<(), TransportError> {
        let key = PeerKey {
            region: region.to_string(),
            addr,
        };
        let (p, _) = self
            .shared
            .peer_or_add(&key)
            .ok_or_else(|| TransportError::UnknownPeer(region.to_string()))?;
        if !p.dialing.swap(true, Ordering::Relaxed) {
            let task = tokio::spawn(dial_loop(self.shared.clone(), p.clone(), addr));
            *p.dial_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(())
    }

    /// Stop talking to `key`: its connection closes and it is no longer dialed (a node that
    /// left its region's topology). It may come back by dialing us, or `add_peer`.
    pub fn remove_peer(&self, key: &PeerKey) {
        let removed = self.shared.peers().remove(key);
        if let Some(p) = removed {
            p.close();
        }
    }

    /// Queue one encoded frame (codec framing, length prefix included) for the node `key`.
    /// Never blocks. The bytes are written as given: the receiver closes the connection if
    /// they are not a valid frame.
    pub fn send_to(&self, key: &PeerKey, frame_bytes: Bytes) -> Result<(), SendError> {
        let p = self
            .shared
            .peers()
            .get(key)
            .cloned()
            .ok_or_else(|| SendError::UnknownPeer(key.to_string()))?;
        Self::queue(&p, frame_bytes)
    }

    fn queue(p: &Peer, frame_bytes: Bytes) -> Result<(), SendError> {
        if !p.connected() {
            return Err(SendError::NotConnected(p.key.to_string()));
        }
        p.send_tx.try_send(frame_bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full(p.key.to_string()),
            mpsc::error::TrySendError::Closed(_) => SendError::NotConnected(p.key.to_string()),
        })
    }

    /// Queue one encoded frame for a node of `region`: the first connected one in key order
    /// (a region of one node: that node).
    pub fn send(&self, region: &str, frame_bytes: Bytes) -> Result<(), SendError> {
        let nodes = self.shared.region_peers(region);
        if nodes.is_empty() {
            return Err(SendError::UnknownPeer(region.to_string()));
        }
        match nodes.iter().find(|p| p.connected()) {
            Some(p) => Self::queue(p, frame_bytes),
            None => Err(SendError::NotConnected(region.to_string())),
        }
    }

    /// Next frame received from any peer node, with its key. `None` once shut down.
    pub async fn recv_from(&self) -> Option<(PeerKey, Frame)> {
        self.recv_rx.lock().await.recv().await
    }

    /// Next frame received from any peer, with the peer's region. `None` once shut down.
    pub async fn recv(&self) -> Option<(String, Frame)> {
        self.recv_from().await.map(|(k, f)| (k.region, f))
    }

    /// A peer region's state: connected if any of its nodes is, counters summed.
    pub fn peer_state(&self, region: &str) -> Option<PeerConnStats> {
        let nodes = self.shared.region_peers(region);
        if nodes.is_empty() && !self.shared.knows(region) {
            return None;
        }
        Some(nodes.iter().fold(PeerConnStats::default(), |mut acc, p| {
            let s = p.state();
            acc.connected |= s.connected;
            acc.bytes_sent += s.bytes_sent;
            acc.bytes_received += s.bytes_received;
            acc.frames_sent += s.frames_sent;
            acc.frames_received += s.frames_received;
            acc.connects += s.connects;
            acc.protocol_errors += s.protocol_errors;
            acc
        }))
    }

    /// Every peer region's state (see [`QuicTransport::peer_state`]), sorted by region.
    pub fn peer_states(&self) -> Vec<(String, PeerConnStats)> {
        self.regions()
            .into_iter()
            .filter_map(|r| self.peer_state(&r).map(|s| (r, s)))
            .collect()
    }

    /// Every peer node's state, sorted by key.
    pub fn node_states(&self) -> Vec<(PeerKey, PeerConnStats)> {
        let mut states: Vec<_> = self
            .shared
            .peers()
            .iter()
            .map(|(k, p)| (k.clone(), p.state()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.shared.counters;
        TransportStats {
            handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
            identity_rejections: c.identity_rejections.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            regions_joined: c.regions_joined.load(Ordering::Relaxed),
            dial_order_refusals: c.dial_order_refusals.load(Ordering::Relaxed),
        }
    }

    /// Close every connection and the endpoint, stop dialing. Also done on drop.
    pub fn shutdown(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let peers: Vec<Arc<Peer>> = self.shared.peers().values().cloned().collect();
        for p in peers {
            p.close();
        }
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(shared: Arc<EndpointShared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        tokio::spawn(accept_one(shared.clone(), incoming));
    }
}

async fn accept_one(shared: Arc<EndpointShared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            shared
                .counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(%remote, error = %e, "replication handshake refused");
            return;
        }
    };
    let identified = match identify(&shared, &conn) {
        Ok(region) => read_ident(&shared, &conn, region).await,
        Err(AcceptRefusal::DialOrder(region)) => {
            shared
                .counters
                .dial_order_refusals
                .fetch_add(1, Ordering::Relaxed);
            debug!(%remote, %region, "dial refused: we dial that region");
            conn.close(VarInt::from_u32(CLOSE_DIAL_ORDER), b"we dial you");
            return;
        }
        Err(AcceptRefusal::Identity(reason)) => Err(reason),
    };
    match identified {
        Ok((peer, stream, buf)) => {
            shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
            info!(%remote, peer = %peer.key, "replication link accepted");
            run_connection(&shared, &peer, conn, Some((stream, buf))).await;
        }
        Err(reason) => {
            shared
                .counters
                .identity_rejections
                .fetch_add(1, Ordering::Relaxed);
            warn!(%remote, %reason, "replication peer refused");
            conn.close(VarInt::from_u32(CLOSE_IDENTITY), reason.as_bytes());
        }
    }
}

/// The dialer's identity preamble (see [`IDENT_MAGIC`]) on its stream: the peer node, the
/// stream, and whatever of the first frames came with it.
async fn read_ident(
    shared: &EndpointShared,
    conn: &quinn::Connection,
    region: Option<String>,
) -> Result<(Arc<Peer>, quinn::RecvStream, Vec<u8>), String> {
    let read = async {
        let mut stream = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if buf.len() >= 6 {
                let len = usize::from(u16::from_le_bytes([buf[4], buf[5]]));
                let named = &buf[..4] == IDENT_MAGIC_REGION;
                if (&buf[..4] != IDENT_MAGIC && !named) || len > MAX_IDENT_BYTES {
                    return Err("bad identity preamble".to_string());
                }
                let head = 6 + len;
                let claim_len = match (named, buf.get(head)) {
                    (false, _) => Some(0),
                    (true, Some(&n)) => Some(1 + usize::from(n)),
                    (true, None) => None,
                };
                if let Some(claim_len) = claim_len.filter(|&c| buf.len() >= head + c) {
                    let addr = std::str::from_utf8(&buf[6..head])
                        .ok()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .ok_or("identity preamble: not a socket address")?;
                    let claim = if named {
                        Some(
                            std::str::from_utf8(&buf[head + 1..head + claim_len])
                                .map_err(|_| "identity preamble: region not UTF-8")?
                                .to_string(),
                        )
                    } else {
                        None
                    };
                    let rest = buf.split_off(head + claim_len);
                    return Ok((addr, claim, stream, rest));
                }
            }
            match stream.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err("stream ended before the identity preamble".into()),
                Err(e) => return Err(e.to_string()),
            }
            if buf.len() > 6 + MAX_IDENT_BYTES + READ_CHUNK_BYTES {
                return Err("identity preamble too long".into());
            }
        }
    };
    let (addr, claim, stream, rest) = tokio::time::timeout(shared.connect_timeout, read)
        .await
        .map_err(|_| "no identity preamble in time".to_string())??;
    let region = match region {
        Some(r) => r,
        None => {
            // A region we do not know: the certificate must be valid for the one claimed.
            let claim = claim.ok_or("certificate names no expected peer region")?;
            check_region(&claim).map_err(|e| e.to_string())?;
            if claim == shared.region {
                return Err("a peer claims our own region".into());
            }
            if !cert_valid_for(conn, &claim)? {
                return Err(format!(
                    "certificate is not valid for the claimed region {claim:?}"
                ));
            }
            let new = shared
                .regions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(claim.clone());
            if new {
                shared
                    .counters
                    .regions_joined
                    .fetch_add(1, Ordering::Relaxed);
                info!(region = %claim, "a region not configured here connects: accepted (accept-new-regions)");
            }
            claim
        }
    };
    let key = PeerKey { region, addr };
    let (peer, new) = shared
        .peer_or_add(&key)
        .ok_or_else(|| format!("too many nodes of region {:?}", key.region))?;
    if new {
        info!(peer = %key, "new peer node");
    }
    Ok((peer, stream, rest))
}

enum AcceptRefusal {
    Identity(String),
    /// A configured region whose name sorts above ours: we dial it.
    DialOrder(String),
}

/// The client certificate of an accepted connection (checked against the CA already).
fn with_client_cert<T>(
    conn: &quinn::Connection,
    f: impl FnOnce(&webpki::EndEntityCert<'_>) -> T,
) -> Result<T, String> {
    let protocol = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if protocol.as_deref() != Some(ALPN) {
        return Err(format!("unsupported protocol {protocol:?}"));
    }
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no client certificate")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("unparsable client certificate: {e}"))?;
    Ok(f(&cert))
}

fn valid_for(cert: &webpki::EndEntityCert<'_>, region: &str) -> bool {
    ServerName::try_from(region_dns_name(region))
        .map(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        .unwrap_or(false)
}

fn cert_valid_for(conn: &quinn::Connection, region: &str) -> Result<bool, String> {
    with_client_cert(conn, |c| valid_for(c, region))
}

/// The region an accepted connection's certificate names, if it is one we know; `None`
/// if it names none we know and new regions are accepted (the dialer's preamble then
/// claims one, checked in `read_ident`).
fn identify(
    shared: &EndpointShared,
    conn: &quinn::Connection,
) -> Result<Option<String>, AcceptRefusal> {
    let known: Vec<String> = shared
        .regions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let matched: Vec<&String> = with_client_cert(conn, |cert| {
        known.iter().filter(|r| valid_for(cert, r)).collect()
    })
    .map_err(AcceptRefusal::Identity)?;
    let region = match matched[..] {
        [region] => region,
        [] if shared.accept_new_regions => return Ok(None),
        [] => {
            return Err(AcceptRefusal::Identity(
                "certificate names no expected peer region".into(),
            ))
        }
        _ => {
            return Err(AcceptRefusal::Identity(
                "certificate names several peer regions".into(),
            ))
        }
    };
    if *region > shared.region && shared.is_configured(region) {
        return Err(AcceptRefusal::DialOrder(region.clone()));
    }
    Ok(Some(region.clone()))
}

async fn dial_loop(shared: Arc<EndpointShared>, peer: Arc<Peer>, addr: SocketAddr) {
    let mut backoff_ms = INITIAL_BACKOFF_MS;
    loop {
        match dial(&shared, &peer.region, addr).await {
            Ok(conn) => {
                info!(peer = %peer.key, "replication link connected");
                let up = Instant::now();
                run_connection(&shared, &peer, conn, None).await;
                if up.elapsed() >= Duration::from_millis(STABLE_CONNECTION_MS) {
                    backoff_ms = INITIAL_BACKOFF_MS;
                }
            }
            Err(e) => debug!(peer = %peer.region, %addr, error = %e, "replication dial failed"),
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(MAX_BACKOFF_MS);
    }
}

/// A peer whose name sorts below ours dials us if it knows us. If it has not connected
/// within [`JOIN_GRACE_MS`], dial it (it may not know this region: a region joining at run
/// time); if it refuses with [`CLOSE_DIAL_ORDER`], it dials us itself: look again only
/// after [`JOIN_RETRY_MS`].
async fn join_loop(shared: Arc<EndpointShared>, peer: Arc<Peer>, addr: SocketAddr) {
    let mut wait_ms = JOIN_GRACE_MS;
    let mut backoff_ms = INITIAL_BACKOFF_MS;
    loop {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        wait_ms = JOIN_GRACE_MS;
        if peer.connected() {
            continue;
        }
        match dial(&shared, &peer.region, addr).await {
            Ok(conn) => {
                if peer.connected() {
                    // The peer dialed us meanwhile: keep its connection.
                    conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"already connected");
                    continue;
                }
                let up = Instant::now();
                run_connection(&shared, &peer, conn.clone(), None).await;
                let order = matches!(
                    conn.close_reason(),
                    Some(quinn::ConnectionError::ApplicationClosed(c))
                        if c.error_code == VarInt::from_u32(CLOSE_DIAL_ORDER)
                );
                if order {
                    debug!(peer = %peer.key, "the peer dials us: not dialing it");
                    wait_ms = JOIN_RETRY_MS;
                } else if up.elapsed() >= Duration::from_millis(STABLE_CONNECTION_MS) {
                    backoff_ms = INITIAL_BACKOFF_MS;
                    wait_ms = backoff_ms;
                } else {
                    wait_ms = backoff_ms;
                    backoff_ms = (backoff_ms * 2).min(MAX_BACKOFF_MS);
                }
            }
            Err(e) => {
                debug!(peer = %peer.region, %addr, error = %e, "replication dial failed");
                wait_ms = backoff_ms.max(JOIN_GRACE_MS);
                backoff_ms = (backoff_ms * 2).min(MAX_BACKOFF_MS);
            }
        }
    }
}

async fn dial(
    shared: &EndpointShared,
    peer: &str,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, &region_dns_name(peer))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(shared.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

enum LinkEnd {
    /// The peer sent bytes that are not a valid frame: close with a protocol error.
    Protocol(String),
    /// The connection or a stream failed, or we are shutting down.
    Lost(String),
}

/// Drive one established connection until it ends; the peer's state tracks it meanwhile.
/// `accepted`: the acceptor already took the dialer's stream (and bytes past its identity
/// preamble); a dialer writes the preamble first.
async fn run_connection(
    shared: &EndpointShared,
    peer: &Peer,
    conn: quinn::Connection,
    accepted: Option<(quinn::RecvStream, Vec<u8>)>,
) {
    let generation = peer.install(conn.clone());
    let ident = if accepted.is_none() {
        let addr = shared.advertise.as_bytes();
        let region = shared.region.as_bytes();
        let mut b = Vec::with_capacity(7 + addr.len() + region.len());
        b.extend_from_slice(IDENT_MAGIC_REGION);
        b.extend_from_slice(&(addr.len().min(MAX_IDENT_BYTES) as u16).to_le_bytes());
        b.extend_from_slice(&addr[..addr.len().min(MAX_IDENT_BYTES)]);
        // Region names are at most 63 bytes (`check_region`).
        b.push(region.len() as u8);
        b.extend_from_slice(region);
        Some(Bytes::from(b))
    } else {
        None
    };
    let end = tokio::select! {
        end = write_loop(peer, &conn, ident) => end,
        end = read_loop(shared, peer, &conn, accepted) => end,
        e = conn.closed() => LinkEnd::Lost(e.to_string()),
    };
    match end {
        LinkEnd::Protocol(reason) => {
            peer.protocol_errors.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %peer.region, %reason, "malformed frame, closing replication link");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
        }
        LinkEnd::Lost(reason) => {
            info!(peer = %peer.region, %reason, "replication link closed");
            conn.close(VarInt::from_u32(CLOSE_STREAM_END), b"link closed");
        }
    }
    peer.uninstall(generation);
}

async fn write_loop(peer: &Peer, conn: &quinn::Connection, ident: Option<Bytes>) -> LinkEnd {
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => return LinkEnd::Lost(e.to_string()),
    };
    if let Some(ident) = ident {
        if let Err(e) = stream.write_all(&ident).await {
            return LinkEnd::Lost(e.to_string());
        }
    }
    let mut queue = peer.send_rx.lock().await;
    let mut chunks: Vec<Bytes> = Vec::with_capacity(WRITE_COALESCE_FRAMES);
    while let Some(frame) = queue.recv().await {
        // Coalesce whatever else is already queued: one stream write (and far fewer
        // packets and wake-ups) instead of one per frame.
        let mut bytes = frame.len();
        chunks.push(frame);
        while chunks.len() < WRITE_COALESCE_FRAMES && bytes < WRITE_COALESCE_BYTES {
            match queue.try_recv() {
                Ok(frame) => {
                    bytes += frame.len();
                    chunks.push(frame);
                }
                Err(_) => break,
            }
        }
        let frames = chunks.len() as u64;
        if let Err(e) = stream.write_all_chunks(&mut chunks).await {
            return LinkEnd::Lost(e.to_string());
        }
        chunks.clear();
        peer.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        peer.frames_sent.fetch_add(frames, Ordering::Relaxed);
    }
    LinkEnd::Lost("send queue closed".into())
}

async fn read_loop(
    shared: &EndpointShared,
    peer: &Peer,
    conn: &quinn::Connection,
    accepted: Option<(quinn::RecvStream, Vec<u8>)>,
) -> LinkEnd {
    let (mut stream, mut buf) = match accepted {
        Some(a) => a,
        None => match conn.accept_uni().await {
            Ok(s) => (s, Vec::with_capacity(READ_CHUNK_BYTES)),
            Err(e) => return LinkEnd::Lost(e.to_string()),
        },
    };
    // `decode` rejects an oversize length as soon as the prefix is in, so this buffer stays
    // below MAX_FRAME_BYTES + prefix + one read chunk.
    let mut first = !buf.is_empty();
    loop {
        if !std::mem::take(&mut first) {
            match stream.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => {
                    peer.bytes_received
                        .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                    buf.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => return LinkEnd::Lost("peer finished its stream".into()),
                Err(e) => return LinkEnd::Lost(e.to_string()),
            }
        }
        let mut consumed = 0;
        loop {
            match decode(&buf[consumed..]) {
                Ok(Some((frame, used))) => {
                    consumed += used;
                    peer.frames_received.fetch_add(1, Ordering::Relaxed);
                    if shared
                        .recv_tx
                        .send((peer.key.clone(), frame))
                        .await
                        .is_err()
                    {
                        return LinkEnd::Lost("transport shut down".into());
                    }
                }
                Ok(None) => break,
                Err(e) => return LinkEnd::Protocol(e.to_string()),
            }
        }
        buf.drain(..consumed);
    }
}
