//! The reference model of the invisibility policy, shared by the property test
//! (`tests/policy_model.rs`) and the fuzz target (`fuzz/fuzz_targets/policy.rs`). It depends on
//! neither: a run is a roster, a sequence of [`Event`]s and the [`Strict`] checks, and returns the
//! first broken rule as a [`Failure`].
//!
//! A roster (c0..c3@x, each absent or `none`/`to`/`from`/`both`) and a sequence of client actions
//! (presence, XEP-0018, XEP-0186), roster pushes and the arrival (or failure) of the proxy's
//! roster view drive one [`Policy`]. Its `ToServer` output is played into a small model of an
//! unmodified XMPP server (what SERVERS.md measured), which tracks, for every contact, which of
//! its JIDs currently see the resource available. After every event:
//!
//! 1. nobody sees the resource unless the reference visibility lets it: the contact may see
//!    (global mode and XEP-0018 exceptions; an undirected available presence without `<show/>`
//!    ends an undirected XEP-0018 `invisible` with no exception since), or the JID was shown the resource by the client
//!    itself (directed available, XEP-0018 directed `visible`) since it was last hidden from;
//! 2. no output (to either side) is a presence of type `invisible` or `visible`;
//! 3. the server never gets an undirected `unavailable` while it does not hold the session
//!    available (it would broadcast it to every subscriber: a leak);
//! 5. the policy's visibility agrees with the reference, `server_broadcasting()` agrees with the
//!    server, and the server never holds the session available while anyone is hidden;
//! 6. probes go only to `to`/`both` contacts, after an XEP-0186 `probe='true'`;
//! 7. after the client's undirected `unavailable`, nobody sees the resource; after a directed
//!    one, its target does not (to a bare JID: none of its resources).
//!
//! And after `session_end` (only directed `unavailable`) and the server closing the session:
//!
//! 4. nobody sees the resource.
//!
//! Two stricter checks ([`Strict`]) can be turned on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use xmpp_veil::policy::{Action, Mode, Policy};
use xmpp_veil::xml::{ElementKind, StartTag};

/// A broken rule: what happened, and where in this file it was checked.
pub type Failure = String;

/// `prop_assert!` without proptest: fail the run with the message and the place.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!("{} at {}:{}", format_args!($($fmt)+), file!(), line!()));
        }
    };
}

/// `prop_assert_eq!` without proptest.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {{
        let (left, right) = (&$left, &$right);
        ensure!(
            left == right,
            "assertion failed: `(left == right)`: {}\n  left: `{:?}`,\n right: `{:?}`",
            format_args!($($fmt)+),
            left,
            right
        );
    }};
}

const DOMAIN: &str = "x";
pub const CONTACTS: [&str; 4] = ["c0@x", "c1@x", "c2@x", "c3@x"];
/// Every entity the client may address: the contacts, a stranger, one full JID.
pub const TARGETS: [&str; 6] = ["c0@x", "c1@x", "c2@x", "c3@x", "n0@x", "c0@x/r"];

/// A contact's subscription in the roster; `Absent`: not in the roster at all.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Absent,
    None,
    To,
    From,
    Both,
}

impl Sub {
    fn sees_user(self) -> bool {
        matches!(self, Sub::From | Sub::Both)
    }

    fn attr(self) -> &'static str {
        match self {
            Sub::Absent => "remove",
            Sub::None => "none",
            Sub::To => "to",
            Sub::From => "from",
            Sub::Both => "both",
        }
    }
}

impl fmt::Debug for Sub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sub::Absent => "absent",
            s => s.attr(),
        })
    }
}

/// An index into [`TARGETS`], shown as the JID.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Target(pub usize);

impl Target {
    pub fn jid(self) -> &'static str {
        TARGETS[self.0]
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jid())
    }
}

/// An index into [`CONTACTS`], shown as the JID.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Contact(pub usize);

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CONTACTS[self.0])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Undirected available presence, with this `<show/>` if any.
    Available(Option<&'static str>),
    Unavailable,
    DirectedAvailable(Target),
    DirectedUnavailable(Target),
    /// XEP-0018 `<presence type='invisible'/>`.
    Invisible18,
    /// XEP-0018 `<presence type='visible'/>`.
    Visible18,
    InvisibleTo18(Target),
    VisibleTo18(Target),
    /// XEP-0186 invisible command, in `urn:xmpp:invisible:0` if `v0`.
    Invisible186 {
        probe: bool,
        v0: bool,
    },
    Visible186,
    /// The answer to the proxy's roster query (the server's roster at that moment).
    RosterArrives,
    /// The proxy's roster query fails (an IQ error instead of the roster).
    RosterFails,
    /// The server changes a contact's subscription and pushes it.
    RosterPush(Contact, Sub),
}

