//! End to end: XEP-0186 and XEP-0018 through the proxy, against a real Prosody and a real
//! ejabberd. Observers are contacts logged in directly to the server as real clients; they
//! record everything, and each test asserts what they must receive and what they must NOT
//! receive within a quiet window.

mod common;

use std::time::Duration;

use common::client::{Client, Opts, Stanza};
use common::proxy;
use common::servers::Kind;
use common::world::{Setup, invisible, visible, world_with};

const T: Duration = Duration::from_secs(10);
/// How long an observer must stay silent for a "must not receive" to hold.
const QUIET: Duration = Duration::from_millis(1500);
fn available_from(jid: &str) -> impl Fn(&Stanza) -> bool + Copy + '_ {
    move |s| s.is_available_from(jid)
}

fn unavailable_from(jid: &str) -> impl Fn(&Stanza) -> bool + Copy + '_ {
    move |s| s.is_unavailable_from(jid)
}

fn any_presence_from(jid: &str) -> impl Fn(&Stanza) -> bool + Copy + '_ {
    move |s| s.is_presence_from(jid)
}

fn marks(observers: &[&Client]) -> Vec<usize> {
    observers.iter().map(|o| o.mark()).collect()
}

/// None of `observers` receives a matching stanza since its mark, over one shared quiet window.
async fn none_since(
    observers: &[&Client],
    marks: &[usize],
    what: &str,
    pred: impl Fn(&Stanza) -> bool + Copy,
) {
    for (i, (o, m)) in observers.iter().zip(marks).enumerate() {
        let window = if i == 0 {
            QUIET
        } else {
            Duration::from_millis(1)
        };
        o.expect_none_since(*m, what, window, pred).await;
    }
}

/// The newest presence from `jid` that `o` received is available (with this `show`, if given).
fn last_presence_is_available(o: &Client, jid: &str, show: Option<&str>) -> bool {
    o.received()
        .iter()
        .rev()
        .find(|s| s.is_presence_from(jid))
        .is_some_and(|s| {
            s.presence_type().is_none() && show.is_none_or(|w| s.child_text("show") == Some(w))
        })
}

every_setup!(
    xep0186_invisible_from_the_start,
    xep0186_invisible_mid_session,
    xep0186_tcp_drop_after_directed_presence_to_a_contact,
    xep0186_probe_true_and_false,
    xep0186_visible_is_a_fresh_start,
    xep0186_disco_and_bad_requests,
    two_resources_only_one_invisible,
    xep0018_section_4_1_walkthrough,
    xep0018_use_cases,
    residual_leaks_while_invisible,
);

/// Rules 1, 3, 4, 5 and 8: nothing undirected leaves, late probes are answered as offline,
/// directed presence is delivered, undirected unavailable goes only to its recipients.
async fn xep0186_invisible_from_the_start(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let joe = w.joe(Opts::new("hidden")).await;
    invisible(&joe, Some("false")).await;
    joe.send("<presence><show>chat</show><status>here</status></presence>")
        .await;
    none_since(
        &[&st, &pg],
        &[0, 0],
        "available presence from invisible joe",
        available_from(&joe.jid),
    )
    .await;

    // A contact who logs in now probes joe: the server answers as if he were offline.
    let ry = w.observer("rynok").await;
    none_since(
        &[&ry],
        &[0],
        "available presence from invisible joe",
        available_from(&joe.jid),
    )
    .await;

    // Directed presence is delivered (rule 4) …
    joe.send("<presence to='stpeter@localhost'><show>dnd</show></presence>")
        .await;
    let got = st
        .wait_for("joe's directed presence", T, available_from(&joe.jid))
        .await;
    assert_eq!(got.child_text("show"), Some("dnd"));
    // … and undirected unavailable goes only to the directed recipients (rule 5).
    let m = marks(&[&st, &pg, &ry]);
    joe.send("<presence type='unavailable'/>").await;
    st.wait_for_since(m[0], "joe's unavailable", T, unavailable_from(&joe.jid))
        .await;
    none_since(
        &[&pg, &ry],
        &[0, 0],
        "any presence from invisible joe",
        any_presence_from(&joe.jid),
    )
    .await;
    // Nor does the end of his session tell them anything (no server-generated unavailable).
    let jid = joe.jid.clone();
    joe.close().await;
    none_since(
        &[&pg, &ry],
        &[0, 0],
        "any presence from invisible joe",
        any_presence_from(&jid),
    )
    .await;
    assert!(
        proxy::metric(
            "xmpp_veil_invisibility_commands_total{protocol=\"xep0186\",command=\"invisible\"}"
        ) >= 1.0
    );
}

