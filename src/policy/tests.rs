//! Unit tests of the invisibility rules: one per rule, one per Listing of XEP-0018 §4.1.
//!
//! The harness ([`H`]) drives one [`Policy`] through a realistic session (resource binding, the
//! proxy's own roster query and its answer) and turns the actions into [`Out`]s whose
//! [`Out::brief`] reads like `"server presence to=rynok@foo.com type=unavailable"`. Every call
//! also checks that no output carries an XEP-0018 `invisible`/`visible` presence.

use bytes::Bytes;
use jid::BareJid;

use super::*;
use crate::ns::{
    CLIENT as NS_CLIENT, DISCO_INFO as NS_DISCO_INFO, INVISIBLE_0 as NS_0, INVISIBLE_1 as NS_1,
    ROSTER as NS_ROSTER,
};
use crate::xml::{Element, ElementKind, StartTag};

const ME: &str = "joe@foo.com/r";
const BIND: &str = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                    <resource>r</resource></bind></iq>";
const BOUND: &str = "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                     <jid>joe@foo.com/r</jid></bind></iq>";
const INVISIBLE: &str = "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1'/></iq>";
const INVISIBLE_PROBE: &str =
    "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1' probe='true'/></iq>";
const VISIBLE: &str = "<iq type='set' id='vis1'><visible xmlns='urn:xmpp:invisible:1'/></iq>";
const XA: &str = "<presence><show>xa</show><status>Away (due to idle)</status></presence>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Server,
    Client,
}

/// One action, with the few things the assertions look at.
#[derive(Debug, Clone)]
struct Out {
    dir: Dir,
    raw: Bytes,
    name: String,
    to: Option<String>,
    ty: Option<String>,
}

impl Out {
    fn new(action: Action) -> Out {
        let (dir, raw) = match action {
            Action::ToServer(b) => (Dir::Server, b),
            Action::ToClient(b) => (Dir::Client, b),
        };
        let tag = StartTag::parse(&raw).expect("the policy emits well-formed stanzas");
        Out {
            dir,
            name: tag.name.clone(),
            to: tag.attr("to").map(str::to_owned),
            ty: tag.attr("type").map(str::to_owned),
            raw,
        }
    }

    /// `"server presence to=x type=y"`, leaving out what is absent.
    fn brief(&self) -> String {
        let mut s = format!(
            "{} {}",
            match self.dir {
                Dir::Server => "server",
                Dir::Client => "client",
            },
            self.name
        );
        if let Some(to) = &self.to {
            s.push_str(&format!(" to={to}"));
        }
        if let Some(ty) = &self.ty {
            s.push_str(&format!(" type={ty}"));
        }
        s
    }

    fn el(&self) -> Element {
        Element::parse(&self.raw, NS_CLIENT, &[]).expect("the policy emits parsable stanzas")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.raw).expect("UTF-8")
    }

    /// The `<show/>` of a presence, if any.
    fn show(&self) -> Option<String> {
        self.el().child("show", NS_CLIENT).map(Element::text)
    }

    fn status(&self) -> Option<String> {
        self.el().child("status", NS_CLIENT).map(Element::text)
    }
}

fn briefs(outs: &[Out]) -> Vec<String> {
    outs.iter().map(Out::brief).collect()
}

/// Briefs in sorted order, for fan-outs (their order follows the roster's hash order).
fn sorted(outs: &[Out]) -> Vec<String> {
    let mut b = briefs(outs);
    b.sort();
    b
}

pub(super) fn kind_of(xml: &str) -> ElementKind {
    match StartTag::parse(xml.as_bytes())
        .expect("test stanza")
        .name
        .as_str()
    {
        "presence" => ElementKind::Presence,
        "iq" => ElementKind::Iq,
        "message" => ElementKind::Message,
        _ => ElementKind::Other,
    }
}

fn bare(s: &str) -> BareJid {
    BareJid::new(s).expect("test JID")
}

fn roster_result(id: &str, items: &[(&str, &str)]) -> String {
    let items: String = items
        .iter()
        .map(|(jid, sub)| format!("<item jid='{jid}' subscription='{sub}'/>"))
        .collect();
    format!("<iq type='result' id='{id}'><query xmlns='{NS_ROSTER}'>{items}</query></iq>")
}

fn push(jid: &str, sub: &str) -> String {
    format!(
        "<iq type='set' id='p1'><query xmlns='{NS_ROSTER}'>\
         <item jid='{jid}' subscription='{sub}'/></query></iq>"
    )
}

/// The policy under test, in a session.
struct H {
    p: Policy,
    now: u64,
    /// The id of the proxy's roster query while its answer is outstanding.
    roster_id: Option<String>,
}

impl H {
    /// A new session: nothing bound yet.
    fn fresh() -> H {
        H {
            p: Policy::new("foo.com", "veiltest"),
            now: 1_000,
            roster_id: None,
        }
    }

    /// Resource bound as joe@foo.com/r; the proxy's roster query is still unanswered.
    fn bound_without_roster() -> H {
        let mut h = H::fresh();
        assert_eq!(briefs(&h.client(BIND)), ["server iq type=set"]);
        let outs = h.server(BOUND);
        assert_eq!(
            briefs(&outs),
            ["server iq type=get", "client iq type=result"],
            "the bind result reaches the client, after the proxy's roster query"
        );
        let query = outs[0].el();
        assert!(
            query.child("query", NS_ROSTER).is_some(),
            "{}",
            outs[0].text()
        );
        assert_eq!(outs[1].raw, Bytes::from(BOUND), "bind result untouched");
        h.roster_id = Some(query.attr("id").expect("query id").to_owned());
        h
    }

    /// A bound session whose roster view has arrived.
    fn with_roster(items: &[(&str, &str)]) -> H {
        let mut h = H::bound_without_roster();
        assert!(h.roster_arrives(items).is_empty());
        h
    }

    /// The answer to the proxy's roster query.
    fn roster_arrives(&mut self, items: &[(&str, &str)]) -> Vec<Out> {
        let id = self
            .roster_id
            .take()
            .expect("a roster query is outstanding");
        let outs = self.server(&roster_result(&id, items));
        assert!(
            outs.iter().all(|o| o.dir == Dir::Server),
            "the roster answer is consumed: {:?}",
            briefs(&outs)
        );
        outs
    }

    fn client(&mut self, xml: &str) -> Vec<Out> {
        let mut out = Vec::new();
        self.p
            .from_client(
                &Bytes::from(xml.to_owned()),
                kind_of(xml),
                self.now,
                &mut out,
            )
            .expect("no violation");
        check(out)
    }

    fn server(&mut self, xml: &str) -> Vec<Out> {
        let mut out = Vec::new();
        self.p
            .from_server(&Bytes::from(xml.to_owned()), kind_of(xml), &mut out)
            .expect("no violation");
        check(out)
    }

    fn end(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        self.p.session_end(&mut out);
        check(out)
    }

    /// The entities the policy remembers as shown, sorted.
    fn shown(&self) -> Vec<String> {
        let mut v: Vec<String> = self.p.shown().map(|j| j.to_string()).collect();
        v.sort();
        v
    }

    /// A command IQ, which must be consumed and answered with a result.
    fn command(&mut self, xml: &str) -> Vec<Out> {
        let mut outs = self.client(xml);
        let reply = outs.pop().expect("an answer");
        assert_eq!(reply.brief(), "client iq type=result", "{}", reply.text());
        let id = StartTag::parse(xml.as_bytes())
            .unwrap()
            .attr("id")
            .map(str::to_owned);
        assert_eq!(reply.el().attr("id").map(str::to_owned), id);
        outs
    }
}

