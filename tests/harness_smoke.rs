//! Smoke tests of the test harness itself: real servers, real client, no proxy.

mod common;

use std::time::{Duration, Instant};

use common::client::{Client, Mech, Opts, Tls, befriend};
use common::servers::{Kind, Server, ServerOpts};

const T: Duration = Duration::from_secs(10);

fn users_opts(kind: Kind, require_tls: bool) -> ServerOpts {
    ServerOpts {
        kind,
        users: vec![("alice", "alice-pw"), ("bob", "bob-pw")],
        require_tls,
    }
}

async fn presence_and_message(kind: Kind) {
    let t0 = Instant::now();
    let server = Server::start(users_opts(kind, true));
    let started = t0.elapsed();
    let addr = server.c2s_addr();
    let (alice_jid, bob_jid) = (server.jid("alice"), server.jid("bob"));

    befriend(
        addr,
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        true,
        &Opts::new("befriend"),
    )
    .await;

    // alice: STARTTLS + SCRAM-SHA-1; bob: direct TLS + PLAIN.
    let alice = Client::connect(addr, "alice", "alice-pw", Opts::new("phone"))
        .await
        .unwrap_or_else(|e| panic!("alice login: {e}\n{}", server.log()));
    assert!(
        alice.jid.starts_with(&format!("{alice_jid}/")),
        "{}",
        alice.jid
    );
    let bob_opts = Opts::new("laptop").tls(Tls::Direct).mech(Mech::Plain);
    let bob = Client::connect(server.direct_tls_addr(), "bob", "bob-pw", bob_opts)
        .await
        .unwrap_or_else(|e| panic!("bob login: {e}\n{}", server.log()));
    assert_eq!(bob.jid, format!("{bob_jid}/laptop"));

    // Roster: mutual subscription.
    let roster = alice
        .iq(
            "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
            "r1",
            T,
        )
        .await;
    let item = roster
        .find("item")
        .unwrap_or_else(|| panic!("no roster item: {}", roster.raw));
    assert_eq!(item.attr("jid"), Some(bob_jid.as_str()));
    assert_eq!(item.attr("subscription"), Some("both"));

    bob.send("<presence/>").await;
    alice.send("<presence/>").await;
    bob.wait_for("alice's available presence", T, |s| {
        s.is_available_from(&alice.jid)
    })
    .await;
    alice
        .wait_for("bob's available presence", T, |s| {
            s.is_available_from(&bob.jid)
        })
        .await;

    bob.send(&format!(
        "<message to='{alice_jid}' type='chat' id='m1'><body>hi &amp; hello</body></message>"
    ))
    .await;
    let msg = alice
        .wait_for("bob's message", T, |s| s.is_message_from(&bob.jid))
        .await;
    assert_eq!(msg.body(), Some("hi & hello"));

    let alice_full = alice.jid.clone();
    alice.close().await;
    bob.wait_for("alice's unavailable presence", T, |s| {
        s.is_unavailable_from(&alice_full)
    })
    .await;
    bob.expect_none("stream error", Duration::from_millis(100), |s| {
        s.is_stream_error()
    })
    .await;
    bob.close().await;
    eprintln!(
        "{kind:?}: server start {started:?}, whole test {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_presence_and_message() {
    presence_and_message(Kind::Prosody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_presence_and_message() {
    presence_and_message(Kind::Ejabberd).await;
}

async fn plaintext_login(kind: Kind) {
    let server = Server::start(users_opts(kind, false));
    let opts = Opts::new("plain").tls(Tls::None).mech(Mech::Plain);
    let alice = Client::connect(server.c2s_addr(), "alice", "alice-pw", opts)
        .await
        .unwrap_or_else(|e| panic!("plaintext login: {e}\n{}", server.log()));
    assert_eq!(alice.jid, format!("{}/plain", server.jid("alice")));
    let pong = alice
        .iq(
            "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
            T,
        )
        .await;
    assert_eq!(pong.type_(), Some("result"), "{}", pong.raw);
    // A wrong password is refused.
    let opts = Opts::new("bad").tls(Tls::None).mech(Mech::Plain);
    let err = Client::connect(server.c2s_addr(), "alice", "wrong", opts)
        .await
        .err()
        .expect("login with a wrong password must fail");
    assert!(err.contains("not-authorized"), "{err}");
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_plaintext_login() {
    plaintext_login(Kind::Prosody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_plaintext_login() {
    plaintext_login(Kind::Ejabberd).await;
}

/// With TLS required, the plaintext stream offers no way to authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_requires_tls() {
    let server = Server::start(users_opts(Kind::Prosody, true));
    let opts = Opts::new("plain").tls(Tls::None).mech(Mech::Plain);
    let err = Client::connect(server.c2s_addr(), "alice", "alice-pw", opts)
        .await
        .err()
        .expect("plaintext login must fail when TLS is required");
    assert!(err.contains("not offered"), "{err}");
}

/// The harness' own edge cases: abrupt TCP loss is seen by contacts, a stream
/// error is recorded and closes the client, users can be added while running.
async fn loss_and_errors(kind: Kind) {
    let server = Server::start(users_opts(kind, true));
    let addr = server.c2s_addr();
    // bob subscribes to alice: bob has 'to' alice, alice has 'from' bob.
    befriend(
        addr,
        ("bob", "bob-pw"),
        ("alice", "alice-pw"),
        false,
        &Opts::new("befriend"),
    )
    .await;
    let bob = Client::connect(addr, "bob", "bob-pw", Opts::new("b").initial_presence(true))
        .await
        .unwrap_or_else(|e| panic!("bob login: {e}\n{}", server.log()));
    let alice = Client::connect(
        addr,
        "alice",
        "alice-pw",
        Opts::new("a").initial_presence(true),
    )
    .await
    .unwrap_or_else(|e| panic!("alice login: {e}\n{}", server.log()));
    bob.wait_for("alice's presence", T, |s| s.is_available_from(&alice.jid))
        .await;
    // alice is not subscribed to bob's presence.
    alice
        .expect_none("bob's presence", Duration::from_millis(300), |s| {
            s.is_presence_from(&bob.bare)
        })
        .await;
    let alice_full = alice.jid.clone();
    let mark = bob.mark();
    alice.drop_tcp();
    bob.wait_for_since(mark, "alice's unavailable after TCP loss", T, |s| {
        s.is_unavailable_from(&alice_full)
    })
    .await;
    assert!(!bob.closed());

    // Again with a TCP reset instead of a FIN.
    let alice = Client::connect(
        addr,
        "alice",
        "alice-pw",
        Opts::new("a2").initial_presence(true),
    )
    .await
    .unwrap_or_else(|e| panic!("alice login: {e}\n{}", server.log()));
    let alice_full = alice.jid.clone();
    bob.wait_for_since(mark, "alice's second presence", T, |s| {
        s.is_available_from(&alice_full)
    })
    .await;
    let mark = bob.mark();
    alice.reset_tcp();
    bob.wait_for_since(mark, "alice's unavailable after TCP reset", T, |s| {
        s.is_unavailable_from(&alice_full)
    })
    .await;
    assert!(bob.since(mark).iter().all(|s| s.name == "presence"));

    // Unbalanced XML: the server answers with a stream error and closes.
    bob.send("<message to='alice@localhost'><body>x</message>")
        .await;
    let err = bob
        .wait_for("stream error", T, |s| s.is_stream_error())
        .await;
    assert!(err.error_condition().is_some(), "{}", err.raw);
    assert!(bob.wait_closed(T).await, "{}", bob.dump());
    eprintln!("{kind:?} stream error: {}", err.raw);

    // Registering while running.
    server.register("carol", r#"ca"rol\pw"#);
    let carol = Client::connect(addr, "carol", r#"ca"rol\pw"#, Opts::new("c"))
        .await
        .unwrap_or_else(|e| panic!("carol login: {e}\n{}", server.log()));
    carol
        .expect_none("any stanza", Duration::from_millis(200), |_| true)
        .await;
    carol.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_loss_and_errors() {
    loss_and_errors(Kind::Prosody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_loss_and_errors() {
    loss_and_errors(Kind::Ejabberd).await;
}

/// The client's stream splitter and parser, fed byte by byte.
#[test]
fn framer_and_parser() {
    use common::client::{NS_STREAM, Stanza, frame_chunks};
    let input = "<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='x&amp;y' version='1.0'>\
        <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features> \n\
        <message from='a@b/c' to=\"d@e\"><body>1 &lt; 2 &amp;&#x41;<![CDATA[<x>]]></body>\
        <x xmlns='jabber:x:data'><f:y xmlns:f='urn:f'/></x></message>\
        <presence/> </stream:stream>";
    let whole = frame_chunks(&[input.as_bytes()]).unwrap();
    let bytes: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
    let split = frame_chunks(&bytes).unwrap();
    assert_eq!(whole, split);
    assert_eq!(whole.len(), 5, "{whole:?}");
    assert_eq!(whole[0], "open");
    assert_eq!(whole[4], "close");
    assert_eq!(whole[3], "<presence/>");
    let scope = vec![
        (String::new(), "jabber:client".to_string()),
        ("stream".to_string(), NS_STREAM.to_string()),
    ];
    let f = Stanza::parse(&whole[1], &scope, 0);
    assert_eq!((f.name.as_str(), f.ns.as_str()), ("features", NS_STREAM));
    assert_eq!(f.children[0].ns, "urn:ietf:params:xml:ns:xmpp-bind");
    let m = Stanza::parse(&whole[2], &scope, 1);
    assert_eq!(
        (m.name.as_str(), m.ns.as_str()),
        ("message", "jabber:client")
    );
    assert!(m.is_message_from("a@b") && m.is_message_from("a@b/c") && !m.is_message_from("a@b/d"));
    assert_eq!(m.body(), Some("1 < 2 &A<x>"));
    assert_eq!(m.find("y").map(|y| y.ns.as_str()), Some("urn:f"));
    assert_eq!(m.attr("to"), Some("d@e"));
    // Incomplete input stays pending; garbage is an error.
    assert_eq!(
        frame_chunks(&[b"<stream:stream><iq><a"]).unwrap(),
        vec!["open".to_string(), "pending:<iq><a".to_string()]
    );
    assert!(frame_chunks(&[b"<stream:stream><iq></a></iq>"]).is_err());
}
