//! Listeners, the TLS handshake on the client leg, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::certs::Acceptor;
use crate::config::Config;
use crate::edge::{Edge, Turned};
use crate::metrics as m;
use crate::resume::ResumeStore;
use crate::session::{self, Shared};
use crate::stream::errors::Condition;
use crate::stream::upstream::UpstreamConfig;

/// Time a refused client (over --max-connections) gets for its TLS handshake, to be told why.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Starttls,
    DirectTls,
}

/// A running proxy: bound listeners and a handle to stop it.
pub struct Proxy {
    pub starttls_addrs: Vec<SocketAddr>,
    pub direct_tls_addrs: Vec<SocketAddr>,
    /// The certificates served: reload them with [`crate::certs::CertStore::reload`].
    pub certs: Arc<crate::certs::CertStore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
}

impl Proxy {
    /// Binds every listener and starts accepting. Fails if any address cannot be bound.
    pub async fn start(config: &Config) -> Result<Proxy, String> {
        let certs = crate::certs::CertStore::load(config)?;
        let client_tls = crate::tls::client_config(config)?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            upstream: UpstreamConfig {
                addr: config.upstream.clone(),
                mode: config.upstream_tls,
                tls: client_tls,
                max_stanza_size: config.max_stanza_size(),
                proxy_protocol: config.upstream_proxy_protocol,
            },
            connect_timeout: config.upstream_connect_timeout(),
            limits: config.limits(),
            auth_timeout: config.auth_timeout(),
            write_timeout: config.write_timeout(),
            shutdown: shutdown.clone(),
            resume: ResumeStore::default(),
            strategy: config.invisibility_strategy.into(),
        });
        let acceptor = Acceptor(certs.clone());
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(config.max_connections as usize));
        let edge = Arc::new(Edge::new(config)?);
        let mut proxy = Proxy {
            starttls_addrs: Vec::new(),
            direct_tls_addrs: Vec::new(),
            certs,
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
                    slots.clone(),
                    edge.clone(),
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
    acceptor: Acceptor,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    edge: Arc<Edge>,
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
        // `client` (and `via`, a load balancer) are recorded once known (see edge.rs).
        let span = tracing::info_span!(
            "conn",
            id = conn_id,
            client = tracing::field::Empty,
            via = tracing::field::Empty,
            jid = tracing::field::Empty
        );
        let acceptor = acceptor.clone();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
            let edge = edge.clone();
            let mut tcp = tcp;
            tracker.spawn(
                async move {
                    let header =
                        tokio::time::timeout(REFUSAL_TIMEOUT, edge.before_refusal(&mut tcp, peer));
                    let proceed = header.await.unwrap_or(false);
                    tracing::warn!("connection refused: --max-connections reached");
                    if proceed {
                        refuse(
                            tcp,
                            kind,
                            acceptor,
                            Condition::ResourceConstraint,
                            "too many connections; try again later",
                        )
                        .await;
                    }
                }
                .instrument(span),
            );
            continue;
        };
        let shared = shared.clone();
        let edge = edge.clone();
        tracker.spawn(
            async move {
                metrics::counter!(m::CONNECTIONS_TOTAL).increment(1);
                let active = metrics::gauge!(m::CONNECTIONS_ACTIVE);
                active.increment(1.0);
                // A panic ends this session only: it is counted, and the process goes on.
                let session = std::panic::AssertUnwindSafe(connection(
                    tcp, peer, kind, acceptor, conn_id, shared, edge,
                ));
                if let Err(panic) = session.catch_unwind().await {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    metrics::counter!(m::SESSION_PANICS).increment(1);
                    tracing::error!(panic = %what, "session task panicked; session ended");
                }
                active.decrement(1.0);
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Over --max-connections (`resource-constraint`) or a per-IP limit (`policy-violation`): the
/// client is told so (after TLS on a direct-TLS port, so that it can read it) instead of a
/// silent close.
async fn refuse(
    mut tcp: TcpStream,
    kind: ListenerKind,
    acceptor: Acceptor,
    condition: Condition,
    text: &str,
) {
    use tokio::io::AsyncWriteExt;
    metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => condition.as_str()).increment(1);
    let mut refusal = crate::stream::errors::client_stream_header("refused", "").to_vec();
    refusal.extend_from_slice(&crate::stream::errors::stream_error(condition, text));
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        match kind {
            ListenerKind::Starttls => {
                let _ = tcp.write_all(&refusal).await;
                let _ = tcp.shutdown().await;
            }
            ListenerKind::DirectTls => {
                if let Ok(mut tls) = acceptor.accept(tcp, None).await {
                    let _ = tls.write_all(&refusal).await;
                    let _ = tls.shutdown().await;
                }
            }
        }
    })
    .await;
}

async fn connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    acceptor: Acceptor,
    conn_id: u64,
    shared: Arc<Shared>,
    edge: Arc<Edge>,
) {
    let auth_deadline = Instant::now() + shared.auth_timeout;
    // PROXY protocol in, client address, per-IP limits: all before TLS. Every future but the
    // session's is boxed: this task's own state is as large as its largest await, and it lives
    // as long as the session, idle for hours.
    let admitted = Box::pin(edge.admit(&mut tcp, peer, auth_deadline)).await;
    let (endpoints, _per_ip) = match admitted {
        Ok(admitted) => admitted,
        Err(Turned::Dropped) => return,
        Err(Turned::Limited(limit)) => {
            tracing::warn!(limit = limit.label(), "connection refused: per-IP limit");
            Box::pin(refuse(
                tcp,
                kind,
                acceptor,
                Condition::PolicyViolation,
                limit.reason(),
            ))
            .await;
            return;
        }
    };
    // Boxed, and the TLS stream too: the handshake's state is freed before the session starts,
    // and the session moves a pointer around instead of the 1 KiB stream.
    let core = session::new_core(conn_id, &shared, kind == ListenerKind::Starttls);
    let handshake = Box::pin(handshake(tcp, kind, acceptor, core, &shared, auth_deadline));
    if let Some((tls, core)) = handshake.await {
        session::serve(tls, core, auth_deadline, shared, endpoints).await;
    }
}

/// STARTTLS (on that listener) and the TLS handshake, bounded by the authentication deadline.
async fn handshake(
    mut tcp: TcpStream,
    kind: ListenerKind,
    acceptor: Acceptor,
    core: Box<session::core::Core>,
    shared: &Shared,
    auth_deadline: Instant,
) -> Option<(Box<TlsStream<TcpStream>>, Box<session::core::Core>)> {
    let _ = tcp.set_nodelay(true);
    tracing::debug!(?kind, "accepted");
    let handshake = async {
        let mut domain = None;
        let mut core = core;
        if kind == ListenerKind::Starttls {
            // The session's core answers the stream before TLS.
            let (ready, to) = session::pre_tls(&mut tcp, core, shared).await?;
            core = ready;
            domain = Some(to);
        }
        match acceptor.accept(tcp, domain.as_deref()).await {
            Ok(tls) => Some((Box::new(tls), core)),
            Err(e) => {
                metrics::counter!(m::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                tracing::info!(error = %e, "client TLS handshake failed");
                None
            }
        }
    };
    tokio::select! {
        _ = shared.shutdown.cancelled() => None,
        r = tokio::time::timeout_at(auth_deadline, handshake) => r.unwrap_or_else(|_| {
            tracing::info!("handshake timed out");
            None
        }),
    }
}