/// Checks every output: parsable, and never an XEP-0018 `invisible`/`visible` presence.
fn check(actions: Vec<Action>) -> Vec<Out> {
    let outs: Vec<Out> = actions.into_iter().map(Out::new).collect();
    for o in &outs {
        let _ = o.el();
        assert!(
            !(o.name == "presence" && matches!(o.ty.as_deref(), Some("invisible" | "visible"))),
            "XEP-0018 presence escaped: {}",
            o.text()
        );
    }
    outs
}

const BOTH3: &[(&str, &str)] = &[
    ("stpeter@foo.com", "both"),
    ("pgmillard@foo.com", "both"),
    ("rynok@foo.com", "both"),
];

/// A mixed roster: one of each subscription.
const MIXED: &[(&str, &str)] = &[
    ("both@foo.com", "both"),
    ("from@foo.com", "from"),
    ("to@foo.com", "to"),
    ("none@foo.com", "none"),
];

// ---------------------------------------------------------------------------------------------
// Session setup and the visible session

#[test]
fn binding_gives_the_jid_and_the_roster_answer_is_consumed() {
    let mut h = H::bound_without_roster();
    assert_eq!(h.p.jid().map(|j| j.to_string()).as_deref(), Some(ME));
    assert!(h.roster_arrives(MIXED).is_empty());
    assert!(!h.p.is_hidden());
    assert!(!h.p.server_broadcasting());
}

#[test]
fn a_failed_roster_query_is_consumed_too() {
    let mut h = H::bound_without_roster();
    let id = h.roster_id.take().unwrap();
    let outs = h.server(&format!(
        "<iq type='error' id='{id}'><error type='cancel'>\
         <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ));
    assert!(outs.is_empty());
    // Fail closed: with no roster nobody is a subscriber, so the fan-out reaches nobody.
    assert!(h.client("<presence type='invisible'/>").is_empty());
    assert!(h.client(XA).is_empty());
}

#[test]
fn the_clients_own_roster_traffic_passes() {
    let mut h = H::with_roster(MIXED);
    let get = "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>";
    let outs = h.client(get);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].raw, Bytes::from(get));
    let result = roster_result("r1", &[("both@foo.com", "both")]);
    let outs = h.server(&result);
    assert_eq!(briefs(&outs), ["client iq type=result"]);
    assert_eq!(outs[0].raw, Bytes::from(result));
}

#[test]
fn visible_undirected_presence_goes_to_the_server_as_sent() {
    let mut h = H::with_roster(MIXED);
    for xml in [
        "<presence/>",
        "<presence id='a'><show>away</show><status>lunch</status><priority>5</priority></presence>",
        "<presence type='unavailable'><status>bye</status></presence>",
    ] {
        let outs = h.client(xml);
        assert_eq!(outs.len(), 1, "{xml}");
        assert_eq!(outs[0].dir, Dir::Server);
        assert_eq!(outs[0].raw, Bytes::from(xml), "the original bytes");
    }
    assert!(!h.p.server_broadcasting());
}

#[test]
fn visible_presence_makes_the_server_broadcast() {
    let mut h = H::with_roster(MIXED);
    h.client("<presence/>");
    assert!(h.p.server_broadcasting());
    assert!(!h.p.is_hidden());
}

#[test]
fn messages_and_unrelated_iqs_pass_unchanged_both_ways() {
    let mut h = H::with_roster(MIXED);
    h.client(INVISIBLE);
    for xml in [
        "<message to='bob@foo.com' type='chat'><body>hi</body></message>",
        "<iq type='get' id='v1' to='bob@foo.com/x'><query xmlns='jabber:iq:version'/></iq>",
        "<iq type='get' id='v2'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='result' id='x9' to='bob@foo.com/x'/>",
        "<r xmlns='urn:xmpp:sm:3'/>",
    ] {
        let outs = h.client(xml);
        assert_eq!(outs.len(), 1, "{xml}");
        assert_eq!(outs[0].dir, Dir::Server);
        assert_eq!(outs[0].raw, Bytes::from(xml));
    }
    for xml in [
        "<message from='bob@foo.com/x' type='chat'><body>hi</body></message>",
        "<iq type='get' id='v3' from='bob@foo.com/x'><query xmlns='jabber:iq:version'/></iq>",
        "<presence from='bob@foo.com/x'><show>dnd</show></presence>",
        "<a xmlns='urn:xmpp:sm:3' h='3'/>",
    ] {
        let outs = h.server(xml);
        assert_eq!(outs.len(), 1, "{xml}");
        assert_eq!(outs[0].dir, Dir::Client);
        assert_eq!(outs[0].raw, Bytes::from(xml));
    }
}

#[test]
fn directed_presence_in_a_visible_session_passes_and_is_remembered() {
    let mut h = H::with_roster(MIXED);
    h.client("<presence/>");
    let xml = "<presence to='stranger@bar.org'><show>chat</show></presence>";
    let outs = h.client(xml);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].raw, Bytes::from(xml));
    assert_eq!(h.shown(), ["stranger@bar.org"]);
}

#[test]
fn subscription_management_and_probes_pass() {
    let mut h = H::with_roster(MIXED);
    h.client(INVISIBLE);
    for xml in [
        "<presence to='bob@foo.com' type='subscribe'/>",
        "<presence to='bob@foo.com' type='subscribed'/>",
        "<presence to='bob@foo.com' type='unsubscribe'/>",
        "<presence to='bob@foo.com' type='unsubscribed'/>",
        "<presence to='bob@foo.com' type='probe'/>",
    ] {
        let outs = h.client(xml);
        assert_eq!(outs.len(), 1, "{xml}");
        assert_eq!(outs[0].raw, Bytes::from(xml));
    }
    assert!(h.shown().is_empty(), "none of these shows the resource");
}

#[test]
fn session_end_of_a_visible_session_tells_only_whom_the_server_will_not() {
    let mut h = H::with_roster(MIXED);
    h.client("<presence/>");
    for to in [
        "both@foo.com",
        "from@foo.com/x",
        "to@foo.com",
        "none@foo.com",
        "stranger@bar.org",
    ] {
        h.client(&format!("<presence to='{to}'/>"));
    }
    let outs = h.end();
    // The server tells its subscribers (both, from) itself when the stream closes; it never tells
    // roster contacts that only got directed presence.
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=none@foo.com type=unavailable",
            "server presence to=stranger@bar.org type=unavailable",
            "server presence to=to@foo.com type=unavailable",
        ]
    );
    assert!(h.shown().is_empty());
    assert!(h.end().is_empty(), "a second end has nobody left to tell");
}

// ---------------------------------------------------------------------------------------------
// XEP-0186

#[test]
fn invisible_command_is_answered_in_both_namespaces() {
    for ns in [NS_1, NS_0] {
        for cmd in ["invisible", "visible"] {
            let mut h = H::with_roster(MIXED);
            let xml = format!("<iq type='set' id='c1'><{cmd} xmlns='{ns}'/></iq>");
            let outs = h.client(&xml);
            assert_eq!(briefs(&outs), ["client iq type=result"], "{xml}");
            assert_eq!(outs[0].el().attr("id"), Some("c1"));
            assert!(outs[0].el().elements().next().is_none(), "an empty result");
            assert_eq!(h.p.is_hidden(), cmd == "invisible", "{xml}");
        }
    }
}

#[test]
fn invisible_command_to_the_own_server_is_ours() {
    for to in ["foo.com", "FOO.com"] {
        let mut h = H::with_roster(MIXED);
        let outs = h.client(&format!(
            "<iq type='set' id='c1' to='{to}'><invisible xmlns='urn:xmpp:invisible:1'/></iq>"
        ));
        assert_eq!(briefs(&outs), ["client iq type=result"], "to={to}");
        assert!(h.p.is_hidden(), "to={to}");
    }
}

