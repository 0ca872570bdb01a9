//! What the network edge decides about a new connection before TLS: its client address (from a
//! trusted PROXY protocol header or the TCP peer), whether that address appears in the logs, and
//! the per-IP limits.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Span;

use crate::config::{Config, ProxyProtocolIn};
use crate::limits::{PerIp, Refused, Slot};
use crate::metrics as m;
use crate::proxy_protocol::{self, Endpoints};

pub struct Edge {
    proxy_in: ProxyProtocolIn,
    trusted: Vec<ipnet::IpNet>,
    hide_addresses: bool,
    limits: Arc<PerIp>,
}

/// Why [`Edge::admit`] turned a connection away.
pub enum Turned {
    /// Before TLS, without a word: the peer is not a client speaking XMPP to us (bad or untrusted
    /// PROXY header), or it closed.
    Dropped,
    /// Over a per-IP limit: the client gets a `policy-violation` stream error.
    Limited(Refused),
}

impl Edge {
    pub fn new(config: &Config) -> Result<Edge, String> {
        if config.proxy_protocol_in != ProxyProtocolIn::Off
            && config.proxy_protocol_trusted.is_empty()
        {
            return Err(
                "--proxy-protocol-in needs the networks of the load balancers in --proxy-protocol-trusted"
                    .into(),
            );
        }
        Ok(Edge {
            proxy_in: config.proxy_protocol_in,
            trusted: config.proxy_protocol_trusted.clone(),
            hide_addresses: config.hide_client_addresses,
            limits: PerIp::new(
                config.max_connections_per_ip,
                config.max_connection_rate_per_ip,
                config.per_ip_exempt.clone(),
            ),
        })
    }

    /// Reads the PROXY header if the listener takes one (by `deadline`), puts the client's
    /// address on the connection's span (fields `client`, and `via` for the load balancer)
    /// unless addresses are hidden, and counts the connection against its address.
    pub async fn admit(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<(Endpoints, Slot), Turned> {
        let local = tcp.local_addr().map_err(|_| Turned::Dropped)?;
        let read = proxy_protocol::accept(tcp, self.proxy_in, &self.trusted, peer, local);
        let endpoints = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(endpoints)) => endpoints,
            refused => {
                let reason = match refused {
                    Ok(Err(r)) => r,
                    _ => proxy_protocol::InRefusal::Invalid,
                };
                self.record(&Span::current(), proxy_protocol::normalise(peer), None);
                if reason == proxy_protocol::InRefusal::Closed {
                    tracing::debug!("closed before sending anything");
                    return Err(Turned::Dropped);
                }
                metrics::counter!(m::PROXY_PROTOCOL_REFUSED, "reason" => reason.label())
                    .increment(1);
                tracing::info!(
                    reason = reason.label(),
                    "refused before TLS: PROXY protocol"
                );
                return Err(Turned::Dropped);
            }
        };
        self.record(&Span::current(), endpoints.client, endpoints.via);
        match self.limits.admit(endpoints.client.ip()) {
            Ok(slot) => Ok((endpoints, slot)),
            Err(limit) => {
                metrics::counter!(m::PER_IP_REFUSED, "limit" => limit.label()).increment(1);
                Err(Turned::Limited(limit))
            }
        }
    }

    /// Puts the addresses on the span, unless they are to stay out of the logs.
    fn record(&self, span: &Span, client: SocketAddr, via: Option<SocketAddr>) {
        if self.hide_addresses {
            return;
        }
        span.record("client", tracing::field::display(client));
        if let Some(via) = via {
            span.record("via", tracing::field::display(via));
        }
    }

    /// For the refusal at the global connection cap: the PROXY header (if this listener takes
    /// one) is read off first, so that the refusal that follows reaches the client intact;
    /// `false` if the connection is to be dropped instead.
    pub async fn before_refusal(&self, tcp: &mut TcpStream, peer: SocketAddr) -> bool {
        let Ok(local) = tcp.local_addr() else {
            return false;
        };
        match proxy_protocol::accept(tcp, self.proxy_in, &self.trusted, peer, local).await {
            Ok(endpoints) => {
                self.record(&Span::current(), endpoints.client, endpoints.via);
                true
            }
            Err(_) => {
                self.record(&Span::current(), proxy_protocol::normalise(peer), None);
                false
            }
        }
    }
}
