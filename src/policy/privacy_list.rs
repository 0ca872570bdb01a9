//! Strategy "privacy list" (XEP-0016): the server keeps the session *available* (it routes
//! bare-JID messages to it and sends it its contacts' presence), and an active privacy list of
//! this session alone denies `presence-out` to everyone the user hides from.
//!
//! The list is a pure function of the session's state ([`desired`]):
//! - the user's XEP-0191 blocks first (on ejabberd blocks *are* the default list, which an
//!   active list replaces, so they are copied in);
//! - `allow presence-out` for every entity the client showed itself to by directed presence and
//!   who would otherwise be denied (XEP-0186 rule 4), and for XEP-0018 "visible" exceptions;
//! - then, globally invisible: `deny presence-out` for everyone else; visible with exceptions:
//!   `deny presence-out` for each hidden contact (everyone else falls through to allow).
//!
//! While nobody is hidden, no list is active and the server broadcasts as usual.
//!
//! Order is the whole game (fail closed):
//! - what must reach a contact before it is hidden (its `unavailable`) is written *before* the
//!   list change, in the same write, so no other stanza of the session comes between;
//! - what may only go out once the list is in force (available presence, a directed presence
//!   that needs an allow item) waits for the server's answer to every privacy IQ ([`Pending`]);
//!   the client's own stanzas wait too ([`super::Policy::awaits_server`]);
//! - going invisible from a broadcast presence goes through `unavailable` (offline to probes
//!   and contacts), so no probe is ever answered with presence in between;
//! - any error from the server for a privacy IQ makes this session silent for good
//!   ([`fail`]), which never needed the list.

use std::collections::BTreeSet;

use bytes::Bytes;
use jid::Jid;

use super::report::Report;
use super::{Action, Mode, Policy, presence};
use crate::ns;
use crate::xml::Element;
use crate::xml::element::escape;

/// Names of the proxy's lists start with this; no client would choose it.
pub const LIST_PREFIX: &str = "xmpp-veil-invisible-";

/// The configured strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A privacy list where the server advertises `jabber:iq:privacy`, silent otherwise.
    Auto,
    /// A privacy list; silent if the server refuses it.
    PrivacyList,
    /// The silent session.
    Silent,
}

/// What a session uses, as it learns it.
#[derive(Debug)]
pub(super) enum State {
    /// The silent session (configured, unsupported by the server, or fallen back).
    Silent,
    /// Configured `auto`, not bound yet: nothing to ask the server yet.
    Undecided,
    /// `auto`: the proxy asked the server's disco#info whether it has privacy lists.
    Asking { id: String },
    /// Privacy lists are in use for this session.
    List(List),
    /// A privacy IQ failed: the session is silent, and the server may still hold a list of it.
    Failed,
    /// The session ended: its list is gone (or going), nothing follows.
    Ended,
}

/// The session's own list, as the server has it (or will once the pending IQs are answered).
#[derive(Debug)]
pub(super) struct List {
    name: String,
    /// The items last sent; `None` while the server has no such list.
    items: Option<Vec<Item>>,
    active: bool,
    /// The user's XEP-0191 blocklist, copied into the list.
    blocks: BTreeSet<String>,
    /// The proxy's blocklist query, while unanswered.
    blocklist_id: Option<String>,
    pending: Option<Pending>,
    /// Sequence number of the proxy's privacy IQs.
    seq: u32,
    /// Pushes about this list that the proxy's own list updates will bring (the server pushes
    /// every change to every resource); one beyond them is a change made elsewhere.
    pushes_expected: u32,
}

/// Privacy IQs in flight and what waits for all of them to succeed.
#[derive(Debug, Default)]
struct Pending {
    ids: Vec<String>,
    then: Vec<Then>,
    /// Stanzas written between two list updates: blocked if an update failed, sent again then.
    sent_between: Vec<Then>,
}