/// Rule 2: going invisible during a presence session tells everyone who saw the resource.
async fn xep0186_invisible_mid_session(setup: Setup) {
    let w = world_with(setup).await;
    let obs = w.observers().await;
    let o: Vec<&Client> = obs.iter().collect();
    let joe = w.joe(Opts::new("phone")).await;
    joe.send("<presence/>").await;
    for x in &o {
        x.wait_for("joe available", T, available_from(&joe.jid))
            .await;
    }
    invisible(&joe, None).await;
    for x in &o {
        x.wait_for("joe unavailable", T, unavailable_from(&joe.jid))
            .await;
    }
    let m = marks(&o);
    joe.send("<presence><show>away</show></presence>").await;
    none_since(
        &o,
        &m,
        "available presence from invisible joe",
        available_from(&joe.jid),
    )
    .await;
}

/// The promise at a TCP drop: a roster contact that got directed presence is told unavailable
/// (the servers alone leave it seeing a ghost).
async fn xep0186_tcp_drop_after_directed_presence_to_a_contact(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    let joe = w.joe(Opts::new("laptop")).await;
    invisible(&joe, None).await;
    joe.send("<presence to='stpeter@localhost'/>").await;
    st.wait_for("joe's directed presence", T, available_from(&joe.jid))
        .await;
    let jid = joe.jid.clone();
    let m = st.mark();
    joe.drop_tcp();
    st.wait_for_since(
        m,
        "joe's unavailable after his TCP drop",
        T,
        unavailable_from(&jid),
    )
    .await;
    none_since(
        &[&pg],
        &[0],
        "any presence from invisible joe",
        any_presence_from(&jid),
    )
    .await;
}

/// Rule 9: probe='true' gets the contacts' presence to the client; probe='false' does not.
async fn xep0186_probe_true_and_false(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let pg = w.observer("pgmillard").await;
    st.send("<presence><show>dnd</show></presence>").await;

    let quiet_joe = w.joe(Opts::new("noprobe")).await;
    invisible(&quiet_joe, Some("false")).await;
    quiet_joe
        .expect_none("contact presence with probe='false'", QUIET, |s| {
            s.name == "presence"
                && (s.is_from("stpeter@localhost") || s.is_from("pgmillard@localhost"))
        })
        .await;

    let joe = w.joe(Opts::new("probing")).await;
    invisible(&joe, Some("true")).await;
    joe.wait_for("stpeter's presence", T, available_from("stpeter@localhost"))
        .await;
    joe.wait_for(
        "pgmillard's presence",
        T,
        available_from("pgmillard@localhost"),
    )
    .await;
    // The probes reveal nothing to the contacts.
    for jid in [&joe.jid, &quiet_joe.jid] {
        none_since(
            &[&st, &pg],
            &[0, 0],
            "any presence from invisible joe",
            any_presence_from(jid),
        )
        .await;
    }
}

/// `<visible/>`: as if no initial presence was sent yet; entities shown while invisible are
/// still told unavailable at the end.
async fn xep0186_visible_is_a_fresh_start(setup: Setup) {
    let w = world_with(setup).await;
    let obs = w.observers().await;
    let (st, pg, ry) = (&obs[0], &obs[1], &obs[2]);
    let joe = w.joe(Opts::new("desk")).await;
    invisible(&joe, None).await;
    joe.send("<presence/>").await;
    joe.send("<presence to='rynok@localhost'/>").await;
    ry.wait_for("joe's directed presence", T, available_from(&joe.jid))
        .await;
    visible(&joe).await;
    none_since(
        &[st, pg],
        &[0, 0],
        "presence from joe before he sends any",
        any_presence_from(&joe.jid),
    )
    .await;
    joe.send("<presence><show>chat</show></presence>").await;
    st.wait_for("joe available", T, available_from(&joe.jid))
        .await;
    pg.wait_for("joe available", T, available_from(&joe.jid))
        .await;
    let jid = joe.jid.clone();
    let m = marks(&[st, pg, ry]);
    joe.close().await;
    for (x, m) in [st, pg, ry].into_iter().zip(m) {
        x.wait_for_since(m, "joe unavailable at the end", T, unavailable_from(&jid))
            .await;
    }
}

