//! End to end with real clients through the proxy, against a real Prosody and a real ejabberd:
//! Psi 1.5 (XEP-0018 `type='invisible'`, under Xvfb, status switched over D-Bus) and mcabber
//! (scripted through its FIFO with `/rawxml send` for every XEP-0186 and XEP-0018 variant).
//! Observers are the project's own clients logged in directly to the server: they assert what
//! must arrive and what must NOT. The tools come from Debian (tests/install-deps.sh); a missing
//! one fails the test, it is never skipped.

mod common;
mod real_clients {
    pub mod forwarder;
    pub mod mcabber;
    pub mod psi;
}

use std::time::Duration;

use common::client::{Client, Stanza};
use common::servers::Kind;
use common::world::world;
use real_clients::forwarder::Forwarder;
use real_clients::mcabber::{self, Mcabber};
use real_clients::psi::{self, Psi};

/// Real clients under Xvfb on a loaded machine are slow to start: generous waits.
const T: Duration = Duration::from_secs(30);
/// How long an observer must stay silent for a "must not receive" to hold.
const QUIET: Duration = Duration::from_secs(3);
const JOE: &str = "joe@localhost";

both_servers!(
    psi_invisible_from_the_start,
    psi_online_invisible_online,
    psi_resumed_stream_stays_invisible,
    psi_connection_cut_stays_invisible,
    mcabber_every_variant,
);