#[test]
fn invisible_command_with_a_bad_probe_is_a_bad_request_and_changes_nothing() {
    let mut h = H::with_roster(MIXED);
    h.client("<presence/>");
    let outs = h.client(
        "<iq type='set' id='c1'><invisible xmlns='urn:xmpp:invisible:1' probe='yes'/></iq>",
    );
    assert_eq!(briefs(&outs), ["client iq type=error"]);
    let err = outs[0].el();
    assert_eq!(err.attr("id"), Some("c1"));
    let error = err.child("error", NS_CLIENT).expect("an error child");
    assert_eq!(error.attr("type"), Some("modify"));
    assert!(
        error
            .child("bad-request", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some()
    );
    assert!(!h.p.is_hidden());
    assert!(h.p.server_broadcasting());
    assert_eq!(h.p.invisible_since(), None);
}

#[test]
fn invisible_command_to_another_entity_is_not_ours() {
    let mut h = H::with_roster(MIXED);
    for to in ["bob@foo.com", "joe@foo.com/other", "pubsub.foo.com"] {
        let xml = format!(
            "<iq type='set' id='c1' to='{to}'><invisible xmlns='urn:xmpp:invisible:1'/></iq>"
        );
        let outs = h.client(&xml);
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].dir, Dir::Server);
        assert_eq!(outs[0].raw, Bytes::from(xml));
    }
    // Not a set: not a command.
    let get = "<iq type='get' id='c2'><invisible xmlns='urn:xmpp:invisible:1'/></iq>";
    let outs = h.client(get);
    assert_eq!(outs[0].raw, Bytes::from(get));
    assert!(!h.p.is_hidden());
}

#[test]
fn going_invisible_mid_session_stops_the_broadcast_and_tells_the_rest() {
    let mut h = H::with_roster(MIXED);
    h.client("<presence><show>away</show></presence>");
    for to in ["both@foo.com", "to@foo.com", "stranger@bar.org/x"] {
        h.client(&format!("<presence to='{to}'/>"));
    }
    let outs = h.command(INVISIBLE);
    assert_eq!(
        briefs(&outs[..1]),
        ["server presence type=unavailable"],
        "first the server stops its broadcast"
    );
    // The server tells both@ (a subscriber); nobody tells the others but the proxy.
    assert_eq!(
        sorted(&outs[1..]),
        [
            "server presence to=stranger@bar.org/x type=unavailable",
            "server presence to=to@foo.com type=unavailable",
        ]
    );
    assert!(h.p.is_hidden());
    assert!(!h.p.server_broadcasting());
    assert_eq!(h.p.invisible_since(), Some(1_000));
    assert!(h.shown().is_empty());
}

#[test]
fn going_invisible_before_any_presence_sends_nothing() {
    let mut h = H::with_roster(MIXED);
    assert!(h.command(INVISIBLE).is_empty());
    assert!(h.p.is_hidden());
}

#[test]
fn invisible_withholds_undirected_presence() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    assert!(h.client("<presence/>").is_empty());
    assert!(h.client(XA).is_empty());
    assert!(!h.p.server_broadcasting());
    assert!(h.shown().is_empty());
}

#[test]
fn invisible_delivers_and_remembers_directed_presence() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence/>");
    for to in ["both@foo.com", "stranger@bar.org/x"] {
        let xml = format!("<presence to='{to}'><show>dnd</show></presence>");
        let outs = h.client(&xml);
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].raw, Bytes::from(xml));
    }
    assert_eq!(h.shown(), ["both@foo.com", "stranger@bar.org/x"]);
}

#[test]
fn invisible_unavailable_goes_only_to_the_remembered() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence/>");
    h.client("<presence to='both@foo.com'/>");
    h.client("<presence to='stranger@bar.org/x'/>");
    let outs = h.client("<presence type='unavailable'><status>gone</status></presence>");
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=both@foo.com type=unavailable",
            "server presence to=stranger@bar.org/x type=unavailable",
        ],
        "and no undirected unavailable, which the server would broadcast"
    );
    assert!(outs.iter().all(|o| o.status().as_deref() == Some("gone")));
    assert!(h.shown().is_empty());
    assert!(h.end().is_empty());
}

#[test]
fn invisible_unavailable_with_nobody_shown_sends_nothing() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence/>");
    assert!(h.client("<presence type='unavailable'/>").is_empty());
}

#[test]
fn directed_unavailable_forgets_the_recipient() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence to='both@foo.com'/>");
    h.client("<presence to='stranger@bar.org/x'/>");
    h.client("<presence to='stranger@bar.org/y'/>");
    let xml = "<presence to='both@foo.com' type='unavailable'/>";
    let outs = h.client(xml);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].raw, Bytes::from(xml));
    // Unavailable to a bare JID reaches all of its resources.
    h.client("<presence to='stranger@bar.org' type='unavailable'/>");
    assert!(h.shown().is_empty());
    assert!(h.end().is_empty());
}

#[test]
fn directed_unavailable_to_one_resource_forgets_only_it() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence to='stranger@bar.org/x'/>");
    h.client("<presence to='stranger@bar.org/y'/>");
    h.client("<presence to='stranger@bar.org/x' type='unavailable'/>");
    assert_eq!(h.shown(), ["stranger@bar.org/y"]);
}

#[test]
fn probe_true_probes_the_contacts_whose_presence_the_user_gets() {
    let mut h = H::with_roster(MIXED);
    let outs = h.command(INVISIBLE_PROBE);
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=both@foo.com type=probe",
            "server presence to=to@foo.com type=probe",
        ]
    );
    let mut h = H::with_roster(MIXED);
    let outs = h.command(
        "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:0' probe='1'/></iq>",
    );
    assert_eq!(outs.len(), 2);
}

#[test]
fn probe_false_or_absent_probes_nobody() {
    for xml in [
        INVISIBLE,
        "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1' probe='false'/></iq>",
        "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1' probe='0'/></iq>",
    ] {
        let mut h = H::with_roster(MIXED);
        assert!(h.command(xml).is_empty(), "{xml}");
    }
}

#[test]
fn probes_wait_for_the_roster_view() {
    let mut h = H::bound_without_roster();
    assert!(h.command(INVISIBLE_PROBE).is_empty());
    let outs = h.roster_arrives(MIXED);
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=both@foo.com type=probe",
            "server presence to=to@foo.com type=probe",
        ]
    );
}

#[test]
fn a_later_probe_false_cancels_deferred_probes() {
    let mut h = H::bound_without_roster();
    h.command(INVISIBLE_PROBE);
    h.command(INVISIBLE);
    let outs = h.roster_arrives(MIXED);
    assert!(
        outs.is_empty(),
        "the last command said probe='false': {:?}",
        briefs(&outs)
    );
}

#[test]
fn visible_command_sends_nothing_and_hands_presence_back_to_the_server() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence><show>dnd</show></presence>");
    h.client("<presence to='stranger@bar.org'/>");
    h.client("<presence to='to@foo.com'/>");
    h.client("<presence to='both@foo.com'/>");
    assert!(h.command(VISIBLE).is_empty(), "nothing is broadcast yet");
    assert!(!h.p.is_hidden());
    assert!(!h.p.server_broadcasting());
    assert_eq!(h.p.invisible_since(), None);
    // As if the session had not sent initial presence: the next presence goes to the server.
    let xml = "<presence><show>chat</show></presence>";
    let outs = h.client(xml);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].raw, Bytes::from(xml));
    assert!(h.p.server_broadcasting());
    // Entities shown while invisible get unavailable at the end (both@ from the server).
    assert_eq!(
        sorted(&h.end()),
        [
            "server presence to=stranger@bar.org type=unavailable",
            "server presence to=to@foo.com type=unavailable",
        ]
    );
}

