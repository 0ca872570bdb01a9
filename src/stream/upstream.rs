//! The upstream leg: one connection to the server per client. For `starttls` the proxy opens a
//! stream of its own and negotiates TLS before it forwards the client's stream header; the
//! server's certificate is checked for the domain in the client's header.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::errors::server_stream_header;
use super::{ReadError, StreamHeader, read_element};
use crate::config::{ProxyProtocolOut, UpstreamTls};
use crate::ns;
use crate::proxy_protocol::{self, Endpoints};
use crate::xml::{Element, Frame, Framer};

/// The connected upstream, ready for the client's stream header.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why the upstream could not be reached. The client gets `remote-connection-failed`, or the
/// server's own stream error when it sent one.
#[derive(Debug)]
pub struct ConnectError {
    pub reason: String,
    pub server_error: Option<Bytes>,
}

impl ConnectError {
    fn new(reason: impl Into<String>) -> Self {
        ConnectError {
            reason: reason.into(),
            server_error: None,
        }
    }
}

pub struct UpstreamConfig {
    pub addr: String,
    pub mode: UpstreamTls,
    pub tls: Arc<rustls::ClientConfig>,
    pub max_stanza_size: usize,
    /// PROXY protocol header sent first, if any.
    pub proxy_protocol: ProxyProtocolOut,
}

/// Connects for a client of `domain`. `client`: the client's endpoints, for the PROXY protocol
/// header (without them, e.g. for a check of the upstream, the header names the proxy itself).
pub async fn connect(
    cfg: &UpstreamConfig,
    domain: &str,
    client: Option<&Endpoints>,
) -> Result<Upstream, ConnectError> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(&cfg.addr)
        .await
        .map_err(|e| ConnectError::new(format!("connect {}: {e}", cfg.addr)))?;
    let _ = tcp.set_nodelay(true);
    if cfg.proxy_protocol != ProxyProtocolOut::Off {
        let (source, dest) = match client {
            Some(c) => (c.client, c.local),
            None => (
                tcp.local_addr()
                    .map_err(|e| ConnectError::new(e.to_string()))?,
                tcp.peer_addr()
                    .map_err(|e| ConnectError::new(e.to_string()))?,
            ),
        };
        tcp.write_all(&proxy_protocol::header(cfg.proxy_protocol, source, dest))
            .await
            .map_err(|e| ConnectError::new(format!("write PROXY header: {e}")))?;
    }
    let upstream = match cfg.mode {
        UpstreamTls::Plain => Upstream::Plain(tcp),
        UpstreamTls::Direct => Upstream::Tls(Box::new(handshake(cfg, domain, tcp).await?)),
        UpstreamTls::Starttls => {
            starttls(&mut tcp, domain, cfg.max_stanza_size).await?;
            Upstream::Tls(Box::new(handshake(cfg, domain, tcp).await?))
        }
    };
    metrics::histogram!(crate::metrics::UPSTREAM_CONNECT_SECONDS)
        .record(started.elapsed().as_secs_f64());
    Ok(upstream)
}

async fn handshake(
    cfg: &UpstreamConfig,
    domain: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let name = crate::tls::server_name(domain).map_err(ConnectError::new)?;
    TlsConnector::from(cfg.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
            ConnectError::new(format!("upstream TLS handshake for {domain}: {e}"))
        })
}

/// The proxy's own pre-TLS stream with the server: header, features, `<starttls/>`, `<proceed/>`.
async fn starttls(tcp: &mut TcpStream, domain: &str, max: usize) -> Result<(), ConnectError> {
    tcp.write_all(&server_stream_header(domain))
        .await
        .map_err(|e| ConnectError::new(format!("write: {e}")))?;
    let mut framer = Framer::new(max);
    let header = match next(tcp, &mut framer).await? {
        Frame::StreamHeader(raw) => {
            StreamHeader::parse(&raw).map_err(|e| ConnectError::new(e.to_string()))?
        }
        _ => return Err(ConnectError::new("server did not open a stream")),
    };
    let prefixes = header.prefix_refs();
    let features = element(tcp, &mut framer, &prefixes).await?;
    if !(features.name == "features" && features.child("starttls", ns::TLS).is_some()) {
        return Err(ConnectError::new(
            "server does not offer STARTTLS (use --upstream-tls plain or direct)",
        ));
    }
    tcp.write_all(format!("<starttls xmlns='{}'/>", ns::TLS).as_bytes())
        .await
        .map_err(|e| ConnectError::new(format!("write: {e}")))?;
    let answer = element(tcp, &mut framer, &prefixes).await?;
    if !(answer.name == "proceed" && answer.ns == ns::TLS) {
        return Err(ConnectError::new(format!(
            "server refused STARTTLS: <{}/>",
            answer.name
        )));
    }
    if framer.buffered() != 0 {
        return Err(ConnectError::new("server sent data after <proceed/>"));
    }
    Ok(())
}

async fn next(tcp: &mut TcpStream, framer: &mut Framer) -> Result<Frame, ConnectError> {
    match read_element(tcp, framer).await {
        Ok(frame) => Ok(frame),
        Err(ReadError::Closed) => Err(ConnectError::new(
            "server closed the connection during STARTTLS",
        )),
        Err(ReadError::Frame(e)) => Err(ConnectError::new(format!("server sent bad XML: {e}"))),
    }
}

/// The next top-level element; a stream error from the server is handed on to the client.
async fn element(
    tcp: &mut TcpStream,
    framer: &mut Framer,
    prefixes: &[(&str, &str)],
) -> Result<Element, ConnectError> {
    let raw = match next(tcp, framer).await? {
        Frame::Element { raw, .. } => raw,
        _ => {
            return Err(ConnectError::new(
                "server closed its stream during STARTTLS",
            ));
        }
    };
    let element =
        Element::parse(&raw, ns::CLIENT, prefixes).map_err(|e| ConnectError::new(e.to_string()))?;
    if element.name == "error" && element.ns == ns::STREAMS {
        return Err(ConnectError {
            reason: "server sent a stream error during STARTTLS".into(),
            server_error: Some(raw),
        });
    }
    Ok(element)
}