fn bare_of(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// An unmodified server, as far as the resource's presence goes.
#[derive(Debug, Default)]
struct Server {
    roster: BTreeMap<String, Sub>,
    /// It holds the session available (got undirected available, no unavailable since).
    available: bool,
    /// Non-roster entities that got directed available presence (it tells them `unavailable`).
    tracked: BTreeSet<String>,
    /// Per bare JID, the JIDs currently seeing the resource available.
    views: BTreeMap<String, BTreeSet<String>>,
}

impl Server {
    fn sub(&self, bare: &str) -> Sub {
        self.roster.get(bare).copied().unwrap_or(Sub::Absent)
    }

    fn subscribers(&self) -> Vec<String> {
        self.roster
            .iter()
            .filter(|(_, s)| s.sees_user())
            .map(|(j, _)| j.clone())
            .collect()
    }

    fn show(&mut self, jid: &str) {
        self.views
            .entry(bare_of(jid).to_owned())
            .or_default()
            .insert(jid.to_owned());
    }

    /// `unavailable` to `jid`: to a bare JID it reaches every resource.
    fn hide(&mut self, jid: &str) {
        let bare = bare_of(jid);
        if let Some(view) = self.views.get_mut(bare) {
            if bare == jid {
                view.clear();
            } else {
                view.remove(jid);
            }
        }
    }

    fn broadcast_unavailable(&mut self) {
        for s in self.subscribers() {
            self.hide(&s);
        }
        for t in std::mem::take(&mut self.tracked) {
            self.hide(&t);
        }
    }

    /// One stanza from the proxy.
    fn receive(&mut self, raw: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(raw);
        let tag = StartTag::parse(raw).map_err(|e| format!("unparsable {text}: {e}"))?;
        if tag.name != "presence" {
            return Ok(());
        }
        match (tag.attr("to"), tag.attr("type")) {
            (_, Some("invisible" | "visible")) => {
                return Err(format!("(2) XEP-0018 presence reached the server: {text}"));
            }
            (None, None) => {
                self.available = true;
                for s in self.subscribers() {
                    self.show(&s);
                }
            }
            (None, Some("unavailable")) => {
                if !self.available {
                    return Err(format!(
                        "(3) undirected unavailable while the server does not hold the \
                         session available (it broadcasts it): {text}"
                    ));
                }
                self.available = false;
                self.broadcast_unavailable();
            }
            (Some(to), None) => {
                if self.sub(bare_of(to)) == Sub::Absent {
                    self.tracked.insert(to.to_owned());
                }
                self.show(to);
            }
            (Some(to), Some("unavailable")) => {
                if bare_of(to) == to {
                    self.tracked.retain(|t| bare_of(t) != to);
                } else {
                    self.tracked.remove(to);
                }
                self.hide(to);
            }
            // Probes, subscription management: nobody sees anything.
            _ => {}
        }
        Ok(())
    }

    /// The subscription of `contact` changes (RFC 6121 §3: a new subscriber gets the presence of
    /// the available session, a former one gets `unavailable`).
    fn set_sub(&mut self, contact: &str, sub: Sub) {
        let before = self.sub(contact);
        if sub == Sub::Absent {
            self.roster.remove(contact);
        } else {
            self.roster.insert(contact.to_owned(), sub);
        }
        if self.available && before.sees_user() != sub.sees_user() {
            if sub.sees_user() {
                self.show(contact);
            } else {
                self.hide(contact);
            }
        }
    }

    /// The proxy closed the upstream stream.
    fn close(&mut self) {
        if self.available {
            self.available = false;
            self.broadcast_unavailable();
        } else {
            for t in std::mem::take(&mut self.tracked) {
                self.hide(&t);
            }
        }
    }

    fn seeing(&self) -> Vec<&String> {
        self.views.values().flatten().collect()
    }

    fn roster_result(&self, id: &str) -> String {
        let items: String = self
            .roster
            .iter()
            .map(|(j, s)| format!("<item jid='{j}' subscription='{}'/>", s.attr()))
            .collect();
        format!("<iq type='result' id='{id}'><query xmlns='jabber:iq:roster'>{items}</query></iq>")
    }
}

/// Who may see the resource, from the client's commands alone.
#[derive(Debug)]
struct Reference {
    global: Mode,
    exceptions: BTreeMap<String, Mode>,
    /// JIDs the client showed the resource to since they were last hidden from: targets of its
    /// directed available presence, and (as bare JIDs) of its XEP-0018 directed `visible`.
    explicit: BTreeSet<String>,
    /// The global invisibility comes from an undirected XEP-0018 `invisible`, and no directed
    /// `invisible`/`visible` differing from the global mode came since: an undirected available
    /// presence without `<show/>` ends it (Psi's way back online).
    plain_xep0018: bool,
}

impl Reference {
    fn may_see(&self, bare: &str) -> bool {
        *self.exceptions.get(bare).unwrap_or(&self.global) == Mode::Visible
    }

    fn allows(&self, jid: &str) -> bool {
        self.may_see(bare_of(jid)) || self.explicit.contains(jid)
    }

    fn apply(&mut self, e: &Event) {
        match e {
            Event::DirectedAvailable(t) => {
                self.explicit.insert(t.jid().to_owned());
            }
            Event::Available(None) if self.plain_xep0018 => {
                self.global = Mode::Visible;
                self.exceptions.clear();
                self.plain_xep0018 = false;
            }
            Event::Invisible18 | Event::Invisible186 { .. } => {
                self.global = Mode::Invisible;
                self.exceptions.clear();
                self.explicit.clear();
                self.plain_xep0018 = *e == Event::Invisible18;
            }
            Event::Visible18 | Event::Visible186 => {
                self.global = Mode::Visible;
                self.exceptions.clear();
                self.plain_xep0018 = false;
            }
            Event::InvisibleTo18(t) => {
                let bare = bare_of(t.jid());
                self.plain_xep0018 &= self.global == Mode::Invisible;
                self.exceptions.insert(bare.to_owned(), Mode::Invisible);
                self.explicit.retain(|j| bare_of(j) != bare);
            }
            Event::VisibleTo18(t) => {
                let bare = bare_of(t.jid());
                self.plain_xep0018 &= self.global == Mode::Visible;
                self.exceptions.insert(bare.to_owned(), Mode::Visible);
                self.explicit.insert(bare.to_owned());
            }
            _ => {}
        }
    }
}

fn kind(xml: &str) -> ElementKind {
    if xml.starts_with("<presence") {
        ElementKind::Presence
    } else {
        ElementKind::Iq
    }
}

/// Checks beyond (1)–(7), each run by a test of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Strict {
    /// (1b) Apart from the JIDs the client showed the resource itself, only current subscribers
    /// see it: a server tells a contact `unavailable` when its subscription to the user's
    /// presence ends (RFC 6121 §3.2.3), and a silent session must get the same.
    pub former_subscribers: bool,
    /// (6b) `probe='false'` cancels the probes an earlier `probe='true'` asked for.
    pub probe_false_cancels: bool,
}