/// A stanza that waits for the list.
#[derive(Debug)]
pub(super) enum Then {
    /// The session's undirected presence to the server (it broadcasts it through the list).
    Available(Bytes),
    /// A directed presence (the client's, or the proxy's) to this entity.
    Directed(Bytes, Jid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// A blocked JID: everything denied (XEP-0191 semantics).
    Block(String),
    Allow(String),
    Deny(String),
    /// Fall-through: presence-out denied to anyone not allowed before.
    DenyAll,
}

impl State {
    pub(super) fn new(strategy: Strategy) -> State {
        match strategy {
            Strategy::Silent => State::Silent,
            Strategy::Auto | Strategy::PrivacyList => State::Undecided,
        }
    }
}

impl Policy {
    /// True while the proxy waits for the server's answer before it may handle the client's
    /// next stanza (which may depend on the privacy list being in force).
    pub fn awaits_server(&self) -> bool {
        match &self.list {
            State::Asking { .. } => true,
            State::List(l) => l.pending.is_some() || l.blocklist_id.is_some(),
            State::Silent | State::Undecided | State::Failed | State::Ended => false,
        }
    }

    /// `"privacy_list"` or `"silent"`: how this session hides (the shell's gauge label).
    pub fn strategy_in_use(&self) -> &'static str {
        match self.list {
            State::List(_) => "privacy_list",
            _ => "silent",
        }
    }

    /// This session hides through its privacy list.
    pub(super) fn uses_list(&self) -> bool {
        matches!(self.list, State::List(_))
    }

    /// The name of this session's list, while it uses one.
    pub fn privacy_list_name(&self) -> Option<&str> {
        match &self.list {
            State::List(l) => Some(&l.name),
            _ => None,
        }
    }
}

/// After resource binding: `auto` asks the server whether it has privacy lists; a forced
/// privacy list starts at once.
pub(super) fn bound(p: &mut Policy, strategy: Strategy, out: &mut Vec<Action>) {
    if !matches!(p.list, State::Undecided) {
        return;
    }
    match strategy {
        Strategy::Silent => p.list = State::Silent,
        Strategy::PrivacyList => start(p, out),
        Strategy::Auto => {
            let id = p.next_id("pl-disco");
            out.push(Action::ToServer(Bytes::from(format!(
                "<iq type='get' id='{}' to='{}'><query xmlns='{}'/></iq>",
                escape(&id),
                escape(&p.domain),
                ns::DISCO_INFO
            ))));
            p.list = State::Asking { id };
        }
    }
}

fn start(p: &mut Policy, out: &mut Vec<Action>) {
    let blocklist_id = p.next_id("pl-blocks");
    out.push(Action::ToServer(Bytes::from(format!(
        "<iq type='get' id='{}'><blocklist xmlns='{}'/></iq>",
        escape(&blocklist_id),
        ns::BLOCKING
    ))));
    tracing::debug!("invisibility strategy: privacy list");
    p.list = State::List(List {
        name: format!("{LIST_PREFIX}{}", p.id_prefix),
        items: None,
        active: false,
        blocks: BTreeSet::new(),
        blocklist_id: Some(blocklist_id),
        pending: None,
        seq: 0,
        pushes_expected: 0,
    });
}