#[test]
fn visible_command_then_end_without_presence_tells_everyone_shown() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence to='both@foo.com'/>");
    h.client("<presence to='stranger@bar.org'/>");
    h.command(VISIBLE);
    // The server never held the session available, so it tells nobody.
    assert_eq!(
        sorted(&h.end()),
        [
            "server presence to=both@foo.com type=unavailable",
            "server presence to=stranger@bar.org type=unavailable",
        ]
    );
}

#[test]
fn visible_command_then_unavailable_is_not_broadcast() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    h.client("<presence/>");
    h.client("<presence to='stranger@bar.org'/>");
    h.command(VISIBLE);
    // The server never had available presence: an undirected unavailable would be broadcast.
    assert_eq!(
        briefs(&h.client("<presence type='unavailable'/>")),
        ["server presence to=stranger@bar.org type=unavailable"]
    );
}

#[test]
fn invisible_before_any_presence_then_end_tells_every_recipient() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    for to in [
        "both@foo.com",
        "from@foo.com/x",
        "to@foo.com",
        "stranger@bar.org",
    ] {
        h.client(&format!("<presence to='{to}'/>"));
    }
    assert_eq!(
        sorted(&h.end()),
        [
            "server presence to=both@foo.com type=unavailable",
            "server presence to=from@foo.com/x type=unavailable",
            "server presence to=stranger@bar.org type=unavailable",
            "server presence to=to@foo.com type=unavailable",
        ]
    );
}

#[test]
fn invisible_since_is_the_first_time_and_cleared_by_visible() {
    let mut h = H::with_roster(MIXED);
    h.now = 10;
    h.command(INVISIBLE);
    h.now = 20;
    h.command(INVISIBLE);
    assert_eq!(h.p.invisible_since(), Some(10));
    h.command(VISIBLE);
    assert_eq!(h.p.invisible_since(), None);
}

// ---------------------------------------------------------------------------------------------
// disco#info

const DISCO_GET: &str = "<iq type='get' to='foo.com' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>";

fn disco_result(from: &str, node: Option<&str>, features: &[&str]) -> String {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    let features: String = features
        .iter()
        .map(|f| format!("<feature var='{f}'/>"))
        .collect();
    format!(
        "<iq type='result' id='d1' from='{from}' to='{ME}'>\
         <query xmlns='http://jabber.org/protocol/disco#info'{node}>\
         <identity category='server' type='im'/>{features}</query></iq>"
    )
}

fn features(out: &Out) -> Vec<String> {
    out.el()
        .child("query", NS_DISCO_INFO)
        .expect("query")
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var").map(str::to_owned))
        .collect()
}

#[test]
fn disco_info_of_the_server_gains_the_invisible_features() {
    let mut h = H::with_roster(MIXED);
    let outs = h.client(DISCO_GET);
    assert_eq!(outs[0].raw, Bytes::from(DISCO_GET));
    let outs = h.server(&disco_result("foo.com", None, &["jabber:iq:version"]));
    assert_eq!(briefs(&outs), [format!("client iq to={ME} type=result")]);
    assert_eq!(features(&outs[0]), ["jabber:iq:version", NS_1, NS_0]);
    let query = outs[0].el();
    let query = query.child("query", NS_DISCO_INFO).unwrap();
    assert!(query.child("identity", NS_DISCO_INFO).is_some());
    assert_eq!(outs[0].el().attr("from"), Some("foo.com"));
}

#[test]
fn disco_info_features_are_not_doubled() {
    let mut h = H::with_roster(MIXED);
    h.client(DISCO_GET);
    let outs = h.server(&disco_result("foo.com", None, &[NS_1]));
    assert_eq!(features(&outs[0]), [NS_1, NS_0]);
}

#[test]
fn disco_info_of_a_node_or_of_another_entity_is_untouched() {
    let cases = [
        (
            "<iq type='get' to='foo.com' id='d1'>\
             <query xmlns='http://jabber.org/protocol/disco#info' node='n'/></iq>",
            disco_result("foo.com", Some("n"), &[]),
        ),
        (
            "<iq type='get' to='bob@foo.com' id='d1'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            disco_result("bob@foo.com", None, &[]),
        ),
        (
            // The answer does not come from the server that was asked.
            DISCO_GET,
            disco_result("evil.org", None, &[]),
        ),
        (
            "<iq type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            disco_result("joe@foo.com", None, &[]),
        ),
    ];
    for (get, result) in cases {
        let mut h = H::with_roster(MIXED);
        h.client(get);
        let outs = h.server(&result);
        assert_eq!(outs.len(), 1, "{get}");
        assert_eq!(outs[0].raw, Bytes::from(result), "{get}");
    }
}

#[test]
fn a_disco_answer_is_rewritten_once() {
    let mut h = H::with_roster(MIXED);
    h.client(DISCO_GET);
    h.server(&disco_result("foo.com", None, &[]));
    let again = disco_result("foo.com", None, &[]);
    let outs = h.server(&again);
    assert_eq!(outs[0].raw, Bytes::from(again));
}

// ---------------------------------------------------------------------------------------------
// Stray XEP-0018 presence, unknown types, bad addresses

#[test]
fn server_presence_of_type_invisible_or_visible_is_dropped() {
    let mut h = H::with_roster(MIXED);
    for xml in [
        "<presence from='bob@foo.com/x' type='invisible'/>",
        "<presence from='bob@foo.com/x' type='visible'/>",
        "<presence type='invisible'/>",
    ] {
        assert!(h.server(xml).is_empty(), "{xml}");
    }
    let ok = "<presence from='bob@foo.com/x' type='unavailable'/>";
    assert_eq!(h.server(ok)[0].raw, Bytes::from(ok));
}

#[test]
fn unknown_presence_type_is_refused() {
    let mut h = H::with_roster(MIXED);
    for xml in [
        "<presence type='available' id='u1'/>",
        "<presence type='Unavailable'/>",
        "<presence to='both@foo.com' type='available'/>",
    ] {
        let outs = h.client(xml);
        assert_eq!(briefs(&outs), ["client presence type=error"], "{xml}");
    }
    let outs = h.client("<presence type='available' id='u1'/>");
    assert_eq!(outs[0].el().attr("id"), Some("u1"));
    assert!(
        outs[0]
            .el()
            .child("error", NS_CLIENT)
            .and_then(|e| e.child("bad-request", "urn:ietf:params:xml:ns:xmpp-stanzas"))
            .is_some()
    );
    assert!(h.shown().is_empty());
    assert!(!h.p.server_broadcasting());
}

#[test]
fn directed_presence_to_an_unparsable_jid_is_refused() {
    let mut h = H::with_roster(MIXED);
    h.command(INVISIBLE);
    for to in ["", "a@b@c", "@foo.com", "bob@", "joe@foo.com/"] {
        for ty in [
            "",
            " type='unavailable'",
            " type='invisible'",
            " type='visible'",
        ] {
            let xml = format!("<presence to='{to}'{ty}/>");
            let outs = h.client(&xml);
            assert_eq!(briefs(&outs), ["client presence type=error"], "{xml}");
        }
    }
    assert!(h.shown().is_empty());
    assert!(h.p.visibility().exceptions.is_empty());
}

// ---------------------------------------------------------------------------------------------
// XEP-0018 §4.1, Listings 5–15 (joe@foo.com; stpeter, pgmillard, rynok all `both`)

const L5: &str = "<presence type='invisible'/>";
const L6: &str = "<presence to='rynok@foo.com' type='visible'/>";
const L10: &str = "<presence type='visible'/>";
const L12: &str = "<presence to='pgmillard@foo.com' type='invisible'/>";
const L14: &str = "<presence><show>chat</show></presence>";

/// The session after the listings before `upto` (one of the constants above).
fn listings_until(upto: &str) -> H {
    let mut h = H::with_roster(BOTH3);
    for step in [L5, L6, XA, L10, L12, L14] {
        if step == upto {
            break;
        }
        h.client(step);
    }
    h
}

