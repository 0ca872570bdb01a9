//! Listeners, the TLS handshake on the client leg, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::metrics as m;
use crate::resume::ResumeStore;
use crate::session::{self, Shared};
use crate::stream::client::negotiate_starttls;
use crate::stream::upstream::UpstreamConfig;

/// Time a client gets to finish the pre-TLS exchange and the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Starttls,
    DirectTls,
}

/// A running proxy: bound listeners and a handle to stop it.
pub struct Proxy {
    pub starttls_addrs: Vec<SocketAddr>,
    pub direct_tls_addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
}

impl Proxy {
    /// Binds every listener and starts accepting. Fails if any address cannot be bound.
    pub async fn start(config: &Config) -> Result<Proxy, String> {
        let server_tls = crate::tls::server_config(config)?;
        let client_tls = crate::tls::client_config(config)?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            upstream: UpstreamConfig {
                addr: config.upstream.clone(),
                mode: config.upstream_tls,
                tls: client_tls,
                max_stanza_size: config.max_stanza_size(),
            },
            connect_timeout: config.upstream_connect_timeout(),
            max_stanza_size: config.max_stanza_size(),
            shutdown: shutdown.clone(),
            resume: ResumeStore::default(),
        });
        let acceptor = TlsAcceptor::from(server_tls);
        let tracker = TaskTracker::new();
        let mut proxy = Proxy {
            starttls_addrs: Vec::new(),
            direct_tls_addrs: Vec::new(),
            shutdown,
            tracker,
            shutdown_timeout: config.shutdown_timeout(),
        };
        for (addrs, kind) in [
            (&config.listen, ListenerKind::Starttls),
            (&config.listen_direct_tls, ListenerKind::DirectTls),
        ] {
            for addr in addrs {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("listen on {addr}: {e}"))?;
                let local = listener.local_addr().map_err(|e| e.to_string())?;
                tracing::info!(addr = %local, ?kind, "listening");
                match kind {
                    ListenerKind::Starttls => proxy.starttls_addrs.push(local),
                    ListenerKind::DirectTls => proxy.direct_tls_addrs.push(local),
                }
                let accept = accept_loop(
                    listener,
                    kind,
                    acceptor.clone(),
                    shared.clone(),
                    proxy.tracker.clone(),
                );
                proxy.tracker.spawn(accept);
            }
        }
        Ok(proxy)
    }

    /// Stops accepting, sends `system-shutdown` to every client (after each session's pending
    /// `unavailable`s went upstream), and waits for the sessions up to the shutdown timeout.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.shutdown_timeout, "sessions still open at the shutdown timeout");
        }
    }

    /// Resolves when shutdown has been requested (by [`Proxy::shutdown`] or a cloned token).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("conn", id = conn_id, %peer, jid = tracing::field::Empty);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tracker.spawn(
            async move {
                metrics::counter!(m::CONNECTIONS_TOTAL).increment(1);
                let active = metrics::gauge!(m::CONNECTIONS_ACTIVE);
                active.increment(1.0);
                connection(tcp, kind, acceptor, conn_id, shared).await;
                active.decrement(1.0);
            }
            .instrument(span),
        );
    }
}

async fn connection(
    mut tcp: TcpStream,
    kind: ListenerKind,
    acceptor: TlsAcceptor,
    conn_id: u64,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    tracing::debug!(?kind, "accepted");
    let handshake = async {
        if kind == ListenerKind::Starttls {
            let id = format!("xv-{conn_id:x}");
            if let Err(refused) = negotiate_starttls(&mut tcp, shared.max_stanza_size, &id).await {
                if refused.condition != "connection-closed" {
                    metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => refused.condition)
                        .increment(1);
                }
                tracing::info!(condition = refused.condition, reason = %refused.reason, "refused before TLS");
                return None;
            }
        }
        match acceptor.accept(tcp).await {
            Ok(tls) => Some(tls),
            Err(e) => {
                metrics::counter!(m::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                tracing::info!(error = %e, "client TLS handshake failed");
                None
            }
        }
    };
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
            Ok(Some(tls)) => tls,
            Ok(None) => return,
            Err(_) => {
                tracing::info!("handshake timed out");
                return;
            }
        },
    };
    session::serve(tls, conn_id, shared).await;
}