/// An IQ result or error from the user's own account: the proxy's own privacy traffic is
/// consumed here (true), anything else is not ours (false).
pub(super) fn server_iq(p: &mut Policy, iq: &Element, out: &mut Vec<Action>) -> bool {
    let id = iq.attr("id").unwrap_or("");
    let ok = iq.attr("type") == Some("result");
    if let State::Asking { id: asked } = &p.list {
        if asked != id {
            return false;
        }
        let has = iq.child("query", ns::DISCO_INFO).is_some_and(|q| {
            q.elements()
                .any(|f| f.name == "feature" && f.attr("var") == Some(ns::PRIVACY))
        });
        log_upstream_once(ok && has);
        if ok && has {
            start(p, out);
        } else {
            tracing::debug!("invisibility strategy: silent (no privacy lists on the server)");
            p.list = State::Silent;
        }
        return true;
    }
    let State::List(list) = &mut p.list else {
        return is_stale(p, id);
    };
    if list.blocklist_id.as_deref() == Some(id) {
        list.blocklist_id = None;
        if let Some(blocklist) = iq.child("blocklist", ns::BLOCKING).filter(|_| ok) {
            list.blocks = blocked_jids(blocklist).collect();
        }
        return true;
    }
    let Some(pending) = list.pending.as_mut() else {
        return is_stale(p, id);
    };
    let Some(i) = pending.ids.iter().position(|x| x == id) else {
        return is_stale(p, id);
    };
    if !ok {
        let condition = iq
            .child("error", ns::CLIENT)
            .and_then(|e| e.elements().next())
            .map(|c| c.name.clone())
            .unwrap_or_default();
        tracing::warn!(%condition, "privacy list refused by the server; the session goes silent");
        fail(p, out);
        return true;
    }
    pending.ids.remove(i);
    if pending.ids.is_empty()
        && let Some(done) = list.pending.take()
    {
        for then in done.then {
            emit(p, then, out);
        }
    }
    true
}

/// What `auto` found, said once per process (one upstream), then per session at debug.
fn log_upstream_once(has_lists: bool) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        if has_lists {
            tracing::info!("the upstream has privacy lists: invisible sessions hide with one");
        } else {
            tracing::info!("the upstream has no privacy lists: invisible sessions stay silent");
        }
    }
}

/// An answer to one of the proxy's privacy IQs that no longer waits (after a failure or a
/// resumption): consumed, so that the client never sees the proxy's ids.
fn is_stale(p: &Policy, id: &str) -> bool {
    id.starts_with(&format!("{}-pl", p.id_prefix))
}

/// A privacy-list push (XEP-0016 §2.6) about one of the proxy's lists: the proxy answers it,
/// the client never sees it (true). A push about this session's list that none of the proxy's
/// updates explains is a change made by another resource of the account (both servers apply it
/// to this session at once, and fail open): the list is sent and activated again, and the
/// client's stanzas wait for it.
pub(super) fn own_list_push(p: &mut Policy, iq: &Element, out: &mut Vec<Action>) -> bool {
    let Some(name) = iq.child("query", ns::PRIVACY).and_then(|q| {
        q.elements()
            .filter(|l| l.name == "list")
            .find_map(|l| l.attr("name").filter(|n| n.starts_with(LIST_PREFIX)))
    }) else {
        return false;
    };
    out.push(Action::ToServer(Bytes::from(format!(
        "<iq type='result' id='{}'/>",
        escape(iq.attr("id").unwrap_or(""))
    ))));
    if let State::List(list) = &mut p.list
        && list.name == name
    {
        if list.pushes_expected > 0 {
            list.pushes_expected -= 1;
        } else if list.items.is_some() {
            tracing::warn!("the proxy's privacy list was changed elsewhere; setting it again");
            list.items = None;
            list.active = false;
        }
    }
    true
}

/// The client blocks contacts (XEP-0191) while its list hides it from some of them. Prosody's
/// mod_blocklist tells each blocked subscriber `unavailable` from every resource that holds a
/// presence, around the privacy list: that would reveal the invisible resource. So the server's
/// presence ends first (filtered by the list), the block goes through, and the presence comes
/// back (under the list). Returns false when there is nothing to guard.
pub(super) fn client_block(
    p: &mut Policy,
    raw: &Bytes,
    block: &Element,
    out: &mut Vec<Action>,
) -> bool {
    let active = matches!(&p.list, State::List(l) if l.active);
    let hides_one =
        blocked_jids(block).any(|j| jid::BareJid::new(&j).is_ok_and(|b| !p.vis.may_see(&b)));
    if !(active && p.server_broadcasting && hides_one) {
        return false;
    }
    out.push(Action::ToServer(presence::UNAVAILABLE));
    out.push(Action::ToServer(raw.clone()));
    out.push(Action::ToServer(p.current_presence()));
    true
}