#[test]
fn listing_05_invisible_initial_presence_sends_nothing() {
    let mut h = listings_until(L5);
    assert!(h.client(L5).is_empty());
    assert!(h.p.is_hidden());
    assert_eq!(h.p.visibility().global, Mode::Invisible);
    assert!(!h.p.server_broadcasting());
}

#[test]
fn listing_06_07_visible_to_rynok_shows_rynok() {
    let mut h = listings_until(L6);
    let outs = h.client(L6);
    assert_eq!(briefs(&outs), ["server presence to=rynok@foo.com"]);
    assert!(outs[0].el().elements().next().is_none(), "plain available");
    assert!(h.p.visibility().may_see(&bare("rynok@foo.com")));
    assert!(!h.p.visibility().may_see(&bare("stpeter@foo.com")));
    assert_eq!(h.shown(), ["rynok@foo.com"]);
}

#[test]
fn listing_08_09_xa_goes_to_rynok_only() {
    let mut h = listings_until(XA);
    let outs = h.client(XA);
    assert_eq!(briefs(&outs), ["server presence to=rynok@foo.com"]);
    assert_eq!(outs[0].show().as_deref(), Some("xa"));
    assert_eq!(outs[0].status().as_deref(), Some("Away (due to idle)"));
    assert_eq!(
        outs[0].text(),
        "<presence to='rynok@foo.com'><show>xa</show><status>Away (due to idle)</status></presence>",
        "the original stanza with a `to` added"
    );
}

#[test]
fn listing_10_11_visible_hands_the_last_presence_to_the_server() {
    let mut h = listings_until(L10);
    let outs = h.client(L10);
    // Nobody is hidden: the server broadcasts the xa presence to stpeter and pgmillard (and rynok
    // gets it again: by design, the session is handed back to the server's broadcast).
    assert_eq!(briefs(&outs), ["server presence"]);
    assert_eq!(outs[0].raw, Bytes::from(XA));
    assert!(h.p.server_broadcasting());
    assert!(!h.p.is_hidden());
    assert_eq!(h.p.invisible_since(), None);
}

#[test]
fn listing_12_13_invisible_to_pgmillard() {
    let mut h = listings_until(L12);
    let outs = h.client(L12);
    assert_eq!(
        briefs(&outs[..1]),
        ["server presence type=unavailable"],
        "the server must stop broadcasting first (pgmillard's unavailable comes from it)"
    );
    assert_eq!(
        sorted(&outs[1..]),
        [
            "server presence to=rynok@foo.com",
            "server presence to=stpeter@foo.com"
        ],
        "the others see a flicker: unavailable from the server, then the xa presence again"
    );
    assert!(outs[1..].iter().all(|o| o.show().as_deref() == Some("xa")));
    assert!(!h.p.server_broadcasting());
    assert!(!h.p.visibility().may_see(&bare("pgmillard@foo.com")));
    assert_eq!(h.shown(), ["rynok@foo.com", "stpeter@foo.com"]);
}

#[test]
fn listing_14_15_chat_goes_to_stpeter_and_rynok() {
    let mut h = listings_until(L14);
    let outs = h.client(L14);
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=rynok@foo.com",
            "server presence to=stpeter@foo.com"
        ]
    );
    assert!(outs.iter().all(|o| o.show().as_deref() == Some("chat")));
    // And when the session ends, the proxy tells them (the server does not broadcast).
    assert_eq!(
        sorted(&h.end()),
        [
            "server presence to=rynok@foo.com type=unavailable",
            "server presence to=stpeter@foo.com type=unavailable"
        ]
    );
}

#[test]
fn directed_invisible_while_silent_tells_only_that_contact() {
    let mut h = H::with_roster(BOTH3);
    h.client(L5);
    h.client(L10);
    // Silent with an exception: visible to everyone but stpeter.
    h.client("<presence to='stpeter@foo.com' type='invisible'/>");
    h.client(XA);
    h.client("<presence to='rynok@foo.com/phone'/>");
    h.client("<presence to='rynok@foo.com/desk'/>");
    assert_eq!(
        h.shown(),
        [
            "pgmillard@foo.com",
            "rynok@foo.com",
            "rynok@foo.com/desk",
            "rynok@foo.com/phone"
        ]
    );
    let outs = h.client("<presence to='rynok@foo.com/desk' type='invisible'/>");
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=rynok@foo.com type=unavailable",
            "server presence to=rynok@foo.com/desk type=unavailable",
            "server presence to=rynok@foo.com/phone type=unavailable",
        ],
        "hiding is per bare JID"
    );
    assert_eq!(h.shown(), ["pgmillard@foo.com"]);
    assert!(!h.p.visibility().may_see(&bare("rynok@foo.com")));
    // Later presence skips rynok too.
    assert_eq!(
        sorted(&h.client(L14)),
        ["server presence to=pgmillard@foo.com"]
    );
}

#[test]
fn directed_invisible_to_a_contact_that_sees_nothing_sends_nothing() {
    let mut h = H::with_roster(BOTH3);
    h.client(L5);
    assert!(h.client(L12).is_empty());
}

#[test]
fn directed_visible_shows_the_last_presence() {
    let mut h = H::with_roster(BOTH3);
    h.client(L5);
    h.client(XA);
    let outs = h.client(L6);
    assert_eq!(briefs(&outs), ["server presence to=rynok@foo.com"]);
    assert_eq!(outs[0].show().as_deref(), Some("xa"));
    // Already shown: no second copy.
    assert!(h.client(L6).is_empty());
}

#[test]
fn directed_visible_to_a_stranger_shows_plain_available() {
    let mut h = H::with_roster(BOTH3);
    h.client(L5);
    let outs = h.client("<presence to='stranger@bar.org/x' type='visible'/>");
    assert_eq!(briefs(&outs), ["server presence to=stranger@bar.org"]);
    assert_eq!(outs[0].text(), "<presence to='stranger@bar.org'/>");
    assert_eq!(h.shown(), ["stranger@bar.org"]);
}

#[test]
fn directed_visible_before_any_presence_shows_nothing_yet() {
    let mut h = H::with_roster(BOTH3);
    h.command(INVISIBLE);
    assert!(h.client(L6).is_empty());
    // The first presence reaches rynok only.
    assert_eq!(briefs(&h.client(XA)), ["server presence to=rynok@foo.com"]);
}

#[test]
fn undirected_invisible_hides_from_everyone_shown() {
    let mut h = H::with_roster(BOTH3);
    h.client(L5);
    h.client(L6);
    h.client("<presence to='stranger@bar.org'/>");
    let outs = h.client(L5);
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=rynok@foo.com type=unavailable",
            "server presence to=stranger@bar.org type=unavailable",
        ]
    );
    assert!(h.p.visibility().exceptions.is_empty());
}

#[test]
fn undirected_invisible_while_broadcasting_stops_the_server() {
    let mut h = H::with_roster(BOTH3);
    h.client(XA);
    let outs = h.client(L5);
    assert_eq!(briefs(&outs), ["server presence type=unavailable"]);
    assert!(!h.p.server_broadcasting());
    // A status change stays withheld (a plain "online" would end the invisibility: see
    // `psi_invisible_from_the_start_then_online_is_visible_to_everyone`).
    assert!(h.client(XA).is_empty());
    assert!(h.client(L14).is_empty());
}

// ---------------------------------------------------------------------------------------------
// XEP-0186 and XEP-0018 together

