//! End to end: what invisibility costs the user, on each strategy. With a privacy list (Prosody
//! with mod_privacy_lists, ejabberd's mod_privacy) an invisible session stays reachable: bare-JID
//! messages arrive live, contacts' presence arrives, "visible to all but one" makes no flicker.
//! The silent session (Prosody without privacy lists, or `--invisibility-strategy silent`) pays
//! the documented costs. On both, nobody ever sees the invisible user, not at any kind of end.

mod common;

use std::time::Duration;

use common::client::{Client, Opts, Stanza};
use common::servers::HIBERNATION_SECS;
use common::world::{Setup, World, invisible, visible, world_with};

const T: Duration = Duration::from_secs(10);
/// How long an observer must stay silent for a "must not receive" to hold.
const QUIET: Duration = Duration::from_millis(1500);

every_setup!(
    xep0186_from_the_start_reachable_and_unseen,
    xep0186_mid_session_reachable_and_unseen,
    xep0018_undirected_reachable_and_unseen,
    visible_to_all_but_one_without_flicker,
    back_to_visible_nothing_twice,
    end_by_tcp_drop_tells_nobody,
    end_by_shutdown_tells_nobody,
    end_by_resume_timeout_tells_nobody,
    privacy_iqs_of_the_client_are_guarded,
    probe_and_block_while_invisible,
    list_changed_by_another_resource,
);

fn presence_from(jid: &str) -> impl Fn(&Stanza) -> bool + Copy + '_ {
    move |s| s.is_presence_from(jid)
}

async fn chat(from: &Client, to: &str, body: &str) {
    from.send(&format!(
        "<message type='chat' to='{to}'><body>{body}</body></message>"
    ))
    .await;
}

fn body_is(body: &str) -> impl Fn(&Stanza) -> bool + Copy + '_ {
    move |s| s.body() == Some(body)
}

/// A bare-JID message from `from` reaches joe live with a list; the silent session does not
/// get it (the server stores it offline).
async fn bare_message_reaches(w: &World, from: &Client, joe: &Client, body: &str) {
    let m = joe.mark();
    chat(from, &w.server.jid("joe"), body).await;
    if w.setup.list {
        joe.wait_for_since(m, "a bare-JID message, live", T, body_is(body))
            .await;
    } else {
        joe.expect_none_since(
            m,
            "a bare-JID message (silent: offline)",
            QUIET,
            body_is(body),
        )
        .await;
    }
}

/// With a list, the server holds joe's presence once it echoes it to joe's own resource; a
/// bare-JID message sent before that (while the proxy still sets the list up) is the server's
/// offline business.
async fn server_holds_presence(w: &World, joe: &Client, since: usize) {
    if w.setup.list {
        let me = joe.jid.clone();
        joe.wait_for_since(
            since,
            "the server's echo of joe's presence",
            T,
            move |s: &Stanza| s.is_available_from(&me),
        )
        .await;
    }
}

/// A contact's status change reaches joe with a list; not the silent session.
async fn contact_status_reaches(w: &World, contact: &Client, joe: &Client) {
    let m = joe.mark();
    contact.send("<presence><show>dnd</show></presence>").await;
    let from = contact.jid.clone();
    let pred = move |s: &Stanza| s.is_available_from(&from) && s.child_text("show") == Some("dnd");
    if w.setup.list {
        joe.wait_for_since(m, "a contact's status change", T, pred)
            .await;
    } else {
        joe.expect_none_since(m, "a contact's status change (silent)", QUIET, pred)
            .await;
    }
}

/// None of `observers` receives any presence from `jid` since their marks.
async fn nobody_hears(observers: &[&Client], marks: &[usize], jid: &str) {
    for (i, (o, m)) in observers.iter().zip(marks).enumerate() {
        let window = if i == 0 {
            QUIET
        } else {
            Duration::from_millis(1)
        };
        o.expect_none_since(*m, "any presence from joe", window, presence_from(jid))
            .await;
    }
}

