//! XEP-0198 Stream Management in the test client, directly against the real
//! servers (no proxy): enable, counting and acks both ways, the server's own
//! `<r/>` answered automatically, TCP loss and resumption, failed resumption.

mod common;

use std::time::{Duration, Instant};

use common::client::{Client, NS_CLIENT, NS_SM, Opts, Stanza};
use common::servers::{Kind, Server, ServerOpts};

const T: Duration = Duration::from_secs(10);
const N: u32 = 30;

fn is_stanza(s: &Stanza) -> bool {
    s.ns == NS_CLIENT && matches!(s.name.as_str(), "message" | "presence" | "iq")
}

fn msg(to: &str, id: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{id}</body></message>")
}

/// Every `<r/>` the client answered was answered with `base` + the stanzas
/// in its log before that `<r/>`; all answers get written.
async fn check_answers(c: &Client, base: u32, what: &str) -> usize {
    // The reader records an <r/> in the log and its answer together, so the
    // answers taken after the log cover every <r/> in it (and maybe more).
    let log = c.received();
    let answered: Vec<(usize, u32)> = c
        .sm_answered()
        .into_iter()
        .filter(|a| a.0 < log.len())
        .collect();
    let peer_rs: Vec<usize> = log
        .iter()
        .filter(|s| s.ns == NS_SM && s.name == "r")
        .map(|s| s.index)
        .collect();
    assert_eq!(
        answered.iter().map(|a| a.0).collect::<Vec<_>>(),
        peer_rs,
        "{what}: every <r/> from the server is answered\n{}",
        c.dump()
    );
    for &(idx, h) in &answered {
        let before = log[..idx].iter().filter(|s| is_stanza(s)).count() as u32;
        assert_eq!(
            h,
            base + before,
            "{what}: <a/> for <r/> #{idx}\n{}",
            c.dump()
        );
    }
    let deadline = Instant::now() + T;
    while c.sm_answers_written() < answered.len() {
        assert!(
            Instant::now() < deadline,
            "{what}: answers not written\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    answered.len()
}

fn no_stream_error(c: &Client, what: &str) {
    assert!(
        !c.closed() && !c.received().iter().any(Stanza::is_stream_error),
        "{what}: stream must stay open\n{}",
        c.dump()
    );
}

async fn sm_enable_ack_resume(kind: Kind) {
    let t0 = Instant::now();
    let server = Server::start(
        ServerOpts::new(kind)
            .user("alice", "alice-pw")
            .user("bob", "bob-pw"),
    );
    let addr = server.c2s_addr();
    let started = t0.elapsed();
    let login = |user: &'static str, opts: Opts| {
        let server = &server;
        async move {
            Client::connect(addr, user, &format!("{user}-pw"), opts)
                .await
                .unwrap_or_else(|e| panic!("{user} login: {e}\n{}", server.log()))
        }
    };
    let alice = login("alice", Opts::new("sm").sm(true)).await;
    let bob = login("bob", Opts::new("sm").sm(true)).await;

    // <enabled/>
    let enabled = alice.enabled().expect("<enabled/>");
    eprintln!("{kind:?} <enabled/>: {}", enabled.raw);
    let id = alice.sm_id().expect("resumption id");
    assert_eq!(enabled.attr("id"), Some(id.as_str()));
    assert!(
        matches!(enabled.attr("resume"), Some("true" | "1")),
        "{}",
        enabled.raw
    );
    assert!(enabled.attr("max").is_some(), "{}", enabled.raw);
    assert_eq!(enabled.attr("location"), None, "{}", enabled.raw);
    assert_ne!(bob.sm_id(), Some(id.clone()));
    assert_eq!(
        (alice.inbound_count(), alice.outbound_count()),
        (0, 0),
        "{}",
        alice.dump()
    );
    assert_eq!(alice.last_ack_from_peer(), None);

    // N messages each way, an ack request every 10.
    for i in 1..=N {
        alice.send(&msg(&bob.jid, &format!("a{i}"))).await;
        bob.send(&msg(&alice.jid, &format!("b{i}"))).await;
        if i.is_multiple_of(10) {
            let (ha, hb) = tokio::join!(alice.request_ack(T), bob.request_ack(T));
            assert_eq!((ha, hb), (i, i), "server's h after {i} stanzas each");
            assert_eq!(alice.outbound_count(), i);
            assert_eq!(alice.last_ack_from_peer(), Some(i));
            assert!(alice.unacked_outbound().is_empty(), "{}", alice.dump());
        }
    }
    let last = format!("b{N}");
    alice
        .wait_for("bob's last message", T, |s| s.id() == Some(&last))
        .await;
    let last = format!("a{N}");
    bob.wait_for("alice's last message", T, |s| s.id() == Some(&last))
        .await;
    for c in [&alice, &bob] {
        let stanzas = c.received().iter().filter(|s| is_stanza(s)).count() as u32;
        assert_eq!(stanzas, N, "{}", c.dump());
        assert_eq!(c.inbound_count(), N, "{}", c.dump());
        assert_eq!(c.outbound_count(), N, "{}", c.dump());
    }

    // Several stanzas in one write count one by one; <r/> and whitespace don't.
    let two = format!(
        " {}\n{}",
        msg(&bob.jid, "a-multi-1"),
        msg(&bob.jid, "a-multi-2")
    );
    alice.send(&two).await;
    assert_eq!(alice.outbound_count(), N + 2);
    assert_eq!(alice.unacked_outbound().len(), 2, "{}", alice.dump());
    assert_eq!(alice.request_ack(T).await, N + 2);
    assert!(alice.unacked_outbound().is_empty());
    assert_eq!(alice.outbound_count(), N + 2);
    bob.wait_for("alice's multi message", T, |s| s.id() == Some("a-multi-2"))
        .await;

    // The server's own <r/>: answered with the exact count, and accepted (a
    // server sends its next <r/> only after an <a/> for the previous one, and
    // closes the stream on an h above what it sent).
    let (ra, rb) = (
        check_answers(&alice, 0, "alice").await,
        check_answers(&bob, 0, "bob").await,
    );
    eprintln!("{kind:?}: server sent <r/> {ra} times to alice, {rb} times to bob");
    assert!(ra >= 2 && rb >= 2, "{}\n{}", alice.dump(), bob.dump());
    no_stream_error(&alice, "alice");
    no_stream_error(&bob, "bob");

    // Last words before the loss: one stanza in (counted), two out (not acked).
    bob.send(&msg(&alice.jid, "b-before-drop")).await;
    alice
        .wait_for("b-before-drop", T, |s| s.id() == Some("b-before-drop"))
        .await;
    alice.send(&msg(&bob.jid, "a-unacked-1")).await;
    alice.send(&msg(&bob.jid, "a-unacked-2")).await;
    bob.wait_for("a-unacked-2", T, |s| s.id() == Some("a-unacked-2"))
        .await;
    let snap = alice.sm_snapshot();
    assert_eq!(snap.id.as_deref(), Some(id.as_str()));
    assert_eq!(snap.inbound, N + 1, "{}", alice.dump());
    assert_eq!(snap.outbound, N + 4, "{}", alice.dump());
    assert_eq!(snap.last_ack, Some(N + 2));
    assert_eq!(
        snap.unacked.iter().map(|u| u.0).collect::<Vec<_>>(),
        vec![N + 3, N + 4]
    );
    assert!(snap.unacked[0].1.contains("a-unacked-1"), "{snap:?}");
    assert_eq!(snap.unacked_after(N + 3).len(), 1);
    assert!(snap.unacked_after(N + 4).is_empty());
    let alice_jid = alice.jid.clone();
    alice.drop_tcp();

    // A message to the full JID while alice is away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob_mark = bob.mark();
    bob.send(&msg(&alice_jid, "b-away")).await;
    let hb = bob.request_ack(T).await;
    assert_eq!(hb, bob.outbound_count(), "{}", bob.dump());

    // Resume with the count taken at the loss.
    let t_resume = Instant::now();
    let alice = login(
        "alice",
        Opts::new("sm").resume(&id, snap.inbound, &alice_jid),
    )
    .await;
    let resumed = alice.resumed().expect("<resumed/>");
    eprintln!(
        "{kind:?} <resumed/> after {:?}: {}",
        t_resume.elapsed(),
        resumed.raw
    );
    assert_eq!(alice.jid, alice_jid);
    assert_eq!(
        resumed.attr("h"),
        Some((N + 4).to_string().as_str()),
        "the server handled everything alice sent"
    );
    assert!(snap.unacked_after(N + 4).is_empty());
    assert_eq!(alice.last_ack_from_peer(), Some(N + 4));
    assert_eq!(alice.outbound_count(), N + 4);
    assert!(alice.unacked_outbound().is_empty());
    assert_eq!(alice.enabled().map(|e| e.raw), None);
    let away = alice
        .wait_for("the message sent while away", T, |s| {
            s.id() == Some("b-away")
        })
        .await;
    eprintln!("{kind:?} replayed: {}", away.raw);
    // Nothing else replayed: the h alice resumed with was exact.
    alice
        .expect_none("other replayed stanzas", Duration::from_millis(500), |s| {
            is_stanza(s) && s.id() != Some("b-away")
        })
        .await;
    assert_eq!(alice.inbound_count(), snap.inbound + 1, "{}", alice.dump());
    bob.expect_none_since(bob_mark, "an error bounce", Duration::ZERO, |s| {
        s.type_() == Some("error")
    })
    .await;

    // The resumed session goes on: counts continue, the server's <r/> is answered.
    alice.send(&msg(&bob.jid, "a-resumed")).await;
    assert_eq!(alice.request_ack(T).await, N + 5);
    bob.wait_for("a-resumed", T, |s| s.id() == Some("a-resumed"))
        .await;
    bob.send(&msg(&alice_jid, "b-resumed")).await;
    alice
        .wait_for("b-resumed", T, |s| s.id() == Some("b-resumed"))
        .await;
    assert_eq!(alice.inbound_count(), snap.inbound + 2);
    let ra = check_answers(&alice, snap.inbound, "resumed alice").await;
    eprintln!("{kind:?}: server sent <r/> {ra} times to the resumed alice");
    no_stream_error(&alice, "resumed alice");
    alice.close().await;

    // A closed session cannot be resumed, nor an unknown one.
    for previd in [id.as_str(), "bm8tc3VjaC1zZXNzaW9u"] {
        let err = Client::connect(
            addr,
            "alice",
            "alice-pw",
            Opts::new("sm").resume(previd, 0, &alice_jid),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("resuming {previd} must fail"));
        eprintln!("{kind:?} resume {previd}: {err}");
        assert!(err.contains("<failed"), "{err}");
        assert!(err.contains("item-not-found"), "{err}");
    }
    no_stream_error(&bob, "bob");
    bob.close().await;
    eprintln!(
        "{kind:?}: server start {started:?}, whole test {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_sm_enable_ack_resume() {
    sm_enable_ack_resume(Kind::Prosody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_sm_enable_ack_resume() {
    sm_enable_ack_resume(Kind::Ejabberd).await;
}

/// Without `.sm(true)` nothing is counted or answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_sm_off_by_default() {
    let server = Server::start(ServerOpts::new(Kind::Prosody).user("carol", "carol-pw"));
    let c = Client::connect(server.c2s_addr(), "carol", "carol-pw", Opts::new("x"))
        .await
        .unwrap_or_else(|e| panic!("login: {e}\n{}", server.log()));
    assert!(
        c.features.child_ns("sm", NS_SM).is_some(),
        "{}",
        c.features.raw
    );
    assert_eq!((c.sm_id(), c.enabled().is_none()), (None, true));
    c.send(&msg(&c.jid, "self")).await;
    c.wait_for("own message", T, |s| s.id() == Some("self"))
        .await;
    assert_eq!((c.inbound_count(), c.outbound_count()), (0, 0));
    assert_eq!(c.sm_snapshot().id, None);
    c.close().await;
}
