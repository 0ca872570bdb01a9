//! The metrics listener: `GET /metrics` (Prometheus text), `GET /healthz` (the process is alive)
//! and `GET /readyz` (listening, upstream reachable, not draining). HTTP/1.1 with hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Time /readyz waits for a TCP connection to the upstream.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often histogram and summary data is consolidated (the exporter's upkeep).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What /readyz reports; the proxy's lifecycle sets it.
#[derive(Debug)]
pub struct Health {
    upstream: String,
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn new(upstream: &str) -> Arc<Health> {
        Arc::new(Health {
            upstream: upstream.to_owned(),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// Every client listener is bound.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// Shutdown began: /readyz answers 503 from now on, so load balancers stop sending clients.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `Ok(text)` when ready, else `Err(reason)`.
    pub async fn ready(&self) -> Result<String, String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining: shutting down".into());
        }
        if !self.listening.load(Ordering::SeqCst) {
            return Err("not listening yet".into());
        }
        let probe = tokio::net::TcpStream::connect(self.upstream.as_str());
        match tokio::time::timeout(UPSTREAM_PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(format!("ready: upstream {} reachable", self.upstream)),
            Ok(Err(e)) => Err(format!("upstream {} unreachable: {e}", self.upstream)),
            Err(_) => Err(format!(
                "upstream {} unreachable: no answer within {UPSTREAM_PROBE_TIMEOUT:?}",
                self.upstream
            )),
        }
    }
}

/// Binds `addr` and serves the three endpoints until the process ends. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (metrics, health) = (metrics.clone(), health.clone());
                    async move { Ok::<_, Infallible>(answer(req, &metrics, &health).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            });
        }
    });
    tracing::info!(addr = %local, "metrics and health endpoint listening");
    Ok(local)
}

async fn answer(
    req: Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "alive\n".into()),
        "/readyz" => match health.ready().await {
            Ok(msg) => text(StatusCode::OK, msg + "\n"),
            Err(msg) => text(StatusCode::SERVICE_UNAVAILABLE, msg + "\n"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
