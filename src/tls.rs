//! TLS on the client port, the in-region replica stream and MIGRATE (rustls, the ring
//! provider the QUIC transport uses), with Redis' configuration: `tls-port`,
//! `tls-cert-file`, `tls-key-file`, `tls-ca-cert-file`/`tls-ca-cert-dir`, `tls-auth-clients`,
//! `tls-replication`, `tls-cluster`.
//!
//! The node's certificate serves both ends, as in Redis: it is the server certificate of
//! `tls-port` and the client certificate a replica (`tls-replication`) or MIGRATE
//! (`tls-cluster`) presents. A peer's certificate must chain to the configured CA; as in
//! Redis, its host name is not checked (nodes are addressed by IP, and the CA is the
//! deployment's).
//!
//! [`ClientStream`] is what a client connection is served over: plain TCP or TLS over TCP,
//! each a monomorphized `connection::serve`.

use crate::config::{AuthClients, Config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A TLS handshake (client port, replica link) that has not finished by then fails.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream a client connection (and a replica stream it turns into) is served over.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes are buffered and must be flushed (TLS records): plain TCP is not.
    const BUFFERED: bool;

    /// Write what the socket takes at once, without waiting (plain TCP: `try_write`; a
    /// buffered stream writes nothing here and everything with `write_all`).
    fn try_write_now(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

impl ClientStream for TcpStream {
    const BUFFERED: bool = false;

    #[inline]
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.try_write(buf)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    const BUFFERED: bool = true;
}

impl ClientStream for tokio_rustls::client::TlsStream<TcpStream> {
    const BUFFERED: bool = true;
}

/// Write all of `bytes`, flushed for a buffered stream.
pub async fn send<S: ClientStream>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(bytes).await?;
    if S::BUFFERED {
        stream.flush().await?;
    }
    Ok(())
}

/// The loaded TLS configuration: what `tls-port` serves with, and what a replica's link and
/// MIGRATE connect with (when `tls-replication`, `tls-cluster`).
pub struct Tls {
    /// `tls-port`'s acceptor (None: no TLS port).
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// The replica link's connector (`tls-replication yes`).
    pub replication: Option<Arc<ClientConfig>>,
    /// MIGRATE's connector (`tls-cluster yes`).
    pub cluster: Option<Arc<ClientConfig>>,
}

impl Tls {
    /// Load the certificate, key and CA files the config names; `None` when TLS is off.
    /// Errors name the key and the file.
    pub fn load(c: &Config) -> Result<Option<Tls>, String> {
        if !c.tls_enabled() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (Some(cert_file), Some(key_file)) = (&c.tls_cert_file, &c.tls_key_file) else {
            return Err("TLS needs tls-cert-file and tls-key-file".into());
        };
        let chain = load_certs(cert_file).map_err(|e| format!("tls-cert-file {e}"))?;
        let key = load_key(key_file).map_err(|e| format!("tls-key-file {e}"))?;
        let roots = load_roots(c)?;
        let acceptor = if c.tls_port != 0 {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?;
            let builder = match (c.tls_auth_clients, &roots) {
                (AuthClients::No, _) => builder.with_no_client_auth(),
                (mode, Some(roots)) => {
                    let v = WebPkiClientVerifier::builder_with_provider(
                        roots.clone(),
                        provider.clone(),
                    );
                    let v = if mode == AuthClients::Optional {
                        v.allow_unauthenticated()
                    } else {
                        v
                    };
                    builder.with_client_cert_verifier(
                        v.build().map_err(|e| format!("tls-ca-cert-file: {e}"))?,
                    )
                }
                (_, None) => {
                    return Err("tls-auth-clients needs tls-ca-cert-file or tls-ca-cert-dir".into())
                }
            };
            let server = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    format!(
                        "tls-cert-file {} with tls-key-file {}: {e}",
                        cert_file.display(),
                        key_file.display()
                    )
                })?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        } else {
            None
        };
        let client = if c.tls_replication || c.tls_cluster {
            let Some(roots) = roots else {
                return Err(
                    "tls-replication and tls-cluster need tls-ca-cert-file or tls-ca-cert-dir"
                        .into(),
                );
            };
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("tls-ca-cert-file: {e}"))?;
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_client_auth_cert(chain, key)
                .map_err(|e| {
                    format!(
                        "tls-cert-file {} with tls-key-file {}: {e}",
                        cert_file.display(),
                        key_file.display()
                    )
                })?;
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Some(Tls {
            acceptor,
            replication: client.clone().filter(|_| c.tls_replication),
            cluster: client.filter(|_| c.tls_cluster),
        }))
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The CA certificates of `tls-ca-cert-file` and every file of `tls-ca-cert-dir`.
fn load_roots(c: &Config) -> Result<Option<Arc<RootCertStore>>, String> {
    let mut roots = RootCertStore::empty();
    let mut any = false;
    if let Some(f) = &c.tls_ca_cert_file {
        for cert in load_certs(f).map_err(|e| format!("tls-ca-cert-file {e}"))? {
            roots
                .add(cert)
                .map_err(|e| format!("tls-ca-cert-file {}: {e}", f.display()))?;
        }
        any = true;
    }
    if let Some(d) = &c.tls_ca_cert_dir {
        let entries =
            std::fs::read_dir(d).map_err(|e| format!("tls-ca-cert-dir {}: {e}", d.display()))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if !p.is_file() {
                continue;
            }
            // Files that hold no certificate (an OpenSSL hash dir's CRLs, notes) are skipped.
            let Ok(certs) = load_certs(&p) else { continue };
            for cert in certs {
                if roots.add(cert).is_ok() {
                    any = true;
                }
            }
        }
        if !any {
            return Err(format!(
                "tls-ca-cert-dir {}: no CA certificate found",
                d.display()
            ));
        }
    }
    Ok(any.then(|| Arc::new(roots)))
}