/// A blocklist push (`<block/>` or `<unblock/>`) from the server: the copy in the list follows.
pub(super) fn blocklist_push(p: &mut Policy, iq: &Element, out: &mut Vec<Action>) {
    let State::List(list) = &mut p.list else {
        return;
    };
    if let Some(block) = iq.child("block", ns::BLOCKING) {
        list.blocks.extend(blocked_jids(block));
    } else if let Some(unblock) = iq.child("unblock", ns::BLOCKING) {
        let items: Vec<String> = blocked_jids(unblock).collect();
        if items.is_empty() {
            list.blocks.clear();
        } else {
            for jid in items {
                list.blocks.remove(&jid);
            }
        }
    } else {
        return;
    }
    sync(p, Vec::new(), Vec::new(), out);
}

fn blocked_jids(e: &Element) -> impl Iterator<Item = String> + '_ {
    e.elements()
        .filter(|i| i.name == "item")
        .filter_map(|i| i.attr("jid"))
        .filter_map(super::normalize)
        .map(|j| j.to_string())
}

/// The list this session needs now: `None` while nobody is hidden.
fn desired(p: &Policy, blocks: &BTreeSet<String>) -> Option<Vec<Item>> {
    if !p.vis.hides_anyone() {
        return None;
    }
    let mut items: Vec<Item> = blocks.iter().cloned().map(Item::Block).collect();
    let mut allow: BTreeSet<String> = p
        .shown
        .keys()
        .filter(|e| !p.vis.may_see(&e.to_bare()) && !bare_subscriber(p, e))
        .map(|e| e.to_string())
        .collect();
    if p.vis.global == Mode::Invisible {
        allow.extend(
            p.vis
                .exceptions
                .iter()
                .filter(|(_, m)| **m == Mode::Visible)
                .map(|(c, _)| c.to_string()),
        );
    }
    items.extend(allow.into_iter().map(Item::Allow));
    match p.vis.global {
        Mode::Invisible => items.push(Item::DenyAll),
        Mode::Visible => items.extend(
            p.vis
                .exceptions
                .iter()
                .filter(|(_, m)| **m == Mode::Invisible)
                .map(|(c, _)| Item::Deny(c.to_string())),
        ),
    }
    Some(items)
}

/// Brings the server's list in line with the session's state: `before` goes out first, then
/// the privacy IQs, and `after` once the server has answered them all.
pub(super) fn sync(p: &mut Policy, before: Vec<Action>, after: Vec<Then>, out: &mut Vec<Action>) {
    out.extend(before);
    let State::List(list) = &p.list else {
        // Silent: nothing waits for a list.
        for then in after {
            emit(p, then, out);
        }
        return;
    };
    let want = desired(p, &list.blocks);
    let mut iqs: Vec<String> = Vec::new();
    let State::List(list) = &mut p.list else {
        return;
    };
    match want {
        Some(items) => {
            if list.items.as_ref() != Some(&items) {
                iqs.push(list_xml(&list.name, &items));
                list.items = Some(items);
            }
            if !list.active {
                iqs.push(format!("<active name='{}'/>", escape(&list.name)));
                list.active = true;
            }
        }
        None => {
            if list.active {
                iqs.push("<active/>".to_owned());
                list.active = false;
            }
        }
    }
    if iqs.is_empty() && list.pending.is_none() {
        for then in after {
            emit(p, then, out);
        }
        return;
    }
    for query in iqs {
        push_iq(list, &p.id_prefix, &query, out);
    }
    list.pending
        .get_or_insert_with(Pending::default)
        .then
        .extend(after);
}

/// A privacy IQ of the proxy's, awaited before anything that depends on it.
fn push_iq(list: &mut List, id_prefix: &str, query: &str, out: &mut Vec<Action>) {
    if query.starts_with("<list") {
        list.pushes_expected += 1;
    }
    list.seq += 1;
    let id = format!("{id_prefix}-pl{}", list.seq);
    out.push(Action::ToServer(Bytes::from(format!(
        "<iq type='set' id='{}'><query xmlns='{}'>{query}</query></iq>",
        escape(&id),
        ns::PRIVACY
    ))));
    list.pending
        .get_or_insert_with(Pending::default)
        .ids
        .push(id);
}