async fn xep0186_from_the_start_reachable_and_unseen(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let joe = w.joe(Opts::new("inv")).await;
    let j = joe.jid.clone();
    invisible(&joe, Some("true")).await;
    // probe='true': the contacts' presence, at once.
    joe.wait_for("stpeter's presence (probe)", T, |s: &Stanza| {
        s.is_available_from("stpeter@localhost")
    })
    .await;
    let m = joe.mark();
    joe.send("<presence><show>away</show></presence>").await;
    server_holds_presence(&w, &joe, m).await;
    bare_message_reaches(&w, &st, &joe, "hello while invisible").await;
    contact_status_reaches(&w, &pg, &joe).await;
    // A contact who logs in later: joe sees him come (with a list), he never sees joe.
    let m = joe.mark();
    let ry = w.observer("rynok").await;
    if w.setup.list {
        joe.wait_for_since(m, "rynok logging in", T, |s: &Stanza| {
            s.is_available_from("rynok@localhost")
        })
        .await;
    }
    // Joe answers: his messages go out as ever.
    chat(&joe, &st.jid, "answer from the shadows").await;
    st.wait_for("joe's answer", T, body_is("answer from the shadows"))
        .await;
    joe.send("<presence><show>chat</show></presence>").await;
    joe.close().await;
    nobody_hears(&[&st, &pg, &ry], &[0, 0, 0], &j).await;
}

async fn xep0186_mid_session_reachable_and_unseen(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let joe = w.joe(Opts::new("mid").initial_presence(true)).await;
    let j = joe.jid.clone();
    st.wait_for("joe online", T, |s: &Stanza| s.is_available_from(&j))
        .await;
    invisible(&joe, None).await;
    for o in [&st, &pg] {
        o.wait_for("joe unavailable", T, |s: &Stanza| s.is_unavailable_from(&j))
            .await;
    }
    let marks = [st.mark(), pg.mark()];
    let m = joe.mark();
    joe.send("<presence><show>xa</show></presence>").await;
    server_holds_presence(&w, &joe, m).await;
    bare_message_reaches(&w, &pg, &joe, "still there?").await;
    contact_status_reaches(&w, &st, &joe).await;
    let ry = w.observer("rynok").await;
    joe.close().await;
    nobody_hears(&[&st, &pg, &ry], &[marks[0], marks[1], 0], &j).await;
}

async fn xep0018_undirected_reachable_and_unseen(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let joe = w.joe(Opts::new("psi")).await;
    let j = joe.jid.clone();
    // Psi's initial presence when started invisible.
    let m = joe.mark();
    joe.send("<presence type='invisible'><priority>5</priority></presence>")
        .await;
    server_holds_presence(&w, &joe, m).await;
    bare_message_reaches(&w, &st, &joe, "psi, are you there").await;
    contact_status_reaches(&w, &st, &joe).await;
    let pg = w.observer("pgmillard").await;
    joe.close().await;
    nobody_hears(&[&st, &pg], &[0, 0], &j).await;
}

async fn visible_to_all_but_one_without_flicker(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let joe = w.joe(Opts::new("vis").initial_presence(true)).await;
    let j = joe.jid.clone();
    for o in [&st, &pg] {
        o.wait_for("joe online", T, |s: &Stanza| s.is_available_from(&j))
            .await;
    }
    let (ms, mp) = (st.mark(), pg.mark());
    joe.send("<presence to='pgmillard@localhost' type='invisible'/>")
        .await;
    pg.wait_for_since(mp, "joe unavailable to pgmillard", T, |s: &Stanza| {
        s.is_unavailable_from(&j)
    })
    .await;
    if w.setup.list {
        st.expect_none_since(
            ms,
            "any presence from joe (no flicker)",
            QUIET,
            presence_from(&j),
        )
        .await;
    } else {
        // The silent session's documented flicker: unavailable, then at once the presence.
        st.wait_for_since(ms, "joe back after the flicker", T, |s: &Stanza| {
            s.is_available_from(&j)
        })
        .await;
    }
    let mp = pg.mark();
    joe.send("<presence><show>away</show></presence>").await;
    st.wait_for("joe away", T, |s: &Stanza| {
        s.is_available_from(&j) && s.child_text("show") == Some("away")
    })
    .await;
    bare_message_reaches(&w, &st, &joe, "from stpeter").await;
    bare_message_reaches(&w, &pg, &joe, "from pgmillard").await;
    pg.expect_none_since(mp, "anything from joe's presence", QUIET, |s: &Stanza| {
        s.is_available_from(&j)
    })
    .await;
    let mp = pg.mark();
    joe.close().await;
    pg.expect_none_since(
        mp,
        "any presence from joe at the end",
        QUIET,
        presence_from(&j),
    )
    .await;
    st.wait_for("joe offline at the end", T, |s: &Stanza| {
        s.is_unavailable_from(&j)
    })
    .await;
}

