//! Operating the binary: every documented metric from the start, /healthz and /readyz,
//! draining after SIGTERM.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::Binary;
use common::servers::{Kind, Server, ServerOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

/// One HTTP/1.1 GET: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The metric names of the README's Metrics table (the documented contract).
fn documented_metrics() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README has a Metrics section")
        .split("\n## ")
        .next()
        .unwrap();
    let names: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() >= 14,
        "README metrics table not found: {names:?}"
    );
    names
}

/// The names exported in a Prometheus text body (from the sample lines, not the comments).
fn exported_names(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn exported(names: &[String], metric: &str) -> bool {
    names.iter().any(|n| {
        n == metric
            || n.strip_prefix(metric)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_before_any_client() {
    // The upstream is a closed port: nothing can have connected anywhere.
    let upstream = SocketAddr::from(([127, 0, 0, 1], common::servers::free_port()));
    let proxy = Binary::start(
        &[],
        &[
            ("XMPP_VEIL_UPSTREAM", upstream.to_string()),
            ("XMPP_VEIL_UPSTREAM_TLS", "plain".to_owned()),
        ],
    )
    .await;
    let (status, body) = get(proxy.metrics, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let names = exported_names(&body);
    let missing: Vec<_> = documented_metrics()
        .into_iter()
        .filter(|m| !exported(&names, m))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exported on a fresh proxy: {missing:?}\n{body}"
    );
    // Zero-valued, with their label sets (the harness's own probe of the client port counts as
    // a connection, so the connection counters are left out here).
    for series in [
        "xmpp_veil_invisible_sessions 0",
        "xmpp_veil_stanzas_total{direction=\"c2s\",kind=\"message\"} 0",
        "xmpp_veil_stream_errors_total{condition=\"policy-violation\"} 0",
        "xmpp_veil_sm_resumptions_total{result=\"failed\"} 0",
        "xmpp_veil_upstream_connect_seconds_count 0",
    ] {
        assert!(
            body.lines().any(|l| l == series),
            "no line {series:?} in\n{body}"
        );
    }
    // Upstream unreachable: alive but not ready, and the reason says which.
    assert_eq!(get(proxy.metrics, "/healthz").await.0, 200);
    let (status, why) = get(proxy.metrics, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("unreachable") && why.contains(&upstream.to_string()),
        "{why}"
    );
    assert_eq!(get(proxy.metrics, "/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_with_upstream_and_after_sigterm_never_ready() {
    let server = Server::start(
        ServerOpts::new(Kind::Prosody)
            .user("joe", "joe-pw")
            .require_tls(false),
    );
    let mut proxy = Binary::start(
        &[],
        &[
            ("XMPP_VEIL_UPSTREAM", server.c2s_addr().to_string()),
            ("XMPP_VEIL_UPSTREAM_TLS", "plain".to_owned()),
        ],
    )
    .await;
    let (status, body) = get(proxy.metrics, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("reachable"), "{body}");
    assert_eq!(get(proxy.metrics, "/healthz").await.0, 200);
    let joe = common::client::Client::connect(
        proxy.starttls,
        "joe",
        "joe-pw",
        common::client::Opts::new("p"),
    )
    .await
    .expect("joe through the binary");
    let (_, ok) = proxy.terminate(T).await;
    assert!(ok);
    joe.expect_stream_error("system-shutdown", T).await;
}

/// The drain itself is usually too short to observe from outside the process: the endpoint is
/// driven here in-process through the same lifecycle calls main() makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_lifecycle() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let health = xmpp_veil::health::Health::new(&upstream_addr.to_string());
    let addr = xmpp_veil::health::serve("127.0.0.1:0".parse().unwrap(), handle, health.clone())
        .await
        .expect("serve");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not listening yet\n"));
    health.set_listening();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    health.set_draining();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "draining: shutting down\n"));
    assert_eq!(get(addr, "/healthz").await.0, 200, "alive while draining");
    drop(upstream);
}
