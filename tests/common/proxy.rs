//! Starts xmpp-veil in the test process, on free loopback ports, in front of a given upstream.

use std::net::SocketAddr;
use std::sync::OnceLock;

use clap::Parser;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use xmpp_veil::config::Config;
use xmpp_veil::server::Proxy;

pub struct TestProxy {
    pub starttls: SocketAddr,
    pub direct_tls: SocketAddr,
    proxy: Option<Proxy>,
}

/// `upstream_tls`: "plain" | "starttls" | "direct". Extra flags are appended as given.
pub async fn start(upstream: SocketAddr, upstream_tls: &str, extra: &[&str]) -> TestProxy {
    init();
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/dev-ca.pem");
    let upstream = upstream.to_string();
    let mut args = vec![
        "xmpp-veil",
        "--listen",
        "127.0.0.1:0",
        "--listen-direct-tls",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--upstream-tls",
        upstream_tls,
        "--upstream-ca",
        ca,
    ];
    if !extra.contains(&"--upstream-connect-timeout") {
        args.extend_from_slice(&["--upstream-connect-timeout", "5"]);
    }
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).expect("test proxy flags");
    let proxy = Proxy::start(&config).await.expect("proxy starts");
    TestProxy {
        starttls: proxy.starttls_addrs[0],
        direct_tls: proxy.direct_tls_addrs[0],
        proxy: Some(proxy),
    }
}

impl TestProxy {
    /// Graceful shutdown, as on SIGTERM.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown_token().cancel();
        }
    }
}

/// Logs (RUST_LOG, default warn) and a metrics recorder shared by the tests of this process.
fn init() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        PrometheusBuilder::new()
            .install_recorder()
            .expect("metrics recorder")
    })
}

/// Value of a metric line (name with labels, exactly as rendered), 0 if absent.
pub fn metric(series: &str) -> f64 {
    let text = init().render();
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