/// Discovery, the `:0` namespace, a bad `probe`, and an IQ addressed to someone else.
async fn xep0186_disco_and_bad_requests(setup: Setup) {
    let w = world_with(setup).await;
    let joe = w.joe(Opts::new("disco")).await;
    let info = joe
        .iq(
            "<iq type='get' to='localhost' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
            T,
        )
        .await;
    let features: Vec<&str> = info
        .find("query")
        .map(|q| {
            q.children_named("feature")
                .filter_map(|f| f.attr("var"))
                .collect()
        })
        .unwrap_or_default();
    assert!(features.contains(&"urn:xmpp:invisible:1"), "{}", info.raw);
    assert!(features.contains(&"urn:xmpp:invisible:0"), "{}", info.raw);
    // No entity-caps hash of the server's that no longer matches.
    assert!(
        joe.features
            .find_ns("c", "http://jabber.org/protocol/caps")
            .is_none(),
        "{}",
        joe.features.raw
    );

    let bad = joe
        .iq(
            "<iq type='set' id='b1'><invisible xmlns='urn:xmpp:invisible:1' probe='maybe'/></iq>",
            "b1",
            T,
        )
        .await;
    assert_eq!(bad.type_(), Some("error"), "{}", bad.raw);
    assert_eq!(bad.error_condition(), Some("bad-request"), "{}", bad.raw);

    let old = joe
        .iq(
            "<iq type='set' id='o1'><invisible xmlns='urn:xmpp:invisible:0'/></iq>",
            "o1",
            T,
        )
        .await;
    assert_eq!(old.type_(), Some("result"), "{}", old.raw);

    // Addressed to a contact: not ours, relayed (the contact's server answers).
    let other = joe
        .iq(
            "<iq type='set' to='stpeter@localhost' id='x1'><invisible xmlns='urn:xmpp:invisible:1'/></iq>",
            "x1",
            T,
        )
        .await;
    assert_eq!(other.type_(), Some("error"), "{}", other.raw);
}

/// Invisibility belongs to one session.
async fn two_resources_only_one_invisible(setup: Setup) {
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let hidden = w.joe(Opts::new("hidden")).await;
    invisible(&hidden, None).await;
    hidden.send("<presence><show>chat</show></presence>").await;
    let shown = w.joe(Opts::new("shown")).await;
    shown.send("<presence><show>away</show></presence>").await;
    st.wait_for("joe/shown available", T, available_from(&shown.jid))
        .await;
    none_since(
        &[&st],
        &[0],
        "presence from joe/hidden",
        any_presence_from(&hidden.jid),
    )
    .await;
}