/// Waits until Psi's session is bound and answers IQs (it is then logged in, visible or not):
/// `by` pings Psi's full JID until the answer is a result. A ping that reaches Psi while it is
/// still logging in may get no answer at all (seen once on ejabberd, on a loaded CI machine):
/// each ping gets a few seconds, then the next one goes.
async fn psi_ready(by: &Client, psi: &Psi) {
    let to = psi.full_jid();
    let deadline = tokio::time::Instant::now() + T;
    for n in 0.. {
        let id = format!("ready{n}");
        let r = by
            .try_iq(
                &format!("<iq type='get' to='{to}' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"),
                &id,
                Duration::from_secs(5),
            )
            .await;
        if r.as_ref().and_then(|r| r.type_()) == Some("result") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Psi never logged in: last answer {}\n{}",
            r.map_or_else(|| "none".to_owned(), |r| r.raw),
            psi.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Presence that shows Psi's resource: anything from its full JID, or available from the bare
/// JID. (A bare `unavailable` from joe is the server's answer to the observer's own probe.)
fn presence_from_joe(s: &Stanza) -> bool {
    s.is_presence_from(&format!("{JOE}/{}", psi::RESOURCE)) || s.is_available_from(JOE)
}

/// Psi started with `--status=invisible`: nobody sees it, not even a contact who logs in later;
/// chat goes both ways.
async fn psi_invisible_from_the_start(kind: Kind) {
    let w = world(kind).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let fwd = Forwarder::start(w.proxy.starttls).await;
    let psi = Psi::start(JOE, &common::world::pw("joe"), fwd.addr.port(), "invisible").await;
    psi_ready(&st, &psi).await;
    let shot = psi.screenshot(&format!("psi-invisible-{kind:?}"));
    eprintln!("screenshot: {}", shot.display());
    st.expect_none(
        "presence from joe (invisible Psi)",
        QUIET,
        presence_from_joe,
    )
    .await;
    pg.expect_none(
        "presence from joe (invisible Psi)",
        Duration::from_millis(1),
        presence_from_joe,
    )
    .await;
    let ry = w.observer("rynok").await;
    ry.expect_none(
        "presence from joe (rynok logged in later)",
        QUIET,
        presence_from_joe,
    )
    .await;
    psi.send_chat("stpeter@localhost", "hello-from-psi");
    st.wait_for("Psi's chat message", T, |s| {
        s.is_message_from(JOE) && s.body() == Some("hello-from-psi")
    })
    .await;
    st.send(&format!(
        "<message to='{}' type='chat' id='m1'><body>hello-from-stpeter</body></message>",
        psi.full_jid()
    ))
    .await;
    psi.wait_history("hello-from-stpeter", T).await;
    // "Offline": Psi sends `unavailable` and drops the connection; nobody was shown anything, so
    // nobody is told anything.
    psi.set_status("offline");
    for o in [&st, &pg, &ry] {
        o.expect_none("presence from joe (Psi offline)", QUIET, presence_from_joe)
            .await;
    }
    psi.stop();
    drop(w);
}

fn available_from_psi(s: &Stanza) -> bool {
    s.is_available_from(&format!("{JOE}/{}", psi::RESOURCE))
}

fn unavailable_from_psi(s: &Stanza) -> bool {
    s.is_unavailable_from(&format!("{JOE}/{}", psi::RESOURCE))
}

/// Online → invisible → online is seen as online → offline → online; "Away" while invisible
/// stays hidden (it may be an idle timer's); receipts (messages from Psi) while online.
async fn psi_online_invisible_online(kind: Kind) {
    let w = world(kind).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let fwd = Forwarder::start(w.proxy.starttls).await;
    let psi = Psi::start(JOE, &common::world::pw("joe"), fwd.addr.port(), "online").await;
    psi_ready(&st, &psi).await;
    psi.screenshot(&format!("psi-online-{kind:?}"));
    for o in [&st, &pg] {
        o.wait_for("Psi online", T, available_from_psi).await;
    }
    // A message with a receipt request: Psi (online) answers with a receipt message.
    st.send(&format!(
        "<message to='{}' type='chat' id='r1'><body>ping-1</body>\
         <request xmlns='urn:xmpp:receipts'/></message>",
        psi.full_jid()
    ))
    .await;
    st.wait_for("Psi's receipt", T, |s| {
        s.is_message_from(JOE) && s.raw.contains("urn:xmpp:receipts") && s.raw.contains("r1")
    })
    .await;

    let m: Vec<usize> = [&st, &pg].iter().map(|o| o.mark()).collect();
    psi.set_status("invisible");
    for (o, m) in [&st, &pg].iter().zip(&m) {
        o.wait_for_since(
            *m,
            "Psi gone invisible: unavailable",
            T,
            unavailable_from_psi,
        )
        .await;
    }
    psi.screenshot(&format!("psi-invisible-mid-session-{kind:?}"));
    // Away while invisible (what an idle timer would send): still nothing.
    psi.set_status("away");
    for (o, m) in [&st, &pg].iter().zip(&m) {
        o.expect_none_since(
            *m,
            "available from Psi while invisible",
            QUIET,
            available_from_psi,
        )
        .await;
    }
    psi.send_chat("pgmillard@localhost", "while-invisible");
    pg.wait_for("Psi's chat message while invisible", T, |s| {
        s.is_message_from(JOE) && s.body() == Some("while-invisible")
    })
    .await;

    let m: Vec<usize> = [&st, &pg].iter().map(|o| o.mark()).collect();
    psi.set_status("online");
    for (o, m) in [&st, &pg].iter().zip(&m) {
        let p = o
            .wait_for_since(*m, "Psi online again", T, available_from_psi)
            .await;
        assert_eq!(p.child_text("show"), None, "{}", p.raw);
    }
    let m = st.mark();
    psi.set_status("offline");
    st.wait_for_since(m, "Psi offline", T, unavailable_from_psi)
        .await;
    psi.stop();
    drop(w);
}

/// Psi's connection goes silent (a frozen forwarder: nothing passes, nothing closes). Psi notices
/// only through its stream-management ack timer, which runs on its keep-alive (on in the test's
/// profile; without it Psi sat on the dead link for more than 5 minutes): it asks for an ack,
/// gets none, reconnects and resumes the stream (about 80–110 s). Still invisible to everyone, a
/// message sent meanwhile arrives (Prosody; ejabberd ends the session first, see below), and the
/// status switches still work afterwards.
async fn psi_resumed_stream_stays_invisible(kind: Kind) {
    let w = world(kind).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let fwd = Forwarder::start(w.proxy.starttls).await;
    let psi = Psi::start(JOE, &common::world::pw("joe"), fwd.addr.port(), "invisible").await;
    psi_ready(&st, &psi).await;
    let resumed_before = common::proxy::metric("xmpp_veil_sm_resumptions_total{result=\"ok\"}");
    fwd.freeze();
    st.send(&format!(
        "<message to='{}' type='chat' id='f1'><body>sent-while-frozen</body></message>",
        psi.full_jid()
    ))
    .await;
    reconnected(&fwd, &psi, &st, Duration::from_secs(300)).await;
    let resumed =
        common::proxy::metric("xmpp_veil_sm_resumptions_total{result=\"ok\"}") > resumed_before;
    if matches!(kind, Kind::Prosody) {
        assert!(resumed, "Psi's stream was not resumed through the proxy");
        psi.wait_history("sent-while-frozen", T).await;
    } else {
        // ejabberd gives up first: its ack timeout (60 s) closes the silent session's upstream
        // and its resume_timeout (6 s in the test servers) ends the session, so there is nothing
        // left to resume (as without the proxy); Psi logs in afresh, with its status.
        eprintln!("ejabberd: Psi's stream resumed: {resumed}");
    }
    still_invisible_then_online(&w, &psi, &st, &pg, "the resumption").await;
    psi.stop();
    drop(w);
}

/// Waits (at most `limit`) for Psi's second connection through the forwarder, then for Psi to
/// be ready again.
async fn reconnected(fwd: &Forwarder, psi: &Psi, st: &Client, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while fwd.accepted() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Psi never reconnected\n{}",
            psi.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    psi_ready(st, psi).await;
}

/// After Psi came back (`after`): nobody sees it, not a contact who logs in now; then "Online"
/// shows it to everyone and "Invisible" hides it again.
async fn still_invisible_then_online(
    w: &common::world::World,
    psi: &Psi,
    st: &Client,
    pg: &Client,
    after: &str,
) {
    for o in [st, pg] {
        o.expect_none(
            &format!("presence from joe (after {after}, invisible)"),
            QUIET,
            presence_from_joe,
        )
        .await;
    }
    let ry = w.observer("rynok").await;
    ry.expect_none(
        &format!("presence from joe (rynok, after {after})"),
        QUIET,
        presence_from_joe,
    )
    .await;
    psi.set_status("online");
    for o in [st, pg, &ry] {
        o.wait_for(&format!("Psi online after {after}"), T, available_from_psi)
            .await;
    }
    let m = st.mark();
    psi.set_status("invisible");
    st.wait_for_since(m, "Psi invisible again", T, unavailable_from_psi)
        .await;
}

/// Psi's TCP connection is cut (both sockets closed by the forwarder): Psi reconnects at once
/// (Psi 1.5 starts a new stream after a connection error; it resumes only after its own
/// stream-management timeout) with its status: still invisible to everyone, then online and
/// invisible again work.
async fn psi_connection_cut_stays_invisible(kind: Kind) {
    let w = world(kind).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let fwd = Forwarder::start(w.proxy.starttls).await;
    let psi = Psi::start(JOE, &common::world::pw("joe"), fwd.addr.port(), "invisible").await;
    psi_ready(&st, &psi).await;
    let resumed_before = common::proxy::metric("xmpp_veil_sm_resumptions_total{result=\"ok\"}");
    fwd.cut();
    reconnected(&fwd, &psi, &st, Duration::from_secs(120)).await;
    let resumed =
        common::proxy::metric("xmpp_veil_sm_resumptions_total{result=\"ok\"}") > resumed_before;
    eprintln!("Psi reconnected after the cut; resumptions through the proxy grew: {resumed}");
    st.send(&format!(
        "<message to='{}' type='chat' id='c1'><body>after-the-cut</body></message>",
        psi.full_jid()
    ))
    .await;
    psi.wait_history("after-the-cut", T).await;
    still_invisible_then_online(&w, &psi, &st, &pg, "the reconnection").await;
    psi.stop();
    drop(w);
}

fn mc_jid() -> String {
    format!("{JOE}/{}", mcabber::RESOURCE)
}

/// Each observer's log position now.
fn marks(os: &[&Client]) -> Vec<usize> {
    os.iter().map(|o| o.mark()).collect()
}

async fn all_get(os: &[&Client], m: &[usize], what: &str, pred: impl Fn(&Stanza) -> bool + Copy) {
    for (o, m) in os.iter().zip(m) {
        o.wait_for_since(*m, what, T, pred).await;
    }
}

async fn none_get(os: &[&Client], m: &[usize], what: &str, pred: impl Fn(&Stanza) -> bool + Copy) {
    for (i, (o, m)) in os.iter().zip(m).enumerate() {
        let window = if i == 0 {
            QUIET
        } else {
            Duration::from_millis(1)
        };
        o.expect_none_since(*m, what, window, pred).await;
    }
}

/// mcabber scripted through its FIFO: every XEP-0186 and XEP-0018 request a client can send,
/// one after the other in one session, each checked by the contacts (direct on the server) and
/// by mcabber's own trace log (the proxy's answers).
async fn mcabber_every_variant(kind: Kind) {
    let w = world(kind).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let both = [&st, &pg];
    let jid = mc_jid();
    let avail = move |s: &Stanza| s.is_available_from(&mc_jid());
    let unavail = move |s: &Stanza| s.is_unavailable_from(&mc_jid());
    let mc = Mcabber::start(JOE, &common::world::pw("joe"), w.proxy.starttls.port());
    all_get(&both, &[0, 0], "mcabber's initial presence", avail).await;

    // XEP-0186 invisible (:1, no probe): answered by the proxy, everyone told unavailable.
    let m = marks(&both);
    mc.send("<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1'/></iq>");
    mc.wait_trace(&["inv1", "result"], T).await;
    all_get(&both, &m, "unavailable (XEP-0186 invisible)", unavail).await;
    // mcabber's own status change while invisible is withheld.
    let m = marks(&both);
    mc.command("/status away testing");
    none_get(&both, &m, "available while XEP-0186-invisible", avail).await;
    // A bad probe is refused.
    mc.send("<iq type='set' id='bad1'><invisible xmlns='urn:xmpp:invisible:1' probe='yes'/></iq>");
    mc.wait_trace(&["bad1", "bad-request"], T).await;
    // XEP-0186 visible, then presence: everyone sees it.
    mc.send("<iq type='set' id='vis1'><visible xmlns='urn:xmpp:invisible:1'/></iq>");
    mc.wait_trace(&["vis1", "result"], T).await;
    let m = marks(&both);
    mc.send("<presence><show>dnd</show></presence>");
    all_get(&both, &m, "available after XEP-0186 visible", avail).await;

    // XEP-0186 :0 with probe='true': invisible, and mcabber gets its contacts' presence.
    let from = mc.trace().len();
    let m = marks(&both);
    mc.send("<iq type='set' id='inv0'><invisible xmlns='urn:xmpp:invisible:0' probe='true'/></iq>");
    mc.wait_trace(&["inv0", "result"], T).await;
    all_get(&both, &m, "unavailable (XEP-0186 :0)", unavail).await;
    let deadline = tokio::time::Instant::now() + T;
    while !mc.trace()[from..].contains("stpeter@localhost/obs") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "probe='true' brought no presence of stpeter:\n{}",
            &mc.trace()[from..]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // XEP-0018 undirected visible: the last presence (dnd) shown to everyone.
    let m = marks(&both);
    mc.send("<presence type='visible'/>");
    all_get(&both, &m, "available (XEP-0018 visible)", avail).await;
    // Directed invisible to pgmillard: pg told unavailable, stpeter keeps seeing it.
    let m = marks(&both);
    mc.send("<presence to='pgmillard@localhost' type='invisible'/>");
    pg.wait_for_since(m[1], "unavailable (invisible to pgmillard)", T, unavail)
        .await;
    // Undirected presence now (§4.1, e.g. auto-away): stpeter only.
    let m = marks(&both);
    mc.send("<presence><show>chat</show></presence>");
    // (stpeter may first get the dnd presence again: the flicker of leaving the server's broadcast.)
    st.wait_for_since(m[0], "chat presence", T, |s| {
        avail(s) && s.child_text("show") == Some("chat")
    })
    .await;
    none_get(
        &[&pg],
        &m[1..],
        "presence while invisible to pgmillard",
        |s| s.is_presence_from(&mc_jid()),
    )
    .await;
    // Directed visible to pgmillard: shown again.
    let m = marks(&both);
    mc.send("<presence to='pgmillard@localhost' type='visible'/>");
    pg.wait_for_since(m[1], "available (visible to pgmillard)", T, avail)
        .await;

    // XEP-0018 undirected invisible: everyone told.
    let m = marks(&both);
    mc.send("<presence type='invisible'/>");
    all_get(&both, &m, "unavailable (XEP-0018 invisible)", unavail).await;
    // Auto-away (xa) stays withheld...
    let m = marks(&both);
    mc.send("<presence><show>xa</show><status>idle</status></presence>");
    none_get(&both, &m, "available on xa while invisible", avail).await;
    // ...a plain available presence ends the invisibility (Psi's way back).
    let m = marks(&both);
    mc.send("<presence><priority>3</priority></presence>");
    all_get(
        &both,
        &m,
        "available (plain presence after XEP-0018 invisible)",
        avail,
    )
    .await;
    assert!(
        !mc.trace().contains("type=\"invisible\" from")
            && !mc.trace().contains("type='invisible' from"),
        "an XEP-0018 presence came back to the client"
    );
    let m = marks(&both);
    mc.stop();
    all_get(&both, &m, "unavailable at /quit", unavail).await;
    let _ = jid;
    drop(w);
}
