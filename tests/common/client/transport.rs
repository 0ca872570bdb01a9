//! The connection under the XMPP stream: TCP from a chosen loopback address, TLS trusting
//! only the dev CA, and the `XMPP_TEST_TRACE=1` trace.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(super) type BoxIo = Box<dyn Io>;

pub(super) fn trace_on() -> bool {
    std::env::var_os("XMPP_TEST_TRACE").is_some_and(|v| v == "1")
}

/// Seconds since the first trace line, for trace output.
pub(super) fn ts() -> f64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The dev CA that the client trusts (and nothing else).
pub fn dev_ca_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join("dev-ca.pem")
}

/// rustls client config trusting only `certs/dev-ca.pem`.
pub fn tls_client_config(alpn: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let path = dev_ca_path();
    for cert in CertificateDer::pem_file_iter(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    {
        roots
            .add(cert.expect("parse dev CA"))
            .expect("add dev CA to root store");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Arc::new(cfg)
}

pub(super) async fn tls_wrap(io: BoxIo, domain: &str, alpn: bool) -> Result<BoxIo, String> {
    let name = ServerName::try_from(domain.to_string())
        .map_err(|e| format!("bad TLS server name {domain:?}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(tls_client_config(alpn))
        .connect(name, io)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(Box::new(tls))
}

/// A TCP connection to `addr`, from `source` (a loopback address) when given.
pub async fn connect_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    assert!(ip.is_loopback(), "tests connect from loopback only: {ip}");
    let sock = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(ip, 0))?;
    sock.connect(addr).await
}

/// A plain TCP connection, for bad-input tests.
pub async fn connect_raw(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"))
}
