//! Faults: the upstream dying mid-session, a client dropping mid-stanza, and SIGTERM with a
//! thousand sessions open — no hang, no leak of presence, nothing left behind.

mod common;

use std::time::{Duration, Instant};

use common::binary::{Binary, raise_fd_limit};
use common::client::{Client, Mech, Opts, befriend};
use common::proxy;
use common::servers::{Kind, Server, ServerOpts};
use common::world::invisible;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dies_mid_session() {
    let server = Server::start(ServerOpts {
        kind: Kind::Prosody,
        users: vec![("alice", "alice-pw")],
        require_tls: false,
    });
    let upstream = server.c2s_addr();
    let proxy = proxy::start(upstream, "plain", &[]).await;
    let alice = Client::connect(proxy.starttls, "alice", "alice-pw", Opts::new("a"))
        .await
        .expect("alice");
    alice.send("<presence/>").await;
    let started = Instant::now();
    drop(server); // kills Prosody
    alice
        .expect_stream_error("remote-connection-failed", T)
        .await;
    assert!(alice.wait_closed(T).await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The proxy itself is fine: a new client is told the server is unreachable, promptly.
    let again = Client::connect(proxy.starttls, "alice", "alice-pw", Opts::new("b")).await;
    assert!(again.is_err());
    assert!(
        proxy::metric("xmpp_veil_stream_errors_total{condition=\"remote-connection-failed\"}")
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_drops_mid_stanza() {
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
        &Opts::new("s"),
    )
    .await;
    let proxy = proxy::start(server.c2s_addr(), "plain", &[]).await;
    let st = Client::connect(
        server.c2s_addr(),
        "stpeter",
        "stpeter-pw",
        Opts::new("o").initial_presence(true),
    )
    .await
    .expect("stpeter");
    let joe = Client::connect(proxy.starttls, "joe", "joe-pw", Opts::new("j"))
        .await
        .expect("joe");
    invisible(&joe, None).await;
    joe.send("<presence to='stpeter@localhost'/>").await;
    st.wait_for("joe's directed presence", T, |s| {
        s.is_available_from(&joe.jid)
    })
    .await;
    joe.send("<message to='stpeter@localhost'><body>half a sta")
        .await;
    let jid = joe.jid.clone();
    let mark = st.mark();
    joe.drop_tcp();
    st.wait_for_since(mark, "unavailable after the drop", T, |s| {
        s.is_unavailable_from(&jid)
    })
    .await;
    // The half stanza never reached anyone.
    st.expect_none("the half message", Duration::from_millis(500), |s| {
        s.name == "message"
    })
    .await;
}

/// SIGTERM with 1 000 sessions open: every client gets `system-shutdown`, each upstream stream is
/// closed after its pending `unavailable`s, and the process exits within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_thousand_sessions() {
    raise_fd_limit();
    const USERS: usize = 10;
    const PER_USER: usize = 100;
    let server = Server::start(ServerOpts {
        kind: Kind::Prosody,
        users: vec![("watcher", "watcher-pw")],
        require_tls: false,
    });
    let users: Vec<(String, String)> = (0..USERS)
        .map(|i| (format!("u{i}"), format!("pw{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    server.register_many(&refs);
    let watcher = Client::connect(
        server.c2s_addr(),
        "watcher",
        "watcher-pw",
        Opts::new("w").initial_presence(true),
    )
    .await
    .expect("watcher");

    let upstream = server.c2s_addr().to_string();
    let mut proxy = Binary::start(&["--upstream", &upstream, "--upstream-tls", "plain"], &[]).await;
    let addr = proxy.direct_tls;

    // 1 000 sessions, logged in 50 at a time; every tenth one is invisible and has shown itself
    // to the watcher by directed presence (so it has an `unavailable` pending at shutdown).
    let mut clients = Vec::with_capacity(USERS * PER_USER);
    for batch in 0..(USERS * PER_USER / 50) {
        let mut tasks = Vec::new();
        for k in 0..50 {
            let n = batch * 50 + k;
            let (user, pw) = users[n % USERS].clone();
            tasks.push(tokio::spawn(async move {
                let opts = Opts::new(&format!("r{n}"))
                    .tls(common::client::Tls::Direct)
                    .mech(Mech::Plain);
                let c = Client::connect(addr, &user, &pw, opts)
                    .await
                    .unwrap_or_else(|e| panic!("session {n}: {e}"));
                if n % 10 == 0 {
                    invisible(&c, None).await;
                    c.send("<presence to='watcher@localhost'/>").await;
                }
                c
            }));
        }
        for t in tasks {
            clients.push(t.await.expect("login task"));
        }
    }
    let shown: Vec<String> = clients.iter().step_by(10).map(|c| c.jid.clone()).collect();
    for jid in &shown {
        watcher
            .wait_for("directed presence", T, |s| s.is_available_from(jid))
            .await;
    }
    let mark = watcher.mark();

    let (took, success) = proxy.terminate(Duration::from_secs(8)).await;
    eprintln!("shutdown with {} sessions took {took:?}", clients.len());
    assert!(success, "xmpp-veil did not exit cleanly");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let mut shutdown_errors = 0;
    for c in &clients {
        c.expect_stream_error("system-shutdown", T).await;
        shutdown_errors += 1;
    }
    assert_eq!(shutdown_errors, USERS * PER_USER);
    for jid in &shown {
        watcher
            .wait_for_since(mark, "unavailable at shutdown", T, |s| {
                s.is_unavailable_from(jid)
            })
            .await;
    }
}
