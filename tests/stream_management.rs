//! End to end: XEP-0198 stream management through the invisibility filter, against a real
//! Prosody and a real ejabberd (both offer sm:3), and a fake upstream for the redirects that
//! real servers do not send in their default setup.

mod common;

use std::time::Duration;

use common::client::{Client, Mech, Opts, Tls};
use common::proxy;
use common::servers::{HIBERNATION_SECS, Kind};
use common::world::{invisible, world};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

both_servers!(
    counts_match_through_the_filter,
    tcp_drop_then_resume_stays_invisible,
    resume_the_proxy_does_not_hold_is_refused,
    hibernation_timeout_still_tells_everyone,
    stream_close_ends_the_session_a_drop_after_unavailable_keeps_it,
);

/// Invisible IQ (consumed, answered by the proxy), withheld presence, XEP-0018 fan-out (one
/// stanza → two), then 200 messages both ways with acks every 10: no stream error, and every
/// ack matches what each side sent.
async fn counts_match_through_the_filter(kind: Kind) {
    let w = world(kind).await;
    let bob = w.observer("bob").await;
    let joe = Client::connect(w.proxy.starttls, "joe", "joe-pw", Opts::new("sm").sm(true))
        .await
        .expect("joe");
    let enabled = joe.enabled().expect("enabled");
    assert!(enabled.attr("location").is_none(), "{}", enabled.raw);

    invisible(&joe, Some("true")).await;
    joe.send("<presence><show>away</show></presence>").await; // withheld
    joe.send("<presence type='visible'/>").await; // consumed; hands back to the server
    joe.send("<presence to='pgmillard@localhost' type='invisible'/>")
        .await; // → unavailable + fan-out
    joe.send("<presence><show>chat</show></presence>").await; // fanned out to 2
    assert_eq!(joe.request_ack(T).await, joe.outbound_count());

    for i in 0..200u32 {
        joe.send(&format!(
            "<message to='bob@localhost' type='chat' id='j{i}'><body>j{i}</body></message>"
        ))
        .await;
        bob.send(&format!(
            "<message to='{}' type='chat' id='b{i}'><body>b{i}</body></message>",
            joe.jid
        ))
        .await;
        if i % 10 == 9 {
            assert_eq!(
                joe.request_ack(T).await,
                joe.outbound_count(),
                "after message {i}"
            );
        }
    }
    let last = format!("b{}", 199);
    joe.wait_for("bob's last message", T, |s| s.body() == Some(last.as_str()))
        .await;
    bob.wait_for("joe's last message", T, |s| s.body() == Some("j199"))
        .await;
    // The server's requests were answered with counts it accepted: no stream error, and the
    // server keeps talking to us.
    assert!(
        !joe.received().iter().any(|s| s.is_stream_error()),
        "{}",
        joe.dump()
    );
    joe.iq(
        "<iq type='get' id='ping'><ping xmlns='urn:xmpp:ping'/></iq>",
        "ping",
        T,
    )
    .await;
    assert_eq!(joe.request_ack(T).await, joe.outbound_count());
    assert!(!joe.closed());
    let bodies = joe
        .received()
        .iter()
        .filter(|s| s.name == "message")
        .count();
    assert_eq!(bodies, 200, "each of bob's messages once");
}