/// Accept a TLS client on `tcp`, within [`HANDSHAKE_TIMEOUT`].
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

/// Connect TLS over `tcp` to `host` (a replica to its primary), within
/// [`HANDSHAKE_TIMEOUT`].
pub async fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = server_name(host)?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name {host:?}: {e}"))
}

/// A blocking connection (MIGRATE's to its target): plain or TLS.
pub enum BlockingStream {
    Plain(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>),
}

impl BlockingStream {
    /// Over `tcp` (its timeouts already set), TLS with `config` when given; the handshake
    /// runs on the first write.
    pub fn new(
        tcp: std::net::TcpStream,
        host: &str,
        config: Option<&Arc<ClientConfig>>,
    ) -> Result<BlockingStream, String> {
        let Some(config) = config else {
            return Ok(BlockingStream::Plain(tcp));
        };
        let conn = rustls::ClientConnection::new(config.clone(), server_name(host)?)
            .map_err(|e| e.to_string())?;
        Ok(BlockingStream::Tls(Box::new(rustls::StreamOwned::new(
            conn, tcp,
        ))))
    }

    /// The TCP stream underneath (its timeouts).
    pub fn tcp(&self) -> &std::net::TcpStream {
        match self {
            BlockingStream::Plain(s) => s,
            BlockingStream::Tls(s) => s.get_ref(),
        }
    }
}

impl std::io::Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlockingStream::Plain(s) => s.read(buf),
            BlockingStream::Tls(s) => s.read(buf),
        }
    }
}

impl std::io::Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            BlockingStream::Plain(s) => s.write(buf),
            BlockingStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            BlockingStream::Plain(s) => s.flush(),
            BlockingStream::Tls(s) => s.flush(),
        }
    }
}

/// The server certificate must chain to the CA; its names are not checked (as Redis).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        // The name is checked last, once the chain verified.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