async fn back_to_visible_nothing_twice(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let joe = w.joe(Opts::new("back")).await;
    let j = joe.jid.clone();
    invisible(&joe, None).await;
    joe.send("<presence/>").await;
    for i in 0..3 {
        chat(&st, &w.server.jid("joe"), &format!("msg {i}")).await;
    }
    if w.setup.list {
        joe.wait_for("the last message, live", T, body_is("msg 2"))
            .await;
    }
    visible(&joe).await;
    let m = st.mark();
    joe.send("<presence><show>chat</show></presence>").await;
    st.wait_for_since(m, "joe visible again", T, |s: &Stanza| {
        s.is_available_from(&j)
    })
    .await;
    // Silent: the offline store replays them now; with a list they were delivered live and
    // nothing is replayed. Either way each arrives exactly once.
    joe.wait_for("the last message", T, body_is("msg 2")).await;
    tokio::time::sleep(QUIET).await;
    for i in 0..3 {
        let body = format!("msg {i}");
        let n = joe
            .received()
            .iter()
            .filter(|s| s.body() == Some(body.as_str()))
            .count();
        assert_eq!(n, 1, "{body} delivered {n} times\n{}", joe.dump());
    }
}

/// Joe invisible and available (through the proxy), a contact watching; returns both.
async fn invisible_joe(w: &World, opts: Opts) -> (Client, Client) {
    let st = w.observer("stpeter").await;
    let joe = w.joe(opts).await;
    invisible(&joe, None).await;
    joe.send("<presence><show>dnd</show></presence>").await;
    // A directed presence to a room-like stranger, as a MUC join would.
    joe.send("<presence to='stranger@localhost/room'/>").await;
    (st, joe)
}

async fn end_by_tcp_drop_tells_nobody(setup: Setup) {
    let w = world_with(setup).await;
    let (st, joe) = invisible_joe(&w, Opts::new("drop")).await;
    let j = joe.jid.clone();
    joe.drop_tcp();
    let pg = w.observer("pgmillard").await;
    nobody_hears(&[&st, &pg], &[0, 0], &j).await;
}

async fn end_by_shutdown_tells_nobody(setup: Setup) {
    let w = world_with(setup).await;
    let (st, joe) = invisible_joe(&w, Opts::new("term")).await;
    let j = joe.jid.clone();
    let World { server, proxy, .. } = w;
    proxy.shutdown().await;
    nobody_hears(&[&st], &[0], &j).await;
    drop((joe, server));
}

async fn end_by_resume_timeout_tells_nobody(setup: Setup) {
    let w = world_with(setup).await;
    let (st, joe) = invisible_joe(&w, Opts::new("sm").sm(true)).await;
    let j = joe.jid.clone();
    assert!(joe.sm_id().is_some(), "resumable stream: {}", joe.dump());
    joe.drop_tcp();
    // Past the server's hibernation: the session times out there (Prosody takes up to about
    // twice its setting).
    tokio::time::sleep(Duration::from_secs(2 * HIBERNATION_SECS + 4)).await;
    nobody_hears(&[&st], &[0], &j).await;
    // A late observer too.
    let pg = w.observer("pgmillard").await;
    nobody_hears(&[&pg], &[0], &j).await;
}

async fn privacy_iqs_of_the_client_are_guarded(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let joe = w.joe(Opts::new("guard")).await;
    let j = joe.jid.clone();
    invisible(&joe, None).await;
    joe.send("<presence/>").await;
    // Declining the active list would switch the proxy's off: refused while hidden (list), or
    // the server's business (silent: nothing of the proxy's to protect).
    let r = joe
        .iq(
            "<iq type='set' id='decl'><query xmlns='jabber:iq:privacy'><active/></query></iq>",
            "decl",
            T,
        )
        .await;
    if w.setup.list {
        assert_eq!(r.type_(), Some("error"), "{}", r.raw);
        assert_eq!(r.error_condition(), Some("not-allowed"), "{}", r.raw);
    }
    joe.send("<presence><show>away</show></presence>").await;
    st.expect_none("any presence from joe", QUIET, presence_from(&j))
        .await;
    // The answers to the proxy's own privacy IQs never reach the client.
    assert!(
        !joe.received()
            .iter()
            .any(|s| s.id().is_some_and(|id| id.starts_with("veil"))),
        "{}",
        joe.dump()
    );
    joe.close().await;
}