/// A stanza that waited for the list goes out.
fn emit(p: &mut Policy, then: Then, out: &mut Vec<Action>) {
    match then {
        Then::Available(b) => out.push(Action::ToServer(b)),
        Then::Directed(b, to) => directed(p, b, &to, out),
    }
}

/// Broadcasts go to a subscriber's bare JID, so an allow item for a hidden subscriber's bare
/// JID would let every later broadcast through: such an entity is never allowed for good.
fn bare_subscriber(p: &Policy, e: &Jid) -> bool {
    e.resource().is_none()
        && p.roster
            .as_ref()
            .and_then(|r| r.get(&e.to_bare()))
            .is_some_and(|s| s.sees_user())
}

/// A directed presence from this session. To a hidden subscriber's bare JID it goes between
/// two list updates: one that allows that JID, one that takes the allow item back. The server
/// handles a session's stanzas in order, so nothing else of this session passes in between;
/// if the first update fails, the presence is blocked (and the session goes silent).
pub(super) fn directed(p: &mut Policy, stanza: Bytes, to: &Jid, out: &mut Vec<Action>) {
    let hidden = !p.vis.may_see(&to.to_bare()) && bare_subscriber(p, to);
    let State::List(list) = &mut p.list else {
        out.push(Action::ToServer(stanza));
        return;
    };
    let Some(items) = list.items.clone().filter(|_| list.active && hidden) else {
        out.push(Action::ToServer(stanza));
        return;
    };
    let mut with = vec![Item::Allow(to.to_string())];
    with.extend(items.iter().cloned());
    let name = list.name.clone();
    push_iq(list, &p.id_prefix, &list_xml(&name, &with), out);
    out.push(Action::ToServer(stanza.clone()));
    push_iq(list, &p.id_prefix, &list_xml(&name, &items), out);
    if let Some(pending) = list.pending.as_mut() {
        pending
            .sent_between
            .push(Then::Directed(stanza, to.clone()));
    }
}

fn list_xml(name: &str, items: &[Item]) -> String {
    let mut s = format!("<list name='{}'>", escape(name));
    for (i, item) in items.iter().enumerate() {
        let order = i + 1;
        let item = match item {
            Item::Block(jid) => format!(
                "<item type='jid' value='{}' action='deny' order='{order}'/>",
                escape(jid)
            ),
            Item::Allow(jid) => format!(
                "<item type='jid' value='{}' action='allow' order='{order}'><presence-out/></item>",
                escape(jid)
            ),
            Item::Deny(jid) => format!(
                "<item type='jid' value='{}' action='deny' order='{order}'><presence-out/></item>",
                escape(jid)
            ),
            Item::DenyAll => {
                format!("<item action='deny' order='{order}'><presence-out/></item>")
            }
        };
        s.push_str(&item);
    }
    s.push_str("</list>");
    s
}

