//! The network edge: PROXY protocol to the server (what the server records as the client's
//! address) and from a load balancer, client addresses in the logs, per-IP limits.
//!
//! Every client connects from its own loopback address (127.0.0.2, 127.0.0.3, …) while the
//! proxy connects to the server from 127.0.0.1, so an address the server records is provably
//! the client's and not the proxy's.

mod common;

use std::time::Duration;

use common::client::{Client, Opts, connect_from};
use common::proxy::{self, metric};
use common::servers::{Kind, Server, ServerOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn ejabberd_with_proxy_port() -> Server {
    Server::start_proxy_protocol(ServerOpts {
        kind: Kind::Ejabberd,
        users: vec![("joe", "joe-pw"), ("bob", "bob-pw"), ("carol", "carol-pw")],
        require_tls: false,
    })
}

/// The address ejabberd records for each session of `user` (`connected_users_info`: JID,
/// connection, IP, port, …).
fn ejabberd_session_ips(server: &Server, user: &str) -> Vec<String> {
    let info = server.ctl(&["connected_users_info"]);
    info.lines()
        .filter(|l| l.starts_with(&format!("{user}@localhost/")))
        .map(|l| l.split('\t').nth(2).unwrap_or_default().to_owned())
        .collect()
}

/// Waits until ejabberd lists exactly `want` as the addresses of `user`'s sessions.
async fn expect_ejabberd_ips(server: &Server, user: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut ips = ejabberd_session_ips(server, user);
        ips.sort();
        if ips == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ejabberd records {user} from {ips:?}, expected {want:?}\n{}",
            server.ctl(&["connected_users_info"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ejabberd with `use_proxy_protocol: true` sees each client's own address through the proxy,
/// with v1 and v2 headers, over a plaintext and a STARTTLS upstream; its log names it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_records_the_client_address() {
    let server = ejabberd_with_proxy_port();
    let v1 = proxy::start(
        server.proxy_addr(),
        "plain",
        &["--upstream-proxy-protocol", "v1"],
    )
    .await;
    let v2 = proxy::start(
        server.proxy_addr(),
        "starttls",
        &["--upstream-proxy-protocol", "v2"],
    )
    .await;

    let joe = Client::connect(
        v1.starttls,
        "joe",
        "joe-pw",
        Opts::new("a").source("127.0.0.2"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "joe", &["127.0.0.2"]).await;

    let bob = Client::connect(
        v2.direct_tls,
        "bob",
        "bob-pw",
        Opts::new("b")
            .tls(common::client::Tls::Direct)
            .source("127.0.0.3"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "bob", &["127.0.0.3"]).await;

    // Its log line of each login names the client's address, never the proxy's.
    let log = server.log();
    let logins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Accepted c2s") && l.contains("authentication for"))
        .collect();
    assert!(
        logins
            .iter()
            .any(|l| l.contains("joe@localhost") && l.contains("from 127.0.0.2")),
        "{logins:#?}"
    );
    assert!(
        logins
            .iter()
            .any(|l| l.contains("bob@localhost") && l.contains("from 127.0.0.3")),
        "{logins:#?}"
    );
    assert!(
        !logins.iter().any(|l| l.contains("from 127.0.0.1")),
        "a login recorded from the proxy's address: {logins:#?}"
    );
    drop((joe, bob));
}

/// Without the header, ejabberd would record the proxy: the control for the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_header_ejabberd_records_the_proxy() {
    let server = ejabberd_with_proxy_port();
    let p = proxy::start(server.c2s_addr(), "plain", &[]).await;
    let _joe = Client::connect(
        p.starttls,
        "joe",
        "joe-pw",
        Opts::new("a").source("127.0.0.2"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "joe", &["127.0.0.1"]).await;
}

/// A trusted load balancer's header sets the client address, and that address is what the
/// server is told; untrusted senders of a header, and (in `required` mode) anyone outside the
/// trusted networks or without a header, are refused before TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_in_is_what_the_server_sees() {
    let server = ejabberd_with_proxy_port();
    let required = proxy::start(
        server.proxy_addr(),
        "plain",
        &[
            "--upstream-proxy-protocol",
            "v2",
            "--proxy-protocol-in",
            "required",
            "--proxy-protocol-trusted",
            "127.0.0.2/32",
        ],
    )
    .await;
    // The load balancer (127.0.0.2) says the client is 127.0.0.5 (v1) ...
    let joe = Client::connect(
        required.starttls,
        "joe",
        "joe-pw",
        Opts::new("lb1")
            .source("127.0.0.2")
            .preamble(b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 5222\r\n"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "joe", &["127.0.0.5"]).await;
    // ... and 127.0.0.6 (v2, direct TLS port).
    let v2 = xmpp_veil::proxy_protocol::header(
        xmpp_veil::config::ProxyProtocolOut::V2,
        "127.0.0.6:40001".parse().unwrap(),
        "127.0.0.1:5223".parse().unwrap(),
    );
    let bob = Client::connect(
        required.direct_tls,
        "bob",
        "bob-pw",
        Opts::new("lb2")
            .tls(common::client::Tls::Direct)
            .source("127.0.0.2")
            .preamble(&v2),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "bob", &["127.0.0.6"]).await;

    let refused = |reason: &str| {
        metric(&format!(
            "xmpp_veil_proxy_protocol_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    let (untrusted, missing) = (refused("untrusted"), refused("missing"));
    // Required: a client outside the trusted networks, even with a header, gets nothing.
    assert_closed_silently(
        required.starttls,
        "127.0.0.3",
        b"PROXY TCP4 127.0.0.9 127.0.0.1 1 5222\r\n<stream:stream>",
    )
    .await;
    // Required: a trusted source without a header.
    assert_closed_silently(required.starttls, "127.0.0.2", b"<?xml version='1.0'?>").await;
    assert_eq!(refused("untrusted") - untrusted, 1.0);
    assert_eq!(refused("missing") - missing, 1.0);

    // Optional: the trusted source without a header is a client itself; a header from outside
    // the trusted networks is refused.
    let optional = proxy::start(
        server.proxy_addr(),
        "plain",
        &[
            "--upstream-proxy-protocol",
            "v1",
            "--proxy-protocol-in",
            "optional",
            "--proxy-protocol-trusted",
            "127.0.0.2",
        ],
    )
    .await;
    let joe2 = Client::connect(
        optional.starttls,
        "joe",
        "joe-pw",
        Opts::new("direct").source("127.0.0.2"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "joe", &["127.0.0.2", "127.0.0.5"]).await;
    let untrusted = refused("untrusted");
    assert_closed_silently(
        optional.starttls,
        "127.0.0.4",
        b"PROXY TCP4 127.0.0.9 127.0.0.1 1 5222\r\n<stream:stream>",
    )
    .await;
    assert_eq!(refused("untrusted") - untrusted, 1.0);
    // A client outside the trusted networks without a header is served as itself.
    let joe3 = Client::connect(
        optional.starttls,
        "joe",
        "joe-pw",
        Opts::new("other").source("127.0.0.4"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "joe", &["127.0.0.2", "127.0.0.4", "127.0.0.5"]).await;
    drop((joe, bob, joe2, joe3));
}

/// Addresses from a load balancer's header in the other family than the listener's: an IPv6
/// client reaches ejabberd as itself (the header's destination follows the client's family), an
/// IPv4-mapped one as IPv4, and the per-IP limit groups IPv6 clients by /64. (The IPv6 addresses
/// are only written in headers: every connection is on loopback.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_mapped_clients_behind_a_load_balancer() {
    let server = ejabberd_with_proxy_port();
    let p = proxy::start(
        server.proxy_addr(),
        "plain",
        &[
            "--upstream-proxy-protocol",
            "v1",
            "--proxy-protocol-in",
            "required",
            "--proxy-protocol-trusted",
            "127.0.0.2",
            "--max-connections-per-ip",
            "1",
        ],
    )
    .await;
    let behind = |user: &'static str, header: &'static str| {
        Client::connect(
            p.starttls,
            user,
            if user == "carol" {
                "carol-pw"
            } else {
                "bob-pw"
            },
            Opts::new("lb")
                .source("127.0.0.2")
                .preamble(header.as_bytes()),
        )
    };
    let carol = behind(
        "carol",
        "PROXY TCP6 2001:db8:0:1::1 2001:db8::53 40000 5222\r\n",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "carol", &["2001:db8:0:1::1"]).await;
    // Same /64, while carol's connection is open: refused.
    let e = behind(
        "bob",
        "PROXY TCP6 2001:db8:0:1::2 2001:db8::53 40001 5222\r\n",
    )
    .await
    .err()
    .expect("same /64 refused");
    assert!(e.contains("policy-violation"), "{e}");
    // IPv4-mapped: counted and told as IPv4.
    let bob = behind(
        "bob",
        "PROXY TCP6 ::ffff:127.0.0.8 ::ffff:127.0.0.1 40002 5222\r\n",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    expect_ejabberd_ips(&server, "bob", &["127.0.0.8"]).await;
    drop((carol, bob));
}

/// Connects from `source`, sends `bytes`, and expects the connection closed without a byte of
/// answer (no stream header, no TLS).
async fn assert_closed_silently(addr: std::net::SocketAddr, source: &str, bytes: &[u8]) {
    let mut s = connect_from(Some(source.parse().unwrap()), addr)
        .await
        .expect("connect");
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(T, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "connection from {source} left open");
    assert!(
        got.is_empty(),
        "answered {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// Connects from `source` to a STARTTLS port, opens a stream, and returns everything the
/// proxy says before it closes.
async fn raw_stream(addr: std::net::SocketAddr, source: &str) -> String {
    let mut s = connect_from(Some(source.parse().unwrap()), addr)
        .await
        .expect("connect");
    let _ = s
        .write_all(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
        )
        .await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + T;
    // Until the proxy closes, or has said what it has to say before STARTTLS.
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if text.contains("</stream:features>") || text.contains("</stream:stream>") {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A Prosody with joe, plaintext c2s: the upstream of the limit tests.
fn prosody_with_joe() -> Server {
    Server::start(ServerOpts {
        kind: Kind::Prosody,
        users: vec![("joe", "joe-pw")],
        require_tls: false,
    })
}

/// Open connections per IP: the one over the limit gets `policy-violation`, counted; another
/// address is not affected; a closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_concurrent_limit() {
    let server = prosody_with_joe();
    let p = proxy::start(
        server.c2s_addr(),
        "plain",
        &[
            "--max-connections-per-ip",
            "2",
            "--max-connection-rate-per-ip",
            "0",
        ],
    )
    .await;
    let login = |res: &str, src: &str| {
        Client::connect(p.starttls, "joe", "joe-pw", Opts::new(res).source(src))
    };
    let a = login("a", "127.0.0.2").await.expect("first");
    let b = login("b", "127.0.0.2").await.expect("second");
    let series = "xmpp_veil_per_ip_refused_total{limit=\"concurrent\"}";
    let before = metric(series);
    let third = raw_stream(p.starttls, "127.0.0.2").await;
    assert!(
        third.contains("<policy-violation") && !third.contains("<starttls"),
        "{third}"
    );
    assert_eq!(metric(series) - before, 1.0);
    // The direct-TLS port says it after the handshake.
    let e = login("c", "127.0.0.2")
        .await
        .err()
        .expect("third session refused");
    assert!(e.contains("policy-violation"), "{e}");
    let other = login("d", "127.0.0.3").await.expect("another address");
    drop(a);
    let deadline = tokio::time::Instant::now() + T;
    let again = loop {
        match login("e", "127.0.0.2").await {
            Ok(c) => break c,
            Err(e) => {
                assert!(e.contains("policy-violation"), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "place not freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    drop((b, other, again));
}

/// New connections per minute per IP: past the burst, `policy-violation`, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_rate_limit() {
    let server = prosody_with_joe();
    let p = proxy::start(
        server.c2s_addr(),
        "plain",
        &["--max-connection-rate-per-ip", "3"],
    )
    .await;
    let series = "xmpp_veil_per_ip_refused_total{limit=\"rate\"}";
    let before = metric(series);
    for i in 0..3 {
        let answer = raw_stream(p.starttls, "127.0.0.4").await;
        assert!(answer.contains("<starttls"), "connection {i}: {answer}");
    }
    let answer = raw_stream(p.starttls, "127.0.0.4").await;
    assert!(answer.contains("<policy-violation"), "{answer}");
    assert_eq!(metric(series) - before, 1.0);
    // Another address has its own budget, and a full login works.
    let _c = Client::connect(
        p.starttls,
        "joe",
        "joe-pw",
        Opts::new("x").source("127.0.0.5"),
    )
    .await
    .expect("another address");
}

/// Each session's log lines carry the client's address (from the PROXY header when a trusted
/// load balancer sent one, with the balancer as `via`); `--hide-client-addresses` keeps every
/// address out of the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_in_the_logs_or_not() {
    // An upstream that refuses connections: the session logs a warning in its span.
    let closed = common::servers::free_port().to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |name: &'static str, hide: bool| {
        let log = dir.path().join(name);
        let closed = closed.clone();
        async move {
            let mut envs = vec![
                ("XMPP_VEIL_UPSTREAM", format!("127.0.0.1:{closed}")),
                ("XMPP_VEIL_UPSTREAM_TLS", "plain".to_owned()),
                ("XMPP_VEIL_PROXY_PROTOCOL_IN", "optional".to_owned()),
                ("XMPP_VEIL_PROXY_PROTOCOL_TRUSTED", "127.0.0.2".to_owned()),
                ("RUST_LOG", "xmpp_veil=debug".to_owned()),
            ];
            if hide {
                envs.push(("XMPP_VEIL_HIDE_CLIENT_ADDRESSES", "true".to_owned()));
            }
            let proxy = common::binary::Binary::start_with_log(&[], &envs, Some(&log)).await;
            // A client of its own, and one behind the load balancer.
            let direct = Client::connect(
                proxy.starttls,
                "joe",
                "joe-pw",
                Opts::new("a").source("127.0.0.3"),
            )
            .await
            .err()
            .expect("the upstream is down");
            assert!(direct.contains("remote-connection-failed"), "{direct}");
            let behind = Client::connect(
                proxy.starttls,
                "joe",
                "joe-pw",
                Opts::new("b")
                    .source("127.0.0.2")
                    .preamble(b"PROXY TCP4 127.0.0.7 127.0.0.1 40000 5222\r\n"),
            )
            .await
            .err()
            .expect("the upstream is down");
            assert!(behind.contains("remote-connection-failed"), "{behind}");
            drop(proxy);
            std::fs::read_to_string(&log).expect("log")
        }
    };
    let shown = run("shown.log", false).await;
    let unavailable: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains("upstream unavailable"))
        .collect();
    assert_eq!(unavailable.len(), 2, "{shown}");
    assert!(
        unavailable.iter().any(|l| l.contains("client=127.0.0.3:")),
        "{shown}"
    );
    assert!(
        unavailable
            .iter()
            .any(|l| l.contains("client=127.0.0.7:40000") && l.contains("via=127.0.0.2:")),
        "{shown}"
    );
    // Every line of a session (they all carry its span) names its client.
    for l in shown.lines().filter(|l| l.contains("conn{")) {
        assert!(l.contains("client=127.0.0."), "{l}");
    }

    let hidden = run("hidden.log", true).await;
    assert!(hidden.contains("upstream unavailable"), "{hidden}");
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.7"] {
        assert!(!hidden.contains(ip), "{ip} in the log:\n{hidden}");
    }
}

/// At `--max-connections`, a client behind a load balancer still reads its refusal: the PROXY
/// header is taken off before the TLS handshake of the direct-TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_cap_refusal_behind_a_load_balancer() {
    let server = prosody_with_joe();
    let p = proxy::start(
        server.c2s_addr(),
        "plain",
        &[
            "--max-connections",
            "1",
            "--proxy-protocol-in",
            "required",
            "--proxy-protocol-trusted",
            "127.0.0.2",
        ],
    )
    .await;
    let header = b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 5223\r\n";
    let opts = |res: &str| {
        Opts::new(res)
            .tls(common::client::Tls::Direct)
            .source("127.0.0.2")
            .preamble(header)
    };
    let _first = Client::connect(p.direct_tls, "joe", "joe-pw", opts("a"))
        .await
        .expect("first");
    let e = Client::connect(p.direct_tls, "joe", "joe-pw", opts("b"))
        .await
        .err()
        .expect("over the cap");
    assert!(e.contains("resource-constraint"), "{e}");
}