/// A TCP drop and a resumption through the other listener: the session is still invisible,
/// the contact shown by directed presence is told `unavailable` at the drop and sees the
/// resource again after it, and no message is lost or duplicated.
async fn tcp_drop_then_resume_stays_invisible(kind: Kind) {
    let w = world(kind).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let bob = w.observer("bob").await;
    let joe = Client::connect(
        w.proxy.starttls,
        "joe",
        "joe-pw",
        Opts::new("phone").sm(true),
    )
    .await
    .expect("joe");
    let jid = joe.jid.clone();
    invisible(&joe, None).await;
    joe.send("<presence to='stpeter@localhost'><show>dnd</show></presence>")
        .await;
    st.wait_for("directed presence", T, |s| s.is_available_from(&jid))
        .await;
    for i in 0..5 {
        bob.send(&format!(
            "<message to='{jid}' id='before{i}'><body>before{i}</body></message>"
        ))
        .await;
    }
    joe.wait_for("before4", T, |s| s.body() == Some("before4"))
        .await;
    joe.request_ack(T).await;
    joe.send("<message to='bob@localhost' id='unacked'><body>unacked</body></message>")
        .await;

    let snap = joe.sm_snapshot();
    let mark_st = st.mark();
    joe.drop_tcp();
    // At the drop: stpeter (a roster contact shown by directed presence) is told.
    st.wait_for_since(mark_st, "unavailable at the drop", T, |s| {
        s.is_unavailable_from(&jid)
    })
    .await;
    for i in 0..3 {
        bob.send(&format!(
            "<message to='{jid}' id='away{i}'><body>away{i}</body></message>"
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mark_st = st.mark();
    let id = snap.id.clone().expect("sm id");
    let opts = Opts::new("phone")
        .tls(Tls::Direct)
        .mech(Mech::Plain)
        .resume(&id, snap.inbound, &jid);
    let joe = Client::connect(w.proxy.direct_tls, "joe", "joe-pw", opts)
        .await
        .unwrap_or_else(|e| panic!("resume through the proxy: {e}\n{}", w.server.log()));
    let resumed = joe.resumed().expect("resumed");
    let h: u32 = resumed.attr("h").and_then(|h| h.parse().ok()).expect("h");
    for stanza in snap.unacked_after(h) {
        joe.send(&stanza).await;
    }
    // The away messages arrive once each; the ones acked before the drop are not replayed.
    for i in 0..3 {
        let body = format!("away{i}");
        joe.wait_for("message sent while away", T, |s| {
            s.body() == Some(body.as_str())
        })
        .await;
    }
    bob.wait_for("joe's unacked message", T, |s| s.body() == Some("unacked"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let body = format!("away{i}");
        let n = joe
            .received()
            .iter()
            .filter(|s| s.body() == Some(body.as_str()))
            .count();
        assert_eq!(n, 1, "{body} delivered {n} times\n{}", joe.dump());
    }
    assert!(
        !joe.received()
            .iter()
            .any(|s| s.body().is_some_and(|b| b.starts_with("before")))
    );
    assert_eq!(
        bob.received()
            .iter()
            .filter(|s| s.body() == Some("unacked"))
            .count(),
        1
    );

    // stpeter sees the resource again; the session is still invisible to everyone else.
    st.wait_for_since(mark_st, "presence again after the resumption", T, |s| {
        s.is_available_from(&jid)
    })
    .await;
    let mark_st = st.mark();
    joe.send("<presence><show>chat</show></presence>").await;
    pg.expect_none("any available presence from invisible joe", QUIET, |s| {
        s.is_available_from(&jid)
    })
    .await;
    st.expect_none_since(
        mark_st,
        "undirected presence from invisible joe",
        Duration::from_millis(10),
        |s| s.is_available_from(&jid),
    )
    .await;
    assert_eq!(joe.request_ack(T).await, joe.outbound_count());
    assert!(proxy::metric("xmpp_veil_sm_resumptions_total{result=\"ok\"}") >= 1.0);
}

/// A stream the proxy never saw (joe enabled stream management directly with the server) cannot
/// be resumed through the proxy, although the server would resume it: the proxy does not know
/// its invisibility, so it answers `<failed/>` itself. An unknown id too.
async fn resume_the_proxy_does_not_hold_is_refused(kind: Kind) {
    let w = world(kind).await;
    let direct = Client::connect(
        w.server.c2s_addr(),
        "joe",
        "joe-pw",
        Opts::new("d").sm(true),
    )
    .await
    .expect("joe");
    let snap = direct.sm_snapshot();
    let jid = direct.jid.clone();
    direct.drop_tcp();
    let id = snap.id.expect("sm id");
    let err = Client::connect(
        w.proxy.starttls,
        "joe",
        "joe-pw",
        Opts::new("d").resume(&id, snap.inbound, &jid),
    )
    .await
    .err()
    .expect("the proxy must refuse");
    assert!(
        err.contains("<failed") && err.contains("item-not-found"),
        "{err}"
    );
    let err = Client::connect(
        w.proxy.starttls,
        "joe",
        "joe-pw",
        Opts::new("x").resume("bogus", 0, &jid),
    )
    .await
    .err()
    .expect("unknown id");
    assert!(err.contains("<failed"), "{err}");
    assert!(proxy::metric("xmpp_veil_sm_resumptions_total{result=\"failed\"}") >= 2.0);
}

/// A client that closes its stream (`</stream:stream>`) has ended its session: the proxy closes
/// the upstream stream too and a later `<resume/>` fails. A client that sends `unavailable` and
/// then drops the TCP connection without closing the stream (what Psi 1.5 does at "Offline":
/// measured in `tests/real_clients.rs`) left a resumable stream, as the server itself would see
/// it: the session is held, and the client could resume it.
async fn stream_close_ends_the_session_a_drop_after_unavailable_keeps_it(kind: Kind) {
    let w = world(kind).await;
    let joe = w.joe(Opts::new("closer").sm(true)).await;
    let jid = joe.jid.clone();
    joe.send("<presence type='invisible'/>").await;
    joe.request_ack(T).await;
    let snap = joe.sm_snapshot();
    joe.close().await;
    let err = Client::connect(
        w.proxy.starttls,
        "joe",
        "joe-pw",
        Opts::new("closer").resume(&snap.id.expect("sm id"), snap.inbound, &jid),
    )
    .await
    .err()
    .expect("a closed stream cannot be resumed");
    assert!(err.contains("<failed"), "{err}");

    let joe = w.joe(Opts::new("psi").sm(true)).await;
    let jid = joe.jid.clone();
    joe.send("<presence type='invisible'/>").await;
    joe.send("<presence type='unavailable'/>").await;
    joe.request_ack(T).await;
    let snap = joe.sm_snapshot();
    joe.drop_tcp();
    let back = Client::connect(
        w.proxy.starttls,
        "joe",
        "joe-pw",
        Opts::new("psi").resume(&snap.id.expect("sm id"), snap.inbound, &jid),
    )
    .await
    .expect("a dropped stream is resumed");
    assert!(back.resumed().is_some());
}

/// A fake upstream that offers stream management with a `location`, then redirects with
/// `see-other-host`: neither reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_reach_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='f1' version='1.0'>";
        let mut buf = vec![0u8; 65536];
        let mut seen = String::new();
        let mut step = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            let reply = match step {
                0 if seen.contains("<stream:stream") => format!(
                    "{header}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
                ),
                1 if seen.contains("</auth>") => "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into(),
                2 if seen.matches("<stream:stream").count() >= 2 => format!(
                    "{header}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
                     <sm xmlns='urn:xmpp:sm:3'/></stream:features>"
                ),
                3 if seen.contains("</bind>") => {
                    "<iq type='result' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                     <jid>joe@localhost/r</jid></bind></iq>"
                        .into()
                }
                4 if seen.contains("<enable") => "<enabled xmlns='urn:xmpp:sm:3' id='sm1' resume='true' \
                     location='elsewhere.example:5222' max='60'/>"
                    .into(),
                5 if seen.contains("redirect-me") => "<stream:error><see-other-host \
                     xmlns='urn:ietf:params:xml:ns:xmpp-streams'>elsewhere.example:5222</see-other-host>\
                     </stream:error></stream:stream>"
                    .into(),
                _ => continue,
            };
            step += 1;
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    // The fake answers no IQ (not even the one that asks it for privacy lists): silent.
    let proxy = proxy::start(upstream, "plain", &["--invisibility-strategy", "silent"]).await;
    let joe = Client::connect(
        proxy.direct_tls,
        "joe",
        "pw",
        Opts::new("r").tls(Tls::Direct).mech(Mech::Plain).sm(true),
    )
    .await
    .expect("login through the fake upstream");
    let enabled = joe.enabled().expect("enabled");
    assert_eq!(enabled.attr("id"), Some("sm1"));
    assert!(enabled.attr("location").is_none(), "{}", enabled.raw);
    joe.send("<message to='redirect-me@localhost'><body>x</body></message>")
        .await;
    joe.expect_stream_error("system-shutdown", T).await;
    assert!(
        !joe.received().iter().any(|s| s.raw.contains("elsewhere")),
        "{}",
        joe.dump()
    );
    fake.abort();
}

/// The invisibility promise across a resume window: invisible joe showed himself by directed
/// presence to a roster contact and to a stranger; his connection drops and he never resumes.
/// The contact is told `unavailable` at the drop (by the proxy: the server would leave a
/// ghost), the stranger when the hibernated session times out (by the server, which tracks
/// directed presence to non-roster entities).
async fn hibernation_timeout_still_tells_everyone(kind: Kind) {
    let w = world(kind).await;
    let st = w.observer("stpeter").await;
    let stranger = w.observer("stranger").await;
    let pg = w.observer("pgmillard").await;
    let joe = Client::connect(
        w.proxy.starttls,
        "joe",
        "joe-pw",
        Opts::new("gone").sm(true),
    )
    .await
    .expect("joe");
    let jid = joe.jid.clone();
    invisible(&joe, None).await;
    joe.send("<presence to='stpeter@localhost'/>").await;
    joe.send("<presence to='stranger@localhost'/>").await;
    st.wait_for("directed presence", T, |s| s.is_available_from(&jid))
        .await;
    stranger
        .wait_for("directed presence", T, |s| s.is_available_from(&jid))
        .await;
    let started = std::time::Instant::now();
    joe.drop_tcp();
    st.wait_for("unavailable at the drop", T, |s| {
        s.is_unavailable_from(&jid)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let window = Duration::from_secs(HIBERNATION_SECS + 10);
    stranger
        .wait_for("unavailable when the hibernation ends", window, |s| {
            s.is_unavailable_from(&jid)
        })
        .await;
    eprintln!("{kind:?}: stranger told after {:?}", started.elapsed());
    pg.expect_none(
        "any presence from invisible joe",
        Duration::from_millis(10),
        |s| s.is_presence_from(&jid),
    )
    .await;
}

/// Review findings, end to end: stanzas pipelined right after `<resume/>` are judged by the
/// resumed (invisible) session; a second `<enable/>` does not break the counts; a stanza from
/// the server that the proxy cannot relay ends the session with the `unavailable`s said.
mod review {
    use super::*;
    use base64::Engine as _;
    use common::client::tls_client_config;
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    async fn read_until<S: tokio::io::AsyncRead + Unpin>(s: &mut S, what: &str) -> String {
        let mut seen = String::new();
        let mut buf = [0u8; 8192];
        let deadline = tokio::time::Instant::now() + T;
        while !seen.contains(what) {
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {what} in: {seen}"))
                .unwrap_or(0);
            assert!(n > 0, "closed before {what}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stanzas_pipelined_after_resume_are_judged_by_the_resumed_session() {
        let w = world(Kind::Prosody).await;
        let pg = w.observer("pgmillard").await;
        let joe = Client::connect(w.proxy.starttls, "joe", "joe-pw", Opts::new("p").sm(true))
            .await
            .expect("joe");
        invisible(&joe, None).await;
        let snap = joe.sm_snapshot();
        let jid = joe.jid.clone();
        joe.drop_tcp();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let tcp = tokio::net::TcpStream::connect(w.proxy.direct_tls)
            .await
            .unwrap();
        let mut s = TlsConnector::from(tls_client_config(true))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let header = "<stream:stream to='localhost' xmlns='jabber:client' \
                      xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
        s.write_all(header.as_bytes()).await.unwrap();
        read_until(&mut s, "</stream:features>").await;
        let plain = base64::engine::general_purpose::STANDARD.encode(b"\0joe\0joe-pw");
        s.write_all(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_until(&mut s, "<success").await;
        s.write_all(header.as_bytes()).await.unwrap();
        read_until(&mut s, "</stream:features>").await;
        let id = snap.id.expect("sm id");
        s.write_all(
            format!(
                "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{}'/><presence><show>chat</show></presence>",
                snap.inbound
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut seen = read_until(&mut s, "<resumed").await;
        pg.expect_none("presence from invisible joe", QUIET, |st| {
            st.is_presence_from(&jid)
        })
        .await;
        // The presence was handled by the resumed session (withheld), not refused by a fresh one.
        let mut buf = [0u8; 8192];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(!seen.contains("type='error'"), "{seen}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_enable_is_refused_and_counting_goes_on() {
        let w = world(Kind::Prosody).await;
        let joe = Client::connect(w.proxy.starttls, "joe", "joe-pw", Opts::new("e").sm(true))
            .await
            .expect("joe");
        joe.send("<message to='bob@localhost'><body>1</body></message>")
            .await;
        joe.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let failed = joe.wait_for("failed", T, |s| s.name == "failed").await;
        assert!(failed.raw.contains("unexpected-request"), "{}", failed.raw);
        joe.send("<message to='bob@localhost'><body>2</body></message>")
            .await;
        assert_eq!(joe.request_ack(T).await, joe.outbound_count());
        assert!(!joe.closed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unrelayable_server_stanza_still_ends_with_the_unavailables() {
        let w = world(Kind::Prosody).await;
        let st = w.observer("stpeter").await;
        let bob = w.observer("bob").await;
        let joe = Client::connect(w.proxy.starttls, "joe", "joe-pw", Opts::new("d"))
            .await
            .expect("joe");
        invisible(&joe, None).await;
        joe.send("<presence to='stpeter@localhost'/>").await;
        st.wait_for("directed presence", T, |s| s.is_available_from(&joe.jid))
            .await;
        let mark = st.mark();
        // Deeper than the proxy accepts (--max-depth 64 on the client leg; the server leg has
        // its own, larger bound, so a deeper one is needed to reach it).
        let deep = format!(
            "<message to='{}'>{}{}</message>",
            joe.jid,
            "<x>".repeat(300),
            "</x>".repeat(300)
        );
        bob.send(&deep).await;
        joe.expect_stream_error("remote-connection-failed", T).await;
        st.wait_for_since(mark, "unavailable at the end", T, |s| {
            s.is_unavailable_from(&joe.jid)
        })
        .await;
    }
}