/// A privacy IQ failed: this session becomes silent for good. Whatever the server holds as
/// available must stop (its broadcasts would pass a list that may not be in force), the list
/// is declined (so that the proxy's directed presence is not blocked by it), and the silent
/// strategy takes over from the current state.
pub(super) fn fail(p: &mut Policy, out: &mut Vec<Action>) {
    p.report(Report::PrivacyListFailed);
    let State::List(list) = std::mem::replace(&mut p.list, State::Failed) else {
        return;
    };
    let waiting: Vec<Then> = list
        .pending
        .map(|pending| {
            pending
                .sent_between
                .into_iter()
                .chain(pending.then)
                .collect()
        })
        .unwrap_or_default();
    // Whatever the server holds as available, it holds under a list whose state is now unknown:
    // it ends, filtered by that list as the broadcasts before it were. Then the list is declined,
    // so that the `unavailable`s to the remembered recipients, and the silent strategy's
    // directed presence after them, are not blocked by it.
    if p.server_broadcasting {
        out.push(Action::ToServer(presence::UNAVAILABLE));
        p.server_broadcasting = false;
    }
    if list.active || list.items.is_some() {
        out.push(Action::ToServer(Bytes::from(format!(
            "<iq type='set' id='{}-pl-decline'><query xmlns='{}'><active/></query></iq>",
            escape(&p.id_prefix),
            ns::PRIVACY
        ))));
    }
    // The client's directed presence that waited for the list is delivered under the silent
    // rules too (its recipient stays remembered); everyone else remembered is told.
    let waiting_for: Vec<Jid> = waiting
        .iter()
        .filter_map(|t| match t {
            Then::Directed(_, to) => Some(to.clone()),
            Then::Available(_) => None,
        })
        .collect();
    let unavailable = presence::UNAVAILABLE;
    presence::tell_unavailable(p, &unavailable, |e| !waiting_for.contains(e), out);
    for then in waiting {
        // The undirected presence is replaced by the silent fan-out below.
        if let Then::Directed(b, _) = then {
            out.push(Action::ToServer(b));
        }
    }
    if p.vis.hides_anyone() {
        presence::fan_out(p, out);
    } else {
        presence::resume_server_broadcast(p, out);
    }
}

// ---------------------------------------------------------------------------------------------
// The rules, for a session that hides through its list. Each is the counterpart of a silent
// rule in `presence`, `xep0186` or `xep0018`.

/// Undirected available presence while someone is hidden: the server broadcasts it through the
/// list; visible exceptions who are not subscribers get it directed.
pub(super) fn undirected_available(p: &mut Policy, raw: &Bytes, out: &mut Vec<Action>) {
    p.server_broadcasting = true;
    out.push(Action::ToServer(raw.clone()));
    let extra: Vec<Jid> = p
        .vis
        .exceptions
        .iter()
        .filter(|(c, m)| {
            **m == Mode::Visible
                && !p
                    .roster
                    .as_ref()
                    .and_then(|r| r.get(c))
                    .is_some_and(|s| s.sees_user())
        })
        .map(|(c, _)| Jid::from(c.clone()))
        .collect();
    for contact in extra {
        presence::show_to(p, raw, contact, out);
    }
}

/// Directed presence: it needs an allow item if the list would deny it.
pub(super) fn directed_available(p: &mut Policy, raw: &Bytes, to: Jid, out: &mut Vec<Action>) {
    sync(p, Vec::new(), vec![Then::Directed(raw.clone(), to)], out);
}

/// Directed unavailable: it goes out before the recipient's allow item is removed.
pub(super) fn directed_unavailable(p: &mut Policy, raw: &Bytes, to: &Jid, out: &mut Vec<Action>) {
    let mut before = Vec::new();
    directed(p, raw.clone(), to, &mut before);
    sync(p, before, Vec::new(), out);
}

/// Hiding from everyone (XEP-0186 `invisible`, XEP-0018 undirected `invisible`). A broadcast
/// presence ends with `unavailable` (everyone who saw the resource is told, and the server
/// answers probes as offline from here on); contacts are probed while nothing is active yet
/// (Prosody's list would block the probes); then the list, and only then the presence again.
pub(super) fn hide_from_everyone(
    p: &mut Policy,
    probe: bool,
    initial: bool,
    out: &mut Vec<Action>,
) {
    let mut before = Vec::new();
    super::xep0186::hide_from_everyone(p, &mut before);
    p.vis.set(Mode::Invisible);
    if probe {
        super::xep0186::probe_contacts(p, &mut before);
    }
    let after = if p.available || initial {
        p.server_broadcasting = true;
        vec![Then::Available(p.current_presence())]
    } else {
        Vec::new()
    };
    sync(p, before, after, out);
}

