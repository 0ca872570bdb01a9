//! The policy's per-stanza cost: what [`Policy::from_client`] and [`Policy::from_server`] take
//! for the stanzas of a busy session, on a session set up as the pump sets it up (the client's
//! bind, the server's bind result, the answer to the policy's own roster query). The Prometheus
//! recorder is installed, as in the proxy, so the policy's counters cost what they cost there.
//!
//! ```sh
//! cargo bench --bench policy
//! ```

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xmpp_veil::policy::{Action, Policy};
use xmpp_veil::xml::{ElementKind, StartTag};

const NOW: u64 = 1_700_000_000;
const CONTACTS: usize = 50;

const MESSAGE: &[u8] = b"<message to='juliet@localhost/balcony' type='chat' id='m42'>\
    <body>Good night, good night! Parting is such sweet sorrow, that I shall say good night \
    till it be morrow.</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>";
const MESSAGE_IN: &[u8] = b"<message from='juliet@localhost/balcony' to='romeo@localhost/orchard' \
    type='chat' id='m43'><body>Sleep dwell upon thine eyes, peace in thy breast!</body>\
    <active xmlns='http://jabber.org/protocol/chatstates'/></message>";
const PRESENCE: &[u8] = b"<presence><show>away</show><status>be right back</status>\
    <priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
    node='https://example.org' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>";
const PRESENCE_IN: &[u8] =
    b"<presence from='juliet@localhost/balcony' to='romeo@localhost/orchard'>\
    <show>chat</show><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
    node='https://example.org' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>";

fn feed_client(p: &mut Policy, raw: &[u8], kind: ElementKind) -> Vec<Action> {
    let mut out = Vec::new();
    p.from_client(&Bytes::copy_from_slice(raw), kind, NOW, &mut out)
        .expect("the policy accepts the setup stanza");
    out
}

fn feed_server(p: &mut Policy, raw: &[u8], kind: ElementKind) -> Vec<Action> {
    let mut out = Vec::new();
    p.from_server(&Bytes::copy_from_slice(raw), kind, &mut out)
        .expect("the policy accepts the setup stanza");
    out
}

/// A bound session with its roster view loaded (`roster`: the items of the roster result).
fn session(roster: &str) -> Policy {
    let mut p = Policy::new("localhost", "bench");
    feed_client(
        &mut p,
        b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
          <resource>orchard</resource></bind></iq>",
        ElementKind::Iq,
    );
    let out = feed_server(
        &mut p,
        b"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
          <jid>romeo@localhost/orchard</jid></bind></iq>",
        ElementKind::Iq,
    );
    // The policy's own roster query: answer it with the id it chose.
    let query_id = out
        .iter()
        .find_map(|a| match a {
            Action::ToServer(b) if b.windows(16).any(|w| w == b"jabber:iq:roster") => {
                StartTag::parse(b).ok()?.attr("id").map(str::to_owned)
            }
            _ => None,
        })
        .expect("the bind result makes the policy query the roster");
    feed_server(
        &mut p,
        format!(
            "<iq type='result' id='{query_id}'><query xmlns='jabber:iq:roster'>{roster}</query></iq>"
        )
        .as_bytes(),
        ElementKind::Iq,
    );
    assert!(p.jid().is_some(), "the session is bound");
    p
}

/// Visible, initial presence sent: the server broadcasts.
fn visible_session() -> Policy {
    let mut p = session("");
    feed_client(&mut p, b"<presence/>", ElementKind::Presence);
    assert!(p.server_broadcasting());
    p
}

/// XEP-0018 invisible, visible to `CONTACTS` contacts by directed `visible`.
fn fan_out_session() -> Policy {
    let mut p = session("");
    feed_client(
        &mut p,
        b"<presence type='invisible'/>",
        ElementKind::Presence,
    );
    for k in 0..CONTACTS {
        feed_client(
            &mut p,
            format!("<presence to='c{k}@localhost' type='visible'/>").as_bytes(),
            ElementKind::Presence,
        );
    }
    let out = feed_client(&mut p, PRESENCE, ElementKind::Presence);
    assert_eq!(
        out.len(),
        CONTACTS,
        "each presence is fanned out to every contact"
    );
    p
}

/// XEP-0186 invisible: undirected presence is withheld.
fn invisible_session() -> Policy {
    let mut p = session("");
    feed_client(
        &mut p,
        b"<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1'/></iq>",
        ElementKind::Iq,
    );
    feed_client(&mut p, b"<presence/>", ElementKind::Presence);
    assert!(p.is_hidden());
    p
}

fn bench_client(
    c: &mut Criterion,
    group: &str,
    name: &str,
    mut p: Policy,
    raw: &'static [u8],
    kind: ElementKind,
) {
    let raw = Bytes::from_static(raw);
    let mut out = Vec::with_capacity(CONTACTS);
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            p.from_client(black_box(&raw), kind, NOW, &mut out)
                .expect("accepted");
            black_box(&out);
        })
    });
    g.finish();
}

fn bench_server(
    c: &mut Criterion,
    name: &str,
    mut p: Policy,
    raw: &'static [u8],
    kind: ElementKind,
) {
    let raw = Bytes::from_static(raw);
    let mut out = Vec::with_capacity(4);
    let mut g = c.benchmark_group("from_server");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            p.from_server(black_box(&raw), kind, &mut out)
                .expect("accepted");
            black_box(&out);
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    // As in the proxy: a global recorder, so counters and gauges are real.
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();

    bench_client(
        c,
        "from_client",
        "message",
        visible_session(),
        MESSAGE,
        ElementKind::Message,
    );
    bench_client(
        c,
        "from_client",
        "presence_visible",
        visible_session(),
        PRESENCE,
        ElementKind::Presence,
    );
    bench_client(
        c,
        "from_client",
        "presence_invisible_withheld",
        invisible_session(),
        PRESENCE,
        ElementKind::Presence,
    );
    bench_client(
        c,
        "from_client",
        "presence_fan_out_50",
        fan_out_session(),
        PRESENCE,
        ElementKind::Presence,
    );
    bench_server(
        c,
        "message",
        visible_session(),
        MESSAGE_IN,
        ElementKind::Message,
    );
    bench_server(
        c,
        "presence",
        visible_session(),
        PRESENCE_IN,
        ElementKind::Presence,
    );
}

criterion_group!(benches, all);
criterion_main!(benches);