/// What a contact learns by probing an invisible user itself (servers answer probes for the
/// account), and what blocking a contact while invisible sends it. Measured per setup; the
/// README's residual-leak table gives the same.
async fn probe_and_block_while_invisible(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let joe = w.joe(Opts::new("probe")).await;
    let j = joe.jid.clone();
    invisible(&joe, None).await;
    let m = joe.mark();
    joe.send("<presence/>").await;
    server_holds_presence(&w, &joe, m).await;
    let m = st.mark();
    st.send(&format!(
        "<presence type='probe' to='{}'/>",
        w.server.jid("joe")
    ))
    .await;
    tokio::time::sleep(QUIET).await;
    let answers: Vec<String> = st
        .since(m)
        .iter()
        .filter(|s| s.is_presence_from(&w.server.jid("joe")))
        .map(|s| s.raw.clone())
        .collect();
    assert!(
        !answers.iter().any(|a| !a.contains("unavailable")),
        "a probe never gets joe's presence: {answers:?}"
    );
    // Measured: Prosody answers a probe for an account without an available session with
    // `unavailable`, and one whose only session hides behind a list with nothing at all (a
    // residual signal of the list strategy there); ejabberd answers neither.
    let expect_answer = setup.kind == common::servers::Kind::Prosody && !setup.list;
    assert_eq!(!answers.is_empty(), expect_answer, "{setup:?}: {answers:?}");
    // Blocking pgmillard while invisible.
    let m = pg.mark();
    let r = joe
        .iq(
            "<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='pgmillard@localhost'/></block></iq>",
            "blk",
            T,
        )
        .await;
    tokio::time::sleep(QUIET).await;
    let told: Vec<String> = pg
        .since(m)
        .iter()
        .filter(|s| s.is_presence_from(&j))
        .map(|s| s.raw.clone())
        .collect();
    assert_eq!(r.type_(), Some("result"), "{}", r.raw);
    // Prosody's mod_blocklist tells a blocked subscriber `unavailable` from every resource with
    // a presence, around the list: the proxy ends the server's presence around the block.
    assert!(
        told.is_empty(),
        "blocking tells pgmillard nothing: {told:?}"
    );
    joe.close().await;
}

/// Another resource of the account replaces the proxy's list with one that allows everything
/// (both servers apply that to the invisible session at once): the proxy sees the server's push
/// and sets its list again before it lets the client's next stanza through.
async fn list_changed_by_another_resource(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let joe = w.joe(Opts::new("inv")).await;
    let j = joe.jid.clone();
    invisible(&joe, None).await;
    let m = joe.mark();
    joe.send("<presence/>").await;
    server_holds_presence(&w, &joe, m).await;
    // joe's other client, straight on the server.
    let other = Client::connect(w.server.c2s_addr(), "joe", "joe-pw", Opts::new("desktop"))
        .await
        .expect("joe/desktop");
    let names = other
        .iq(
            "<iq type='get' id='names'><query xmlns='jabber:iq:privacy'/></iq>",
            "names",
            T,
        )
        .await;
    let ours = names
        .raw
        .split("name='")
        .skip(1)
        .filter_map(|s| s.split('\'').next())
        .find(|n| n.starts_with("xmpp-veil-"))
        .map(str::to_owned);
    let Some(name) = ours else {
        assert!(!w.setup.list, "a list of the proxy's exists: {}", names.raw);
        joe.close().await;
        return;
    };
    assert!(w.setup.list, "silent sessions make no list: {}", names.raw);
    let r = other
        .iq(
            &format!(
                "<iq type='set' id='open'><query xmlns='jabber:iq:privacy'><list name='{name}'>\
                 <item action='allow' order='1'/></list></query></iq>"
            ),
            "open",
            T,
        )
        .await;
    assert_eq!(r.type_(), Some("result"), "{}", r.raw);
    // The proxy has seen the push by the time joe changes his status.
    tokio::time::sleep(Duration::from_millis(500)).await;
    joe.send("<presence><show>away</show></presence>").await;
    st.expect_none(
        "any presence from the invisible resource",
        QUIET,
        presence_from(&j),
    )
    .await;
    joe.close().await;
    st.expect_none(
        "any presence from the invisible resource",
        QUIET,
        presence_from(&j),
    )
    .await;
}