impl Strict {
    pub const ALL: Strict = Strict {
        former_subscribers: true,
        probe_false_cancels: true,
    };
}

struct World {
    strict: Strict,
    /// The client asked for probes (XEP-0186 `probe='true'`) and has not taken it back.
    probes_wanted: bool,
    policy: Policy,
    server: Server,
    reference: Reference,
    roster_id: Option<String>,
}

impl World {
    fn new(roster: [Sub; 4], strict: Strict) -> Result<World, Failure> {
        let mut server = Server::default();
        for (c, s) in CONTACTS.iter().zip(roster) {
            if s != Sub::Absent {
                server.roster.insert((*c).to_owned(), s);
            }
        }
        let mut w = World {
            strict,
            probes_wanted: false,
            policy: Policy::new(DOMAIN, "veil1"),
            server,
            reference: Reference {
                global: Mode::Visible,
                exceptions: BTreeMap::new(),
                explicit: BTreeSet::new(),
                plain_xep0018: false,
            },
            roster_id: None,
        };
        w.client(
            "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>r</resource></bind></iq>",
        )?;
        let outs = w.server_stanza(
            "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <jid>joe@x/r</jid></bind></iq>",
        )?;
        for o in outs {
            if let Action::ToServer(raw) = o {
                let tag = StartTag::parse(&raw).expect("parsable");
                if tag.name == "iq" && tag.attr("type") == Some("get") {
                    w.roster_id = tag.attr("id").map(str::to_owned);
                }
            }
        }
        ensure!(w.roster_id.is_some(), "no roster query after binding");
        Ok(w)
    }