/// XEP-0186 `visible`: "as if no initial presence yet": a presence the server holds ends
/// (the list still blocks its broadcast), then the list is declined.
pub(super) fn visible_fresh_start(p: &mut Policy, out: &mut Vec<Action>) {
    let mut before = Vec::new();
    if p.server_broadcasting && p.vis.hides_anyone() {
        before.push(Action::ToServer(presence::UNAVAILABLE));
        p.server_broadcasting = false;
    }
    p.vis.set(Mode::Visible);
    if !p.server_broadcasting {
        p.available = false;
        p.last_presence = None;
    }
    sync(p, before, Vec::new(), out);
}

/// Nobody is hidden any more (XEP-0018 `visible`, or the last exception lifted): the list is
/// declined, then the server gets the presence again and broadcasts it to everyone (those who
/// already saw it get it twice).
pub(super) fn show_to_everyone(p: &mut Policy, out: &mut Vec<Action>) {
    let mut after = Vec::new();
    if p.available {
        p.server_broadcasting = true;
        after.push(Then::Available(p.current_presence()));
    }
    sync(p, Vec::new(), after, out);
}

/// An undirected presence while nobody is hidden: it goes to the server once a list still in
/// force is declined.
pub(super) fn show_to_everyone_now(p: &mut Policy, raw: &Bytes, out: &mut Vec<Action>) {
    p.server_broadcasting = true;
    sync(p, Vec::new(), vec![Then::Available(raw.clone())], out);
}

/// XEP-0018 directed `invisible`: the contact is told `unavailable` in the same write as the
/// list change that hides it from then on; nobody else notices anything.
pub(super) fn invisible_to(p: &mut Policy, contact: jid::BareJid, out: &mut Vec<Action>) {
    let mut before = Vec::new();
    let as_jid = Jid::from(contact.clone());
    if p.vis.may_see(&contact) && p.server_covers(&as_jid) {
        before.push(Action::ToServer(super::xml_with_to(
            &presence::UNAVAILABLE,
            contact.as_str(),
        )));
    }
    let unavailable = presence::UNAVAILABLE;
    presence::tell_unavailable(p, &unavailable, |e| e.to_bare() == contact, &mut before);
    p.vis.set_for(contact, Mode::Invisible);
    sync(p, before, Vec::new(), out);
}

/// XEP-0018 directed `visible`: once the list lets the contact through, it gets the current
/// presence (remembered, unless the server's broadcast covers it from now on).
pub(super) fn visible_to(p: &mut Policy, contact: jid::BareJid, out: &mut Vec<Action>) {
    let already_sees = p.shown.keys().any(|e| e.to_bare() == contact);
    p.vis.set_for(contact.clone(), Mode::Visible);
    let as_jid = Jid::from(contact.clone());
    let mut after = Vec::new();
    if !p.vis.hides_anyone() {
        p.invisible_since = None;
        if p.available && !p.server_broadcasting {
            p.server_broadcasting = true;
            after.push(Then::Available(p.current_presence()));
        }
    }
    if p.available && !already_sees {
        let current = p.current_presence();
        if p.server_broadcasting && p.server_covers(&as_jid) {
            after.push(Then::Directed(
                super::xml_with_to(&current, contact.as_str()),
                as_jid,
            ));
        } else if p.shown.len() < super::MAX_SHOWN {
            p.shown.insert(as_jid.clone(), true);
            after.push(Then::Directed(
                super::xml_with_to(&current, contact.as_str()),
                as_jid,
            ));
        }
    }
    sync(p, Vec::new(), after, out);
}

/// The session ends with the list in force: an undirected `unavailable` first, while the list
/// still filters it (Prosody drops the list before the logout broadcast of the account's last
/// session, so closing without it would tell every contact). The server then holds no presence,
/// so the list can be declined: the proxy's `unavailable`s to the remembered recipients that
/// follow pass without list updates around them.
pub(super) fn session_end_first(p: &mut Policy, out: &mut Vec<Action>) {
    // After a failure the list may still be in force on the server: the same holds.
    let list_may_filter = match &p.list {
        State::List(l) => l.active,
        State::Failed => true,
        _ => false,
    };
    if p.server_broadcasting && list_may_filter {
        out.push(Action::ToServer(presence::UNAVAILABLE));
        p.server_broadcasting = false;
    }
    if let State::List(list) = &mut p.list
        && list.active
    {
        list.active = false;
        out.push(Action::ToServer(Bytes::from(format!(
            "<iq type='set' id='{}-pl-end0'><query xmlns='{}'><active/></query></iq>",
            escape(&p.id_prefix),
            ns::PRIVACY
        ))));
    }
}