/// XEP-0018 §4.1, Listings 5–15, step by step, with stpeter, pgmillard and rynok watching.
async fn xep0018_section_4_1_walkthrough(setup: Setup) {
    let w = world_with(setup).await;
    let obs = w.observers().await;
    let (st, pg, ry) = (&obs[0], &obs[1], &obs[2]);
    let joe = w.joe(Opts::new("resource")).await;
    let j = joe.jid.clone();

    // Listing 5: invisible as the initial presence: nobody hears anything.
    joe.send("<presence type='invisible'/>").await;
    none_since(
        &[st, pg, ry],
        &[0, 0, 0],
        "any presence from joe",
        any_presence_from(&j),
    )
    .await;

    // Listings 6–7: visible to rynok: rynok gets joe's presence, the others nothing.
    let m = marks(&[st, pg, ry]);
    joe.send("<presence to='rynok@localhost' type='visible'/>")
        .await;
    ry.wait_for_since(m[2], "Listing 7", T, available_from(&j))
        .await;

    // Listings 8–9: extended away goes to rynok only.
    joe.send("<presence><show>xa</show><status>Away (due to idle)</status></presence>")
        .await;
    let xa = ry
        .wait_for_since(m[2], "Listing 9", T, |s| {
            s.is_available_from(&j) && s.child_text("show") == Some("xa")
        })
        .await;
    assert_eq!(xa.child_text("status"), Some("Away (due to idle)"));
    none_since(
        &[st, pg],
        &m[..2],
        "any presence from joe",
        any_presence_from(&j),
    )
    .await;

    // Listings 10–11: visible to all: stpeter and pgmillard get the last presence (xa). The
    // server broadcasts it, so rynok gets it again: waited for, so that it is not taken for a
    // flicker below.
    let m = marks(&[st, pg, ry]);
    joe.send("<presence type='visible'/>").await;
    for (x, m) in [(st, m[0]), (pg, m[1]), (ry, m[2])] {
        x.wait_for_since(m, "Listing 11", T, |s| {
            s.is_available_from(&j) && s.child_text("show") == Some("xa")
        })
        .await;
    }
    assert!(last_presence_is_available(ry, &j, Some("xa")));

    // Listings 12–13: invisible to pgmillard: he gets unavailable, and nothing after it.
    let m = marks(&[st, pg, ry]);
    joe.send("<presence to='pgmillard@localhost' type='invisible'/>")
        .await;
    pg.wait_for_since(m[1], "Listing 13", T, unavailable_from(&j))
        .await;
    if setup.list {
        // The privacy list hides joe from pgmillard alone: stpeter and rynok see no change at
        // all (XEP-0018 §3.3), no `unavailable` at any moment.
        none_since(
            &[st, ry],
            &[m[0], m[2]],
            "any presence from joe",
            any_presence_from(&j),
        )
        .await;
    } else {
        // The silent session: stpeter and rynok still see joe after the documented flicker
        // (unavailable, then at once the same xa presence).
        for (x, m) in [(st, m[0]), (ry, m[2])] {
            x.wait_for_since(m, "joe still available", T, |s| {
                s.is_available_from(&j) && s.child_text("show") == Some("xa")
            })
            .await;
        }
    }
    for x in [st, ry] {
        assert!(
            last_presence_is_available(x, &j, Some("xa")),
            "{}",
            x.dump()
        );
    }

    // Listings 14–15: free to chat goes to stpeter and rynok, never to pgmillard.
    let m2 = marks(&[st, pg, ry]);
    joe.send("<presence><show>chat</show></presence>").await;
    for (x, m) in [(st, m2[0]), (ry, m2[2])] {
        x.wait_for_since(m, "Listing 15", T, |s| {
            s.is_available_from(&j) && s.child_text("show") == Some("chat")
        })
        .await;
    }
    let pg_after_13 = pg
        .received()
        .iter()
        .rposition(|s| s.is_unavailable_from(&j))
        .unwrap_or(0);
    none_since(
        &[pg],
        &[pg_after_13 + 1],
        "available presence after Listing 13",
        available_from(&j),
    )
    .await;

    // No presence of type invisible or visible ever reached anyone.
    for x in [st, pg, ry] {
        assert!(
            !x.received()
                .iter()
                .any(|s| matches!(s.presence_type(), Some("invisible" | "visible"))),
            "{}",
            x.dump()
        );
    }
    let m = marks(&[st, pg, ry]);
    joe.close().await;
    for (x, m) in [(st, m[0]), (ry, m[2])] {
        x.wait_for_since(m, "joe unavailable at the end", T, unavailable_from(&j))
            .await;
    }
}