#[test]
fn invisible_command_clears_the_exceptions_and_hides_from_everyone() {
    let mut h = listings_until(L10);
    assert_eq!(h.shown(), ["rynok@foo.com"]);
    let outs = h.command(INVISIBLE);
    assert_eq!(
        briefs(&outs),
        ["server presence to=rynok@foo.com type=unavailable"]
    );
    assert_eq!(h.p.visibility().global, Mode::Invisible);
    assert!(h.p.visibility().exceptions.is_empty());
    assert!(h.client(L14).is_empty());
}

#[test]
fn visible_command_clears_the_exceptions() {
    let mut h = listings_until(L14);
    assert!(!h.p.visibility().exceptions.is_empty());
    assert!(h.command(VISIBLE).is_empty());
    assert_eq!(h.p.visibility().global, Mode::Visible);
    assert!(h.p.visibility().exceptions.is_empty());
    // The next presence is the server's to broadcast.
    assert_eq!(briefs(&h.client(L14)), ["server presence"]);
}

// ---------------------------------------------------------------------------------------------
// Roster pushes

#[test]
fn a_roster_push_reaches_the_client() {
    let mut h = H::with_roster(BOTH3);
    let xml = push("new@foo.com", "from");
    let outs = h.server(&xml);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].dir, Dir::Client);
    assert_eq!(outs[0].raw, Bytes::from(xml));
}

#[test]
fn a_new_subscriber_of_a_silent_session_gets_the_current_presence() {
    let mut h = H::with_roster(BOTH3);
    h.client(L12);
    h.client(XA);
    let xml = push("new@foo.com", "from");
    let outs = h.server(&xml);
    assert_eq!(
        briefs(&outs),
        ["server presence to=new@foo.com", "client iq type=set"]
    );
    assert_eq!(outs[0].show().as_deref(), Some("xa"));
    assert!(h.shown().contains(&"new@foo.com".to_owned()));
    // From to → both is a new subscriber too; both → from is not.
    let outs = h.server(&push("other@foo.com", "to"));
    assert_eq!(briefs(&outs), ["client iq type=set"]);
    let outs = h.server(&push("other@foo.com", "both"));
    assert_eq!(
        briefs(&outs),
        ["server presence to=other@foo.com", "client iq type=set"]
    );
    let outs = h.server(&push("other@foo.com", "from"));
    assert_eq!(briefs(&outs), ["client iq type=set"]);
}

#[test]
fn a_new_subscriber_who_is_hidden_from_sees_nothing() {
    let mut h = H::with_roster(BOTH3);
    h.client("<presence to='new@foo.com' type='invisible'/>");
    h.client(XA);
    assert_eq!(
        briefs(&h.server(&push("new@foo.com", "both"))),
        ["client iq type=set"]
    );
    let mut h = H::with_roster(BOTH3);
    h.command(INVISIBLE);
    h.client(XA);
    assert_eq!(
        briefs(&h.server(&push("new@foo.com", "both"))),
        ["client iq type=set"]
    );
}

#[test]
fn a_new_subscriber_of_a_broadcasting_session_is_the_servers_business() {
    let mut h = H::with_roster(BOTH3);
    h.client(XA);
    assert_eq!(
        briefs(&h.server(&push("new@foo.com", "from"))),
        ["client iq type=set"]
    );
}

#[test]
fn a_roster_push_from_another_entity_changes_nothing() {
    let mut h = H::with_roster(BOTH3);
    h.client(L12);
    h.client(XA);
    for from in ["evil@x", "joe@foo.com/r", "foo.com"] {
        let xml = format!(
            "<iq type='set' id='p1' from='{from}'><query xmlns='{NS_ROSTER}'>\
             <item jid='new@foo.com' subscription='both'/></query></iq>"
        );
        assert_eq!(briefs(&h.server(&xml)), ["client iq type=set"], "{from}");
    }
    // new@ is still no subscriber: the next fan-out skips it.
    assert_eq!(
        sorted(&h.client(L14)),
        [
            "server presence to=rynok@foo.com",
            "server presence to=stpeter@foo.com"
        ]
    );
    // A push from the account's bare JID is a push.
    let xml = format!(
        "<iq type='set' id='p2' from='joe@foo.com'><query xmlns='{NS_ROSTER}'>\
         <item jid='new@foo.com' subscription='both'/></query></iq>"
    );
    assert_eq!(h.server(&xml).len(), 2);
}

#[test]
fn a_roster_push_removing_a_contact_takes_it_out_of_the_fan_out() {
    let mut h = H::with_roster(BOTH3);
    h.client(L12);
    h.server(&push("rynok@foo.com", "remove"));
    assert_eq!(
        sorted(&h.client(XA)),
        ["server presence to=stpeter@foo.com"]
    );
}

#[test]
fn a_roster_answer_from_another_entity_is_not_the_roster() {
    let mut h = H::bound_without_roster();
    let id = h.roster_id.clone().unwrap();
    h.client(L12);
    // Someone who guessed the id: it must not become a subscriber in the proxy's view.
    let forged = format!(
        "<iq type='result' id='{id}' from='evil@x'><query xmlns='{NS_ROSTER}'>\
         <item jid='evil@x' subscription='both'/></query></iq>"
    );
    h.server(&forged);
    // The genuine answer follows; it is the roster view.
    let genuine = h.server(&roster_result(&id, BOTH3));
    assert!(
        genuine.is_empty(),
        "the genuine answer is consumed: {:?}",
        briefs(&genuine)
    );
    assert_eq!(
        sorted(&h.client(XA)),
        [
            "server presence to=rynok@foo.com",
            "server presence to=stpeter@foo.com"
        ],
        "evil@x is no subscriber"
    );
}

// ---------------------------------------------------------------------------------------------
// Fan-out and the roster view

#[test]
fn fan_out_waits_for_the_roster_view() {
    let mut h = H::bound_without_roster();
    h.client(L12);
    assert!(h.client(XA).is_empty(), "nobody known yet");
    let outs = h.roster_arrives(BOTH3);
    assert_eq!(
        sorted(&outs),
        [
            "server presence to=rynok@foo.com",
            "server presence to=stpeter@foo.com"
        ]
    );
    assert!(outs.iter().all(|o| o.show().as_deref() == Some("xa")));
}

#[test]
fn a_deferred_fan_out_is_dropped_when_the_presence_ends() {
    let mut h = H::bound_without_roster();
    h.client(L12);
    h.client(XA);
    h.client("<presence type='unavailable'/>");
    assert!(h.roster_arrives(BOTH3).is_empty());
}

#[test]
fn a_deferred_fan_out_follows_a_later_invisible_command() {
    let mut h = H::bound_without_roster();
    h.client(L12);
    h.client(XA);
    h.command(INVISIBLE);
    assert!(h.roster_arrives(BOTH3).is_empty());
}

#[test]
fn visible_session_without_roster_view_still_broadcasts_through_the_server() {
    let mut h = H::bound_without_roster();
    let outs = h.client(XA);
    assert_eq!(outs[0].raw, Bytes::from(XA));
    assert!(h.p.server_broadcasting());
    assert!(h.roster_arrives(BOTH3).is_empty());
}

#[test]
fn a_former_subscriber_of_a_silent_session_is_told_unavailable() {
    let mut h = H::with_roster(BOTH3);
    h.client(L12);
    h.client(XA);
    assert_eq!(h.shown(), ["rynok@foo.com", "stpeter@foo.com"]);
    // The user cancels stpeter's subscription: a server would tell stpeter `unavailable` from
    // the available session (RFC 6121 §3.2.3); this session's presence comes from the proxy.
    let outs = h.server(&push("stpeter@foo.com", "to"));
    assert_eq!(
        briefs(&outs),
        [
            "server presence to=stpeter@foo.com type=unavailable",
            "client iq type=set"
        ]
    );
    assert_eq!(h.shown(), ["rynok@foo.com"]);
}

