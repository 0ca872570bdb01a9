//! End to end: the relay itself (issue "proxy core"), through a real Prosody (and ejabberd where
//! the servers differ), with real clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::client::{Client, Mech, Opts, Tls, befriend, connect_raw, tls_client_config};
use common::proxy;
use common::servers::{Kind, Server, ServerOpts};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const T: Duration = Duration::from_secs(10);
const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' \
                      xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

fn server(kind: Kind, require_tls: bool) -> Server {
    Server::start(ServerOpts {
        kind,
        users: vec![("alice", "alice-pw"), ("bob", "bob-pw")],
        require_tls,
    })
}

/// Two users log in through both proxy ports (STARTTLS + SCRAM-SHA-1, direct TLS + PLAIN),
/// subscribe to each other through the proxy, and exchange presence and a message.
async fn login_chat_presence(kind: Kind, upstream_tls: &str) {
    let server = server(kind, upstream_tls != "plain");
    let upstream = match upstream_tls {
        "direct" => server.direct_tls_addr(),
        _ => server.c2s_addr(),
    };
    let proxy = proxy::start(upstream, upstream_tls, &[]).await;

    befriend(
        proxy.starttls,
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        true,
        &Opts::new("setup"),
    )
    .await;

    let alice = Client::connect(
        proxy.starttls,
        "alice",
        "alice-pw",
        Opts::new("a").mech(Mech::ScramSha1),
    )
    .await
    .unwrap_or_else(|e| panic!("alice via STARTTLS port: {e}\n{}", server.log()));
    let bob = Client::connect(
        proxy.direct_tls,
        "bob",
        "bob-pw",
        Opts::new("b").tls(Tls::Direct).mech(Mech::Plain),
    )
    .await
    .unwrap_or_else(|e| panic!("bob via direct TLS port: {e}\n{}", server.log()));
    assert_eq!(alice.jid, format!("{}/a", server.jid("alice")));

    // Stream management is offered (the proxy keeps its counts right), compression is not,
    // and -PLUS never is.
    for c in [&alice, &bob] {
        assert!(
            c.features.find_ns("sm", "urn:xmpp:sm:3").is_some(),
            "sm not offered: {}",
            c.features.raw
        );
        assert!(
            c.features.find("compression").is_none(),
            "{}",
            c.features.raw
        );
        assert!(
            !c.pre_auth_features.raw.contains("-PLUS"),
            "{}",
            c.pre_auth_features.raw
        );
    }

    bob.send("<presence><show>away</show></presence>").await;
    alice.send("<presence/>").await;
    alice
        .wait_for("bob's presence", T, |s| s.is_available_from(&bob.jid))
        .await;
    bob.wait_for("alice's presence", T, |s| s.is_available_from(&alice.jid))
        .await;

    let body = "through the proxy &amp; back <![CDATA[<raw>]]>";
    alice
        .send(&format!(
            "<message to='{}' type='chat' id='m1'><body>{body}</body></message>",
            bob.jid
        ))
        .await;
    let m = bob
        .wait_for("alice's message", T, |s| s.is_message_from(&alice.jid))
        .await;
    assert_eq!(m.body(), Some("through the proxy & back <raw>"));

    let alice_jid = alice.jid.clone();
    alice.close().await;
    bob.wait_for("alice's unavailable", T, |s| {
        s.is_unavailable_from(&alice_jid)
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_upstream_plain() {
    login_chat_presence(Kind::Prosody, "plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_upstream_starttls() {
    login_chat_presence(Kind::Prosody, "starttls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_upstream_direct_tls() {
    login_chat_presence(Kind::Prosody, "direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_upstream_starttls_strips_plus_mechanisms() {
    login_chat_presence(Kind::Ejabberd, "starttls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_at_once() {
    let server = Server::start(ServerOpts {
        kind: Kind::Prosody,
        users: vec![],
        require_tls: false,
    });
    let users: Vec<(String, String)> = (0..50)
        .map(|i| (format!("u{i}"), format!("pw{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    server.register_many(&refs);
    let proxy = proxy::start(server.c2s_addr(), "plain", &[]).await;
    let mut tasks = Vec::new();
    for (i, (user, pw)) in users.iter().cloned().enumerate() {
        let addr = if i % 2 == 0 {
            proxy.starttls
        } else {
            proxy.direct_tls
        };
        let tls = if i % 2 == 0 {
            Tls::StartTls
        } else {
            Tls::Direct
        };
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(addr, &user, &pw, Opts::new("r").tls(tls))
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            // A message to itself crosses the proxy both ways.
            c.send(&format!(
                "<message to='{}' id='x'><body>{user}</body></message>",
                c.jid
            ))
            .await;
            let m = c
                .wait_for("own message", T, |s| s.is_message_from(&c.jid))
                .await;
            assert_eq!(m.body(), Some(user.as_str()));
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("session task"));
    }
    assert_eq!(clients.len(), 50);
    for c in clients {
        assert!(!c.closed(), "{}", c.dump());
        c.close().await;
    }
}

/// Opens a direct-TLS connection to the proxy and returns everything it answers to `input`
/// until it closes the connection.
async fn answer_direct_tls(addr: SocketAddr, input: &[u8]) -> String {
    let tcp = connect_raw(addr).await;
    let mut tls = TlsConnector::from(tls_client_config(true))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS to the proxy");
    tls.write_all(input).await.expect("write");
    read_to_close(&mut tls).await
}

async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        match tokio::time::timeout(T, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_stream_error(answer: &str, condition: &str) {
    assert!(
        answer.contains(&format!(
            "<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        )),
        "expected stream error {condition}, got: {answer}"
    );
    assert!(
        answer.trim_end().ends_with("</stream:stream>"),
        "stream not closed: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_stream_error_and_the_proxy_keeps_serving() {
    let server = server(Kind::Prosody, false);
    let proxy = proxy::start(server.c2s_addr(), "plain", &["--max-stanza-size", "4096"]).await;
    // A bystander session that must not notice anything.
    let bystander = Client::connect(proxy.starttls, "bob", "bob-pw", Opts::new("calm"))
        .await
        .expect("bob");

    let big = format!(
        "<message to='a@localhost'><body>{}</body></message>",
        "x".repeat(5000)
    );
    let cases: Vec<(String, &str)> = vec![
        (format!("{HEADER}<message><body>x</b></message>"), "not-well-formed"),
        (format!("{HEADER}<message><!-- hi --></message>"), "restricted-xml"),
        (format!("{HEADER}<?pi data?>"), "restricted-xml"),
        (format!("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>{HEADER}"), "restricted-xml"),
        (format!("{HEADER}<message><body>&lol;</body></message>"), "restricted-xml"),
        (format!("{HEADER}{big}"), "policy-violation"),
        (
            "<stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='urn:wrong' version='1.0'>".to_owned(),
            "invalid-namespace",
        ),
        (
            "<stream:stream to='localhost' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
                .to_owned(),
            "invalid-namespace",
        ),
    ];
    for (input, condition) in &cases {
        let answer = answer_direct_tls(proxy.direct_tls, input.as_bytes()).await;
        assert_stream_error(&answer, condition);
    }

    // Bad input after authentication, inside the relay.
    let alice = Client::connect(proxy.starttls, "alice", "alice-pw", Opts::new("bad"))
        .await
        .expect("alice");
    alice.send("<presence><!-- sneaky --></presence>").await;
    alice.expect_stream_error("restricted-xml", T).await;
    assert!(
        alice.wait_closed(T).await,
        "alice's stream not closed: {}",
        alice.dump()
    );

    // Data before TLS on the STARTTLS port.
    let mut tcp = connect_raw(proxy.starttls).await;
    tcp.write_all(
        format!("{HEADER}<message to='x@localhost'><body>plain</body></message>").as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut tcp).await;
    assert!(
        answer.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{answer}"
    );
    assert_stream_error(&answer, "policy-violation");

    // The proxy still serves new logins, and the bystander never noticed.
    let again = Client::connect(
        proxy.direct_tls,
        "alice",
        "alice-pw",
        Opts::new("again").tls(Tls::Direct),
    )
    .await
    .expect("login after bad input");
    again
        .iq(
            "<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
            T,
        )
        .await;
    bystander
        .iq(
            "<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p2",
            T,
        )
        .await;
    assert!(!bystander.closed());
    assert!(
        proxy::metric("xmpp_veil_stream_errors_total{condition=\"restricted-xml\"}") >= 4.0,
        "restricted-xml errors are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_remote_connection_failed() {
    // Nobody listens on this port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = proxy::start(closed, "plain", &[]).await;
    let started = Instant::now();
    let answer = answer_direct_tls(proxy.direct_tls, HEADER.as_bytes()).await;
    assert_stream_error(&answer, "remote-connection-failed");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A server that accepts but never answers: the connect timeout (1 s here) applies.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = proxy::start(
        silent_addr,
        "starttls",
        &["--upstream-connect-timeout", "1"],
    )
    .await;
    let started = Instant::now();
    let answer = answer_direct_tls(proxy.direct_tls, HEADER.as_bytes()).await;
    assert_stream_error(&answer, "remote-connection-failed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_the_stream_reaches_the_client() {
    let server = server(Kind::Prosody, false);
    let proxy = proxy::start(server.c2s_addr(), "plain", &[]).await;
    let a1 = Client::connect(proxy.starttls, "alice", "alice-pw", Opts::new("same"))
        .await
        .expect("first");
    // Prosody replaces a session that binds the same resource: the first one gets `conflict`.
    let _a2 = Client::connect(proxy.starttls, "alice", "alice-pw", Opts::new("same"))
        .await
        .expect("second");
    a1.expect_stream_error("conflict", T).await;
    assert!(a1.wait_closed(T).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_depth_attributes_connections_and_slow_authentication() {
    let server = server(Kind::Prosody, false);
    let proxy = proxy::start(
        server.c2s_addr(),
        "plain",
        &[
            "--max-depth",
            "8",
            "--max-attributes",
            "6",
            "--max-connections",
            "3",
            "--auth-timeout",
            "1.5",
        ],
    )
    .await;

    let deep = format!(
        "{HEADER}<message>{}{}</message>",
        "<x>".repeat(8),
        "</x>".repeat(8)
    );
    assert_stream_error(
        &answer_direct_tls(proxy.direct_tls, deep.as_bytes()).await,
        "policy-violation",
    );
    let attrs = format!("{HEADER}<message a='1' b='2' c='3' d='4' e='5' f='6' g='7'/>");
    assert_stream_error(
        &answer_direct_tls(proxy.direct_tls, attrs.as_bytes()).await,
        "policy-violation",
    );

    // Slowloris: a client that opens a stream and never authenticates is cut at --auth-timeout.
    let started = Instant::now();
    assert_stream_error(
        &answer_direct_tls(proxy.direct_tls, HEADER.as_bytes()).await,
        "connection-timeout",
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    // One that does not even finish TLS is closed too.
    let mut idle = connect_raw(proxy.starttls).await;
    let started = Instant::now();
    let _ = read_to_close(&mut idle).await;
    assert!(started.elapsed() < Duration::from_secs(4));

    // Over --max-connections: a clear refusal, and the sessions already open keep working.
    let a = Client::connect(proxy.starttls, "alice", "alice-pw", Opts::new("1"))
        .await
        .expect("first");
    let b = Client::connect(proxy.starttls, "bob", "bob-pw", Opts::new("2"))
        .await
        .expect("second");
    let c = Client::connect(
        proxy.direct_tls,
        "alice",
        "alice-pw",
        Opts::new("3").tls(Tls::Direct),
    )
    .await
    .expect("third");
    let answer = answer_direct_tls(proxy.direct_tls, HEADER.as_bytes()).await;
    assert_stream_error(&answer, "resource-constraint");
    let mut tcp = connect_raw(proxy.starttls).await;
    assert_stream_error(&read_to_close(&mut tcp).await, "resource-constraint");
    for x in [&a, &b, &c] {
        x.iq(
            "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p",
            T,
        )
        .await;
    }
    c.close().await;
    // A slot is free again.
    let mut retry = None;
    for _ in 0..50 {
        if let Ok(d) = Client::connect(proxy.starttls, "bob", "bob-pw", Opts::new("4")).await {
            retry = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retry.is_some(), "no login after a slot was freed");
}
