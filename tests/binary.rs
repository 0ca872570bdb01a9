//! The released binary as an operator runs it: flags from the environment, the Prometheus
//! endpoint, and a graceful shutdown on SIGTERM that keeps the invisibility promise.

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::client::{Client, Opts, befriend};
use common::servers::{Kind, Server, ServerOpts};
use common::world::invisible;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out))
        .await
        .expect("scrape")
        .unwrap();
    out
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_flags_metrics_and_sigterm() {
    let server = Server::start(ServerOpts {
        kind: Kind::Prosody,
        users: vec![("joe", "joe-pw"), ("stpeter", "stpeter-pw")],
        require_tls: false,
    });
    befriend(
        server.c2s_addr(),
        ("joe", "joe-pw"),
        ("stpeter", "stpeter-pw"),
        true,
        &Opts::new("setup"),
    )
    .await;
    let mut proxy = Binary::start(
        &[],
        &[
            ("XMPP_VEIL_UPSTREAM", server.c2s_addr().to_string()),
            ("XMPP_VEIL_UPSTREAM_TLS", "plain".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ],
    )
    .await;

    let st = Client::connect(
        server.c2s_addr(),
        "stpeter",
        "stpeter-pw",
        Opts::new("obs").initial_presence(true),
    )
    .await
    .expect("stpeter");
    let joe = Client::connect(proxy.starttls, "joe", "joe-pw", Opts::new("p"))
        .await
        .expect("joe through the binary");
    invisible(&joe, None).await;
    joe.send("<presence to='stpeter@localhost'/>").await;
    st.wait_for("joe's directed presence", T, |s| {
        s.is_available_from(&joe.jid)
    })
    .await;

    let m = scrape(proxy.metrics).await;
    for series in [
        "xmpp_veil_connections_total",
        "xmpp_veil_connections_active",
        "xmpp_veil_invisible_sessions",
        "xmpp_veil_invisibility_commands_total{protocol=\"xep0186\",command=\"invisible\"}",
        "xmpp_veil_stanzas_total{direction=\"c2s\",kind=\"iq\"}",
        "xmpp_veil_stanzas_total{direction=\"s2c\",kind=\"iq\"}",
        "xmpp_veil_bytes_total{direction=\"c2s\"}",
        "xmpp_veil_bytes_total{direction=\"s2c\"}",
        "xmpp_veil_upstream_connect_seconds_count",
    ] {
        assert!(
            value(&m, series).is_some_and(|v| v >= 1.0),
            "{series} missing or zero in:\n{m}"
        );
    }
    assert_eq!(value(&m, "xmpp_veil_invisible_sessions"), Some(1.0), "{m}");

    // SIGTERM: joe gets system-shutdown, stpeter is told unavailable, the process exits in time.
    let mark = st.mark();
    let (took, success) = proxy.terminate(Duration::from_secs(6)).await;
    assert!(success, "xmpp-veil did not exit cleanly");
    joe.expect_stream_error("system-shutdown", T).await;
    st.wait_for_since(mark, "joe's unavailable at shutdown", T, |s| {
        s.is_unavailable_from(&joe.jid)
    })
    .await;
    eprintln!("shutdown took {took:?}");
}