#[test]
fn a_deferred_fan_out_is_dropped_when_the_server_takes_over() {
    let mut h = H::bound_without_roster();
    h.client(L12);
    h.client(XA);
    // Nobody is hidden any more: the server broadcasts the xa presence itself. (pgmillard also
    // gets a directed copy: without the roster view the proxy cannot know the server covers it.)
    let outs = h.client(&L12.replace("invisible", "visible"));
    assert_eq!(briefs(&outs[..1]), ["server presence"]);
    assert!(h.p.server_broadcasting());
    let outs = h.roster_arrives(BOTH3);
    assert!(
        outs.is_empty(),
        "the subscribers got the broadcast already: {:?}",
        sorted(&outs)
    );
}

// ---------------------------------------------------------------------------------------------
// Limits

#[test]
fn directed_presence_beyond_the_limit_is_refused() {
    let mut h = H::with_roster(BOTH3);
    h.command(INVISIBLE);
    for i in 0..MAX_SHOWN {
        h.client(&format!("<presence to='e{i}@bar.org'/>"));
    }
    let outs = h.client("<presence to='one-more@bar.org' id='m1'/>");
    assert_eq!(briefs(&outs), ["client presence type=error"]);
    let error = outs[0].el();
    assert_eq!(error.attr("id"), Some("m1"));
    assert!(
        error
            .child("error", NS_CLIENT)
            .and_then(|e| e.child("resource-constraint", "urn:ietf:params:xml:ns:xmpp-stanzas"))
            .is_some()
    );
    // One already remembered still gets updates; all of them are told at the end.
    assert_eq!(
        briefs(&h.client("<presence to='e7@bar.org'/>")),
        ["server presence to=e7@bar.org"]
    );
    let end = h.end();
    assert_eq!(end.len(), MAX_SHOWN);
    assert!(end.iter().all(|o| o.ty.as_deref() == Some("unavailable")));
}

#[test]
fn directed_invisible_beyond_the_limit_is_not_silently_ignored() {
    let mut h = H::with_roster(BOTH3);
    h.client(XA);
    for i in 0..MAX_EXCEPTIONS {
        h.client(&format!("<presence to='e{i}@bar.org' type='invisible'/>"));
    }
    let refused = h.client(L12);
    let told = briefs(&refused) == ["client presence type=error"];
    let fan_out = h.client(L14);
    let hidden = fan_out
        .iter()
        .all(|o| o.to.as_deref() != Some("pgmillard@foo.com"));
    assert!(
        told || hidden,
        "the client asked to be invisible to pgmillard: {:?}, then {:?}",
        briefs(&refused),
        sorted(&fan_out)
    );
}

// ---------------------------------------------------------------------------------------------
// XEP-0018 ended by a plain presence (Psi): after an undirected `invisible` with no per-contact
// exception since, an available presence without <show/> makes the session visible again.

/// What Psi 1.5 sends for "Invisible" and then for "Online".
const PSI_INVISIBLE: &str = "<presence type='invisible'><priority>5</priority>\
    <c xmlns='http://jabber.org/protocol/caps' node='https://psi-im.org' ver='x' hash='sha-1'/>\
    </presence>";
const PSI_ONLINE: &str = "<presence><priority>5</priority>\
    <c xmlns='http://jabber.org/protocol/caps' node='https://psi-im.org' ver='x' hash='sha-1'/>\
    </presence>";

#[test]
fn psi_invisible_from_the_start_then_online_is_visible_to_everyone() {
    let mut h = H::with_roster(BOTH3);
    assert!(h.client(PSI_INVISIBLE).is_empty());
    assert!(h.p.is_hidden());
    let outs = h.client(PSI_ONLINE);
    assert_eq!(
        briefs(&outs),
        ["server presence"],
        "the server broadcasts it"
    );
    assert_eq!(outs[0].raw, Bytes::from(PSI_ONLINE), "as Psi sent it");
    assert!(!h.p.is_hidden());
    assert!(h.p.server_broadcasting());
    assert_eq!(h.p.invisible_since(), None);
    // Invisible again, then online again: the same round trip.
    assert_eq!(
        briefs(&h.client(PSI_INVISIBLE)),
        ["server presence type=unavailable"]
    );
    assert!(h.p.is_hidden());
    assert_eq!(briefs(&h.client(PSI_ONLINE)), ["server presence"]);
    assert!(!h.p.is_hidden());
}

#[test]
fn status_changes_while_globally_invisible_stay_withheld() {
    let mut h = H::with_roster(BOTH3);
    h.client(PSI_ONLINE);
    h.client(PSI_INVISIBLE);
    for status in [
        XA,
        "<presence><show>away</show><status>Auto Status (idle)</status></presence>",
        "<presence><show>dnd</show></presence>",
        "<presence><show>chat</show><priority>5</priority></presence>",
        "<presence><show/></presence>",
    ] {
        assert!(h.client(status).is_empty(), "{status}");
        assert!(h.p.is_hidden(), "{status}");
        assert!(!h.p.server_broadcasting());
    }
    // "Online" (no <show/>) ends it, with that presence.
    let online = "<presence><status>back</status></presence>";
    let outs = h.client(online);
    assert_eq!(briefs(&outs), ["server presence"]);
    assert_eq!(outs[0].raw, Bytes::from(online));
    assert!(!h.p.is_hidden());
}

#[test]
fn a_per_contact_exception_keeps_undirected_presence_from_ending_invisibility() {
    // §4.1 with the exception lifted again: the client uses per-contact invisibility, so its
    // undirected presence never means "visible to all".
    let mut h = H::with_roster(BOTH3);
    h.client(L5);
    h.client(L6);
    h.client("<presence to='rynok@foo.com' type='invisible'/>");
    assert!(h.p.visibility().exceptions.is_empty());
    assert!(h.client(PSI_ONLINE).is_empty());
    assert!(h.client(L14).is_empty());
    assert!(h.p.is_hidden());
    assert!(h.shown().is_empty());
}

#[test]
fn directed_invisible_that_changes_nothing_keeps_the_plain_presence_rule() {
    // Psi tells its gateway contacts `invisible` after going invisible ("pass invis to
    // transports"): no exception is recorded, so "Online" still ends the invisibility.
    let mut h = H::with_roster(BOTH3);
    h.client(PSI_INVISIBLE);
    assert!(
        h.client("<presence to='icq.foo.com' type='invisible'><priority>5</priority></presence>")
            .is_empty()
    );
    assert_eq!(briefs(&h.client(PSI_ONLINE)), ["server presence"]);
    assert!(!h.p.is_hidden());
}

#[test]
fn xep0186_invisibility_is_not_ended_by_presence() {
    let mut h = H::with_roster(BOTH3);
    h.command(INVISIBLE);
    assert!(h.client(PSI_ONLINE).is_empty());
    assert!(h.p.is_hidden());
    // Also when it follows an XEP-0018 one: the last command decides.
    h.client(PSI_INVISIBLE);
    h.command(INVISIBLE);
    assert!(h.client(PSI_ONLINE).is_empty());
    assert!(h.p.is_hidden());
    // And an XEP-0018 `invisible` after XEP-0186 is ended by presence like any other.
    h.client(PSI_INVISIBLE);
    assert_eq!(briefs(&h.client(PSI_ONLINE)), ["server presence"]);
    assert!(!h.p.is_hidden());
}

#[test]
fn hiding_from_everyone_for_lack_of_room_is_not_ended_by_presence() {
    let mut h = H::with_roster(BOTH3);
    h.client(XA);
    for i in 0..MAX_EXCEPTIONS {
        h.client(&format!("<presence to='e{i}@bar.org' type='invisible'/>"));
    }
    // No room for pgmillard's exception: the proxy hides from everyone (fail closed)...
    let refused = h.client(L12);
    assert!(
        refused
            .iter()
            .any(|o| o.brief() == "client presence type=error")
    );
    assert_eq!(h.p.visibility().global, Mode::Invisible);
    // ...and a plain presence must not undo that.
    assert!(h.client(PSI_ONLINE).is_empty());
    assert!(h.p.is_hidden());
}