    /// Plays the policy's output: `ToServer` into the server model; checks both directions.
    fn play(&mut self, out: &[Action]) -> Result<(), Failure> {
        for a in out {
            match a {
                Action::ToServer(raw) => {
                    self.check_probe(raw)?;
                    self.server.receive(raw)?;
                }
                Action::ToClient(raw) => {
                    let tag = StartTag::parse(raw).map_err(|e| e.to_string())?;
                    ensure!(
                        !(tag.name == "presence"
                            && matches!(tag.attr("type"), Some("invisible" | "visible"))),
                        "(2) XEP-0018 presence reached the client: {}",
                        String::from_utf8_lossy(raw)
                    );
                }
            }
        }
        Ok(())
    }

    /// (6) Probes go only to contacts whose presence the user receives, and only while the
    /// client wants them.
    fn check_probe(&self, raw: &[u8]) -> Result<(), Failure> {
        let tag = StartTag::parse(raw).map_err(|e| e.to_string())?;
        if tag.name != "presence" || tag.attr("type") != Some("probe") {
            return Ok(());
        }
        let to = tag.attr("to").unwrap_or("");
        ensure!(
            matches!(self.server.sub(to), Sub::To | Sub::Both),
            "(6) probe to {to}, subscription {:?}",
            self.server.sub(to)
        );
        ensure!(self.probes_wanted, "(6) probe to {to} nobody asked for");
        Ok(())
    }

    fn client(&mut self, xml: &str) -> Result<Vec<Action>, Failure> {
        let mut out = Vec::new();
        self.policy
            .from_client(&Bytes::from(xml.to_owned()), kind(xml), 1_000, &mut out)
            .map_err(|v| format!("violation {v:?} for {xml}"))?;
        self.play(&out)?;
        Ok(out)
    }

    fn server_stanza(&mut self, xml: &str) -> Result<Vec<Action>, Failure> {
        let mut out = Vec::new();
        self.policy
            .from_server(&Bytes::from(xml.to_owned()), kind(xml), &mut out)
            .map_err(|v| format!("violation {v:?} for {xml}"))?;
        self.play(&out)?;
        Ok(out)
    }