/// XEP-0018 §3: invisible to all, visible to all, invisible to one, visible to one.
async fn xep0018_use_cases(setup: Setup) {
    let w = world_with(setup).await;
    let obs = w.observers().await;
    let (st, pg, ry) = (&obs[0], &obs[1], &obs[2]);
    let joe = w.joe(Opts::new("psi")).await;
    let j = joe.jid.clone();
    joe.send("<presence/>").await;
    for x in [st, pg, ry] {
        x.wait_for("joe available", T, available_from(&j)).await;
    }

    // 3.1 invisible to all contacts.
    let m = marks(&[st, pg, ry]);
    joe.send("<presence type='invisible'/>").await;
    for (x, m) in [st, pg, ry].into_iter().zip(m) {
        x.wait_for_since(m, "3.1 unavailable", T, unavailable_from(&j))
            .await;
    }
    let m = marks(&[st, pg, ry]);
    joe.send("<presence><show>dnd</show></presence>").await;
    none_since(
        &[st, pg, ry],
        &m,
        "available presence while invisible to all",
        available_from(&j),
    )
    .await;

    // 3.4 visible to one contact while invisible to all.
    joe.send("<presence to='stpeter@localhost' type='visible'/>")
        .await;
    st.wait_for_since(m[0], "3.4 presence", T, |s| {
        s.is_available_from(&j) && s.child_text("show") == Some("dnd")
    })
    .await;
    none_since(
        &[pg, ry],
        &m[1..],
        "available presence while invisible to them",
        available_from(&j),
    )
    .await;

    // 3.2 visible to all.
    let m = marks(&[st, pg, ry]);
    joe.send("<presence type='visible'/>").await;
    for (x, m) in [(pg, m[1]), (ry, m[2])] {
        x.wait_for_since(m, "3.2 presence", T, available_from(&j))
            .await;
    }

    // 3.3 invisible to one contact while visible to all.
    let m = marks(&[st, pg, ry]);
    joe.send("<presence to='rynok@localhost' type='invisible'/>")
        .await;
    ry.wait_for_since(m[2], "3.3 unavailable", T, unavailable_from(&j))
        .await;
    let m = marks(&[st, pg, ry]);
    joe.send("<presence><show>away</show></presence>").await;
    st.wait_for_since(m[0], "update to stpeter", T, |s| {
        s.child_text("show") == Some("away") && s.is_from(&j)
    })
    .await;
    pg.wait_for_since(m[1], "update to pgmillard", T, |s| {
        s.child_text("show") == Some("away") && s.is_from(&j)
    })
    .await;
    none_since(
        &[ry],
        &m[2..],
        "presence while invisible to rynok",
        available_from(&j),
    )
    .await;
}

/// What a proxy cannot hide, measured per server (see the README's table). The assertions pin
/// the measured behaviour, so a server that changes it shows up here. joe logs out first, so
/// that the server has a last-activity record to compare with.
async fn residual_leaks_while_invisible(setup: Setup) {
    let kind = setup.kind;
    let w = world_with(setup).await;
    let st = w.observer("stpeter").await;
    let before = Client::connect(
        w.server.c2s_addr(),
        "joe",
        "joe-pw",
        Opts::new("before").initial_presence(true),
    )
    .await
    .expect("joe directly");
    before.close().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let last_query =
        "<iq type='get' to='joe@localhost' id='ID'><query xmlns='jabber:iq:last'/></iq>";
    let offline = st.iq(&last_query.replace("ID", "l0"), "l0", T).await;

    let joe = w.joe(Opts::new("silent")).await;
    invisible(&joe, None).await;
    joe.send("<presence/>").await;
    let silent = st.iq(&last_query.replace("ID", "l1"), "l1", T).await;
    let items = st
        .iq(
            "<iq type='get' to='joe@localhost' id='i1'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
            "i1",
            T,
        )
        .await;
    let seconds = |s: &Stanza| {
        s.find("query")
            .and_then(|q| q.attr("seconds"))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let lists_resource = items.raw.contains(&joe.jid);
    eprintln!(
        "{kind:?}: last activity offline = {}; while invisible = {}; disco#items = {}",
        offline.raw, silent.raw, items.raw
    );
    assert!(seconds(&offline).is_some_and(|s| s >= 2), "{}", offline.raw);
    match kind {
        // Offline-looking: the same record as before the session, and no resource listed.
        Kind::Prosody => {
            assert!(seconds(&silent).is_some_and(|s| s >= 2), "{}", silent.raw);
            assert!(!lists_resource, "{}", items.raw);
        }
        // Known residual leak of ejabberd: "online now", and the resource is listed.
        Kind::Ejabberd => {
            assert_eq!(seconds(&silent), Some(0), "{}", silent.raw);
            assert!(lists_resource, "{}", items.raw);
        }
    }
}