/// After the `unavailable`s of the end: the list is deleted.
pub(super) fn session_end_last(p: &mut Policy, out: &mut Vec<Action>) {
    let State::List(list) = std::mem::replace(&mut p.list, State::Ended) else {
        return;
    };
    if list.items.is_some() {
        out.push(Action::ToServer(Bytes::from(format!(
            "<iq type='set' id='{}-pl-end1'><query xmlns='{}'><list name='{}'/></query></iq>",
            escape(&p.id_prefix),
            ns::PRIVACY,
            escape(&list.name)
        ))));
    }
}

/// The client's connection dropped with a resumable stream. With the list in force the
/// server's presence ends now (Prosody would broadcast `unavailable` around the list when the
/// hibernated session times out); it is given back on resumption ([`resumed`]).
pub(super) fn detach(p: &mut Policy, out: &mut Vec<Action>) -> bool {
    if p.server_broadcasting && matches!(&p.list, State::List(l) if l.active) {
        out.push(Action::ToServer(presence::UNAVAILABLE));
        return true;
    }
    false
}

/// The stream was resumed: the list is sent and activated again (whatever was in flight on
/// the old connection is forgotten), then the presence the server held before the drop, and
/// the current presence to the entities told `unavailable` at the drop.
pub(super) fn resumed(p: &mut Policy, detached: Vec<Jid>, out: &mut Vec<Action>) {
    let State::List(list) = &mut p.list else {
        return;
    };
    list.items = None;
    list.active = false;
    let mut after: Vec<Then> = list.pending.take().map(|pd| pd.then).unwrap_or_default();
    let current = p.current_presence();
    if p.available && p.vis.hides_anyone() {
        p.server_broadcasting = true;
        after.push(Then::Available(current.clone()));
    }
    for entity in detached {
        if p.shown.len() < super::MAX_SHOWN {
            after.push(Then::Directed(
                super::xml_with_to(&current, entity.as_str()),
                entity.clone(),
            ));
            p.shown.insert(entity, true);
        }
    }
    sync(p, Vec::new(), after, out);
}

/// The client's own privacy-list IQ: refused while it could switch the proxy's list off or
/// change it (`Some(condition)`), passed otherwise.
pub(super) fn client_privacy_set(p: &Policy, query: &Element) -> Option<&'static str> {
    let State::List(list) = &p.list else {
        return None;
    };
    for e in query.elements() {
        let named_ours = e.attr("name").is_some_and(|n| n.starts_with(LIST_PREFIX));
        match e.name.as_str() {
            // Activating another list (or declining) would replace the proxy's.
            "active" if list.active || p.vis.hides_anyone() => return Some("not-allowed"),
            "list" | "default" | "active" if named_ours || e.attr("name") == Some(&list.name) => {
                return Some("not-allowed");
            }
            _ => {}
        }
    }
    None
}

/// A presence error from the server for a presence that the list blocked (ejabberd bounces
/// them as `not-acceptable`): the proxy's doing, not the client's business.
pub(super) fn is_bounce(p: &Policy, raw: &Bytes) -> bool {
    let State::List(list) = &p.list else {
        return false;
    };
    if !list.active {
        return false;
    }
    let Ok(el) = Element::parse(raw, ns::CLIENT, &[]) else {
        return false;
    };
    let not_acceptable = el
        .child("error", ns::CLIENT)
        .is_some_and(|e| e.elements().any(|c| c.name == "not-acceptable"));
    let from_hidden = el
        .attr("from")
        .and_then(super::normalize)
        .is_some_and(|f| !p.vis.may_see(&f.to_bare()) && !p.shown.contains_key(&f));
    not_acceptable && from_hidden
}