    fn event(&mut self, e: &Event) -> Result<(), Failure> {
        self.reference.apply(e);
        match e {
            Event::Invisible186 { probe: true, .. } => self.probes_wanted = true,
            Event::Invisible186 { probe: false, .. } if self.strict.probe_false_cancels => {
                self.probes_wanted = false;
            }
            Event::Visible186 => self.probes_wanted = false,
            _ => {}
        }
        match e {
            Event::Available(None) => {
                self.client("<presence/>")?;
            }
            Event::Available(Some(show)) => {
                self.client(&format!(
                    "<presence><show>{show}</show><status>s</status></presence>"
                ))?;
            }
            Event::Unavailable => {
                self.client("<presence type='unavailable'/>")?;
                let seeing = self.server.seeing();
                ensure!(
                    seeing.is_empty(),
                    "(7) still seeing the resource after its unavailable: {:?}",
                    seeing
                );
            }
            Event::DirectedAvailable(t) => {
                self.client(&format!("<presence to='{}'/>", t.jid()))?;
            }
            Event::DirectedUnavailable(t) => {
                self.client(&format!("<presence to='{}' type='unavailable'/>", t.jid()))?;
                let to = t.jid();
                let seeing = self.server.seeing();
                ensure!(
                    !seeing.iter().any(|j| *j == to || bare_of(j) == to),
                    "(7) {to} still sees the resource after its unavailable: {:?}",
                    seeing
                );
            }
            Event::Invisible18 => {
                self.client("<presence type='invisible'/>")?;
            }
            Event::Visible18 => {
                self.client("<presence type='visible'/>")?;
            }
            Event::InvisibleTo18(t) => {
                self.client(&format!("<presence to='{}' type='invisible'/>", t.jid()))?;
            }
            Event::VisibleTo18(t) => {
                self.client(&format!("<presence to='{}' type='visible'/>", t.jid()))?;
            }
            Event::Invisible186 { probe, v0 } => {
                let ns = if *v0 { 0 } else { 1 };
                let out = self.client(&format!(
                    "<iq type='set' id='c1'><invisible xmlns='urn:xmpp:invisible:{ns}' \
                     probe='{probe}'/></iq>"
                ))?;
                answered(&out)?;
            }
            Event::Visible186 => {
                let out = self.client(
                    "<iq type='set' id='c1'><visible xmlns='urn:xmpp:invisible:1'/></iq>",
                )?;
                answered(&out)?;
            }
            Event::RosterArrives => {
                if let Some(id) = self.roster_id.take() {
                    let out = self.server_stanza(&self.server.roster_result(&id))?;
                    ensure!(
                        out.iter().all(|a| matches!(a, Action::ToServer(_))),
                        "the roster answer reached the client"
                    );
                }
            }
            Event::RosterFails => {
                if let Some(id) = self.roster_id.take() {
                    let out = self.server_stanza(&format!(
                        "<iq type='error' id='{id}'><error type='cancel'>\
                         <internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
                         </error></iq>"
                    ))?;
                    ensure!(
                        out.iter().all(|a| matches!(a, Action::ToServer(_))),
                        "the roster error reached the client"
                    );
                }
            }
            Event::RosterPush(c, s) => {
                let contact = CONTACTS[c.0];
                self.server.set_sub(contact, *s);
                self.server_stanza(&format!(
                    "<iq type='set' id='push'><query xmlns='jabber:iq:roster'>\
                     <item jid='{contact}' subscription='{}'/></query></iq>",
                    s.attr()
                ))?;
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), Failure> {
        for jid in self.server.seeing() {
            ensure!(
                self.reference.allows(jid),
                "(1) {jid} sees the resource; reference {:?}",
                self.reference
            );
            let bare = bare_of(jid);
            ensure!(
                !self.strict.former_subscribers
                    || self.reference.explicit.contains(jid)
                    || self.server.sub(bare).sees_user(),
                "(1b) {jid} sees the resource but is no subscriber ({:?}) and was not shown it \
                 by the client; reference {:?}",
                self.server.sub(bare),
                self.reference
            );
        }
        let vis = self.policy.visibility();
        for t in TARGETS {
            let bare = bare_of(t);
            ensure_eq!(
                vis.may_see(&jid::BareJid::new(bare).expect("JID")),
                self.reference.may_see(bare),
                "(5) the policy's visibility for {} differs from the reference {:?}",
                bare,
                self.reference
            );
        }
        ensure!(
            !(self.policy.is_hidden() && self.server.available),
            "(5) the server holds the session available while someone is hidden"
        );
        ensure_eq!(
            self.policy.server_broadcasting(),
            self.server.available,
            "(5) server_broadcasting() disagrees with the server"
        );
        Ok(())
    }

    fn end(&mut self) -> Result<(), Failure> {
        let mut out = Vec::new();
        self.policy.session_end(&mut out);
        for a in &out {
            if let Action::ToServer(raw) = a {
                let tag = StartTag::parse(raw).map_err(|e| e.to_string())?;
                ensure!(
                    tag.name == "presence"
                        && tag.attr("to").is_some()
                        && tag.attr("type") == Some("unavailable"),
                    "session_end sends only directed unavailable: {}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
        self.play(&out)?;
        self.server.close();
        let seeing = self.server.seeing();
        ensure!(
            seeing.is_empty(),
            "(4) still seeing the resource after the session: {:?}",
            seeing
        );
        Ok(())
    }
}

/// An XEP-0186 command gets an IQ result.
fn answered(out: &[Action]) -> Result<(), Failure> {
    let ok = out.iter().any(|a| match a {
        Action::ToClient(raw) => {
            StartTag::parse(raw).is_ok_and(|t| t.name == "iq" && t.attr("type") == Some("result"))
        }
        Action::ToServer(_) => false,
    });
    ensure!(ok, "the command was not answered");
    Ok(())
}

/// One run: bind, the events in order (checking after each), then the end of the session.
pub fn run(roster: [Sub; 4], events: &[Event], strict: Strict) -> Result<(), Failure> {
    let mut w = World::new(roster, strict)?;
    w.check()?;
    for e in events {
        w.event(e)?;
    }
    w.end()
}