#[test]
fn slixmpp_invisible_and_visible_are_understood() {
    // What slixmpp 1.8's XEP-0186 plugin sends: no `to`, no `probe`, `<visible/>` in a namespace
    // of its own.
    let mut h = H::with_roster(BOTH3);
    h.client(PSI_ONLINE);
    let outs = h.command("<iq type='set' id='s1'><invisible xmlns='urn:xmpp:invisible:0'/></iq>");
    assert_eq!(briefs(&outs), ["server presence type=unavailable"]);
    assert!(h.p.is_hidden());
    assert!(
        h.command("<iq type='set' id='s2'><visible xmlns='urn:xmpp:visible:0'/></iq>")
            .is_empty()
    );
    assert!(!h.p.is_hidden());
    // Anything else in that namespace is refused and changes nothing.
    h.command(INVISIBLE);
    let outs = h.client("<iq type='set' id='s3'><invisible xmlns='urn:xmpp:visible:0'/></iq>");
    assert_eq!(briefs(&outs), ["client iq type=error"]);
    assert!(outs[0].text().contains("bad-request"), "{}", outs[0].text());
    assert!(h.p.is_hidden());
    let outs = h.client("<iq type='set' id='s4'><query xmlns='urn:xmpp:visible:0'/></iq>");
    assert_eq!(briefs(&outs), ["client iq type=error"]);
}

// ---------------------------------------------------------------------------------------------
// Review findings: self-addressed presence, trailing dots, presence before bind, detach after a
// presence error.

const BOTH_ST_PG: &[(&str, &str)] = &[("stpeter@foo.com", "both"), ("pgmillard@foo.com", "both")];

#[test]
fn presence_to_ones_own_bare_jid_is_undirected() {
    let mut h = H::with_roster(BOTH_ST_PG);
    h.command(INVISIBLE);
    // The server would broadcast it: the proxy treats it as undirected, so it is withheld.
    assert!(
        h.client("<presence to='joe@foo.com'><status>self</status></presence>")
            .is_empty()
    );
    assert!(h.client("<presence to='JOE@foo.com.'/>").is_empty());
    assert!(
        h.client("<presence type='unavailable' to='joe@foo.com'/>")
            .is_empty()
    );
    assert!(h.shown().is_empty());
    // XEP-0018 "visible to myself" is "visible": the server gets the presence, once.
    let outs = h.client("<presence type='visible' to='joe@foo.com'/>");
    assert!(outs.iter().all(|o| o.to.is_none()), "{:?}", briefs(&outs));
}

#[test]
fn a_trailing_dot_names_the_same_contact() {
    let mut h = H::with_roster(BOTH_ST_PG);
    h.client("<presence to='stpeter@foo.com.' type='invisible'/>");
    let outs = h.client(XA);
    assert!(
        outs.iter()
            .all(|o| o.to.as_deref() != Some("stpeter@foo.com")),
        "stpeter is hidden: {:?}",
        sorted(&outs)
    );
    assert!(
        outs.iter()
            .any(|o| o.to.as_deref() == Some("pgmillard@foo.com"))
    );
}

#[test]
fn no_presence_before_resource_binding() {
    let mut h = H::fresh();
    let outs = h.client("<presence/>");
    assert_eq!(briefs(&outs), ["client presence type=error"]);
}

#[test]
fn detach_tells_a_stranger_the_server_forgot_after_a_presence_error() {
    let mut h = H::with_roster(BOTH_ST_PG);
    h.command(INVISIBLE);
    h.client("<presence to='stranger@bar.org'/>");
    h.client("<presence to='other@bar.org'/>");
    h.client("<presence type='error' to='stranger@bar.org'/>");
    let mut out = Vec::new();
    h.p.detach(&mut out);
    let outs = check(out);
    // The server still tells other@bar.org itself; it forgot stranger@bar.org.
    assert_eq!(
        briefs(&outs),
        ["server presence to=stranger@bar.org type=unavailable"]
    );
    let mut out = Vec::new();
    h.p.resumed(&mut out);
    assert_eq!(briefs(&check(out)), ["server presence to=stranger@bar.org"]);
}

// ---------------------------------------------------------------------------------------------
// Reports: what the shell counts

use super::report::{Command, Protocol};

/// The reports made since the last call, as (report, count) pairs in slot order.
fn reports(h: &mut H) -> Vec<(Report, u64)> {
    h.p.take_reports().into_iter().collect()
}

fn command_report(protocol: Protocol, command: Command) -> Report {
    Report::InvisibilityCommand { protocol, command }
}

#[test]
fn an_invisible_or_visible_command_reports_one_command() {
    let mut h = H::with_roster(BOTH3);
    h.client("<presence/>");
    assert!(
        reports(&mut h).is_empty(),
        "a visible presence is not counted"
    );
    h.command(INVISIBLE);
    assert_eq!(
        reports(&mut h),
        [(command_report(Protocol::Xep0186, Command::Invisible), 1)]
    );
    assert!(
        reports(&mut h).is_empty(),
        "taking the reports empties them"
    );
    h.command(VISIBLE);
    assert_eq!(
        reports(&mut h),
        [(command_report(Protocol::Xep0186, Command::Visible), 1)]
    );
}

#[test]
fn a_bad_invisible_command_reports_nothing() {
    let mut h = H::with_roster(BOTH3);
    let outs = h.client(
        "<iq type='set' id='inv1'><invisible xmlns='urn:xmpp:invisible:1' probe='yes'/></iq>",
    );
    assert_eq!(briefs(&outs), ["client iq type=error"]);
    assert!(reports(&mut h).is_empty());
}

#[test]
fn xep0018_presence_reports_its_commands() {
    let mut h = H::with_roster(BOTH3);
    h.client("<presence type='invisible'/>");
    h.client("<presence type='visible' to='stpeter@foo.com'/>");
    assert_eq!(
        reports(&mut h),
        [
            (command_report(Protocol::Xep0018, Command::Invisible), 1),
            (command_report(Protocol::Xep0018, Command::Visible), 1)
        ]
    );
    h.client("<presence type='visible'/>");
    assert_eq!(
        reports(&mut h),
        [(command_report(Protocol::Xep0018, Command::Visible), 1)]
    );
}

#[test]
fn a_withheld_presence_reports_presence_suppressed() {
    let mut h = H::with_roster(BOTH3);
    h.command(INVISIBLE);
    reports(&mut h);
    h.client(XA);
    assert_eq!(reports(&mut h), [(Report::PresenceSuppressed, 1)]);
    // A silent session's undirected unavailable goes to nobody's server broadcast either.
    h.client("<presence type='unavailable'/>");
    assert_eq!(reports(&mut h), [(Report::PresenceSuppressed, 1)]);
}

#[test]
fn a_refused_presence_reports_presence_suppressed() {
    let mut h = H::with_roster(BOTH3);
    let outs = h.client("<presence type='bogus'/>");
    assert_eq!(briefs(&outs), ["client presence type=error"]);
    assert_eq!(reports(&mut h), [(Report::PresenceSuppressed, 1)]);
}

#[test]
fn messages_and_delivered_presence_report_nothing() {
    let mut h = H::with_roster(BOTH3);
    h.client("<message to='stpeter@foo.com'><body>hi</body></message>");
    h.server("<message from='stpeter@foo.com/x'><body>hi</body></message>");
    h.client("<presence/>");
    h.client("<presence to='stranger@bar.org'/>");
    h.client("<presence type='unavailable'/>");
    h.end();
    assert!(reports(&mut h).is_empty());
}
