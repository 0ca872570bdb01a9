//! The invisibility rules, as a pure state machine: one [`Policy`] per client session.
//!
//! No I/O and no clock: the session pump feeds it events (a stanza from the client, a stanza
//! from the server, the end of the session) and carries out the [`Action`]s it returns.
//!
//! Two strategies. With a privacy list ([`privacy_list`], where the server has XEP-0016 and
//! the configuration allows it) the server keeps the session available and a list of this
//! session's own denies `presence-out` to whoever must not see it. Without ("silent session"):
//! while anyone is meant not to see the resource, the server never
//! receives undirected available presence from it, so it treats the resource as connected but
//! unavailable (offline to probes, no broadcasts). Whatever contacts may see goes out as directed
//! presence sent by the proxy, which remembers every entity it showed the resource to and tells
//! each one `unavailable` when it must (see [`presence`]).
//!
//! Where the rules are:
//! - [`presence`]: ordinary presence from the client under the current visibility (undirected,
//!   directed, unavailable), fan-out, and what happens at session end;
//! - [`xep0186`]: the invisible/visible IQ commands;
//! - [`xep0018`]: `<presence type='invisible'/>` / `type='visible'`, global and per contact;
//! - [`roster`]: the roster view the rules need;
//! - [`inbound`]: stanzas from the server (bind result, roster, disco#info, stray invisible presence);
//! - [`report`]: what the policy did that the shell counts (the policy keeps no global counters).

mod inbound;
pub mod presence;
pub mod privacy_list;
pub mod report;
pub mod roster;
pub mod xep0018;
pub mod xep0186;

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};

use crate::ns;
use crate::stream::errors::Condition;
use crate::xml::{Element, ElementKind, FrameError, StartTag};
pub use privacy_list::Strategy;
pub use report::{Report, Reports};
use roster::Roster;

/// What the pump must do with the result of one event, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the server (the original stanza, or one the policy made).
    ToServer(Bytes),
    /// Write these bytes to the client.
    ToClient(Bytes),
}

/// A stanza the policy refuses to handle: the session must end with this stream error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub condition: Condition,
    pub reason: String,
}

impl From<FrameError> for Violation {
    fn from(e: FrameError) -> Self {
        Violation {
            condition: e.condition(),
            reason: e.to_string(),
        }
    }
}

/// Global or per-contact visibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Visible,
    Invisible,
}

/// Who may see the resource: a global mode plus XEP-0018's per-contact exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    pub global: Mode,
    pub exceptions: BTreeMap<BareJid, Mode>,
}

impl Visibility {
    pub fn may_see(&self, contact: &BareJid) -> bool {
        *self.exceptions.get(contact).unwrap_or(&self.global) == Mode::Visible
    }

    /// True while at least one contact must not see the resource: the session must be silent.
    pub fn hides_anyone(&self) -> bool {
        self.global == Mode::Invisible || self.exceptions.values().any(|m| *m == Mode::Invisible)
    }

    fn set(&mut self, global: Mode) {
        self.global = global;
        self.exceptions.clear();
    }

    fn set_for(&mut self, contact: BareJid, mode: Mode) {
        if mode == self.global {
            self.exceptions.remove(&contact);
        } else {
            self.exceptions.insert(contact, mode);
        }
    }
}

/// Limits on per-session state that a client could otherwise grow without bound.
pub const MAX_SHOWN: usize = 10_000;
pub const MAX_EXCEPTIONS: usize = 10_000;
const MAX_PENDING_IQS: usize = 64;

/// One session's invisibility state.
#[derive(Debug)]
pub struct Policy {
    /// The user's server, from the client's stream header.
    domain: String,
    /// Prefix of the ids of the proxy's own IQs, unique enough not to meet a client's ids.
    id_prefix: String,
    jid: Option<FullJid>,
    bind_id: Option<String>,
    roster_query_id: Option<String>,
    roster: Option<Roster>,
    /// Client disco#info queries to the user's server whose answers gain the invisible features.
    disco_ids: HashSet<String>,

    vis: Visibility,
    /// The global invisibility was set by an undirected XEP-0018 `invisible` and no per-contact
    /// exception has been recorded since: an undirected available presence without `<show/>`
    /// then ends it (Psi goes back online that way; see [`xep0018`]).
    xep0018_global: bool,
    /// The client has started a presence session (sent available presence, or XEP-0018
    /// `invisible` as its initial presence) and not ended it.
    available: bool,
    /// The last undirected available presence the client sent, as it sent it.
    last_presence: Option<Bytes>,
    /// The server holds the resource as available: it broadcasts, and answers probes, for it.
    /// Invariant: never true while `vis.hides_anyone()`.
    server_broadcasting: bool,
    /// Entities that were shown available presence from this resource by a directed presence
    /// (the client's or the proxy's) and have not been told `unavailable` since. The flag says
    /// whether the server still records that directed presence (it forgets it when the client
    /// sends that entity a presence error: measured on Prosody).
    shown: BTreeMap<Jid, bool>,
    /// Entities told `unavailable` when the client's connection dropped with a resumable
    /// stream, to be shown the current presence again if the stream is resumed.
    detached: Vec<Jid>,
    /// Seconds since the epoch when the session went invisible (XEP-0186 rule 8 timestamp).
    invisible_since: Option<u64>,
    probe: bool,
    /// Work that waits for the roster view.
    fan_out_pending: bool,
    probe_pending: bool,
    /// The configured strategy, and what this session uses (learnt after binding).
    strategy: Strategy,
    list: privacy_list::State,
    /// What the shell has still to count ([`Policy::take_reports`]).
    reports: Reports,
}

impl Policy {
    /// `domain`: the `to` of the client's stream header; `id_prefix`: per-session unique token.
    /// A silent session (see [`Policy::with_strategy`]).
    pub fn new(domain: &str, id_prefix: &str) -> Policy {
        Policy::with_strategy(domain, id_prefix, Strategy::Silent)
    }

    pub fn with_strategy(domain: &str, id_prefix: &str, strategy: Strategy) -> Policy {
        Policy {
            domain: domain.to_ascii_lowercase(),
            id_prefix: id_prefix.to_owned(),
            jid: None,
            bind_id: None,
            roster_query_id: None,
            roster: None,
            disco_ids: HashSet::new(),
            vis: Visibility {
                global: Mode::Visible,
                exceptions: BTreeMap::new(),
            },
            xep0018_global: false,
            available: false,
            last_presence: None,
            server_broadcasting: false,
            shown: BTreeMap::new(),
            detached: Vec::new(),
            invisible_since: None,
            probe: false,
            fan_out_pending: false,
            probe_pending: false,
            strategy,
            list: privacy_list::State::new(strategy),
            reports: Reports::default(),
        }
    }

    /// The full JID, once the server has bound a resource.
    pub fn jid(&self) -> Option<&FullJid> {
        self.jid.as_ref()
    }

    /// True while some contact must not see this resource (the session is silent).
    pub fn is_hidden(&self) -> bool {
        self.vis.hides_anyone()
    }

    pub fn visibility(&self) -> &Visibility {
        &self.vis
    }

    pub fn invisible_since(&self) -> Option<u64> {
        self.invisible_since
    }

    /// Entities currently shown the resource by directed presence (not yet told unavailable).
    pub fn shown(&self) -> impl Iterator<Item = &Jid> {
        self.shown.keys()
    }

    pub fn server_broadcasting(&self) -> bool {
        self.server_broadcasting
    }

    /// A top-level element from the client. `now`: seconds since the epoch.
    pub fn from_client(
        &mut self,
        raw: &Bytes,
        kind: ElementKind,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), Violation> {
        let r = match kind {
            ElementKind::Presence => self.client_presence(raw, now, out),
            ElementKind::Iq => self.client_iq(raw, now, out),
            ElementKind::Message | ElementKind::Other => {
                debug_assert!(Policy::passes_unchanged(kind));
                out.push(Action::ToServer(raw.clone()));
                return Ok(());
            }
        };
        self.reconcile_list(out);
        r
    }

    /// Whatever the event changed (an entity forgotten, a contact unhidden), the list follows,
    /// after the event's own stanzas: an allow item goes only once its `unavailable` is out.
    fn reconcile_list(&mut self, out: &mut Vec<Action>) {
        if self.uses_list() {
            privacy_list::sync(self, Vec::new(), Vec::new(), out);
        }
    }

    /// Stanzas of this kind go through unchanged in both directions, whatever the state: the
    /// policy neither reads nor remembers them (a message never reveals presence). The session
    /// may then copy them on without calling [`Policy::from_client`] / [`Policy::from_server`],
    /// which would only return them as they are.
    pub fn passes_unchanged(kind: ElementKind) -> bool {
        matches!(kind, ElementKind::Message | ElementKind::Other)
    }

    /// A top-level element from the server.
    pub fn from_server(
        &mut self,
        raw: &Bytes,
        kind: ElementKind,
        out: &mut Vec<Action>,
    ) -> Result<(), Violation> {
        let r = match kind {
            ElementKind::Presence => self.server_presence(raw, out),
            ElementKind::Iq => self.server_iq(raw, out),
            ElementKind::Message | ElementKind::Other => {
                debug_assert!(Policy::passes_unchanged(kind));
                out.push(Action::ToClient(raw.clone()));
                return Ok(());
            }
        };
        self.reconcile_list(out);
        r
    }

    fn client_presence(
        &mut self,
        raw: &Bytes,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), Violation> {
        let tag = StartTag::parse(raw)?;
        let Some(me) = self.jid.as_ref().map(|j| j.to_bare()) else {
            // No presence before resource binding: the server would not route it either.
            presence::refuse(self, raw, "not-authorized", out);
            return Ok(());
        };
        let to = match tag.attr("to") {
            None => None,
            Some(to) => match normalize(to) {
                // Presence to one's own bare JID is undirected presence to the server.
                Some(jid) if jid.resource().is_none() && jid.to_bare() == me => None,
                Some(jid) => Some(jid),
                None => {
                    // Cannot be tracked, so it cannot be allowed out.
                    presence::refuse(self, raw, "jid-malformed", out);
                    return Ok(());
                }
            },
        };
        match (tag.attr("type"), to) {
            (Some("invisible"), None) => xep0018::invisible(self, now, out),
            (Some("visible"), None) => xep0018::visible(self, out),
            (Some("invisible"), Some(to)) => xep0018::invisible_to(self, to.to_bare(), now, out),
            (Some("visible"), Some(to)) => xep0018::visible_to(self, to.to_bare(), out),
            (None, None) => presence::undirected_available(self, raw, out),
            (Some("unavailable"), None) => presence::undirected_unavailable(self, raw, out),
            (None, Some(to)) => presence::directed_available(self, raw, to, out),
            (Some("unavailable"), Some(to)) => presence::directed_unavailable(self, raw, to, out),
            // Subscription management, probes and errors reveal nothing about availability.
            (Some("error"), Some(to)) => presence::error_to(self, raw, to, out),
            (
                Some(
                    "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" | "probe" | "error",
                ),
                _,
            ) => out.push(Action::ToServer(raw.clone())),
            // An unknown type: we cannot tell what the server would make of it, so it stays here.
            (Some(_), _) => presence::refuse(self, raw, "bad-request", out),
        }
        Ok(())
    }

    fn client_iq(&mut self, raw: &Bytes, now: u64, out: &mut Vec<Action>) -> Result<(), Violation> {
        let tag = StartTag::parse(raw)?;
        let to_our_server = match tag.attr("to") {
            None => true,
            Some(to) => self.is_our_server(to),
        };
        let kind = tag.attr("type");
        if !to_our_server || !matches!(kind, Some("set" | "get")) {
            out.push(Action::ToServer(raw.clone()));
            return Ok(());
        }
        let iq = Element::parse(raw, ns::CLIENT, &[])?;
        let id = iq.attr("id").unwrap_or("").to_owned();
        let Some(payload) = iq.elements().next() else {
            out.push(Action::ToServer(raw.clone()));
            return Ok(());
        };
        match (kind, payload.name.as_str(), payload.ns.as_str()) {
            (Some("set"), "invisible" | "visible", ns::INVISIBLE_1 | ns::INVISIBLE_0)
            | (Some("set"), "visible", ns::SLIXMPP_VISIBLE) => {
                xep0186::command(self, &iq, payload, now, out);
                return Ok(());
            }
            (Some("set"), _, ns::SLIXMPP_VISIBLE) => {
                xep0186::refuse(&iq, out);
                return Ok(());
            }
            (Some("set"), "bind", ns::BIND) => self.bind_id = Some(id),
            (Some("set"), "query", ns::PRIVACY) => {
                if let Some(condition) = privacy_list::client_privacy_set(self, payload) {
                    tracing::info!(
                        "client privacy-list change refused while the proxy's list hides the session"
                    );
                    out.push(Action::ToClient(Bytes::from(format!(
                        "<iq type='error' id='{}'><error type='cancel'><{condition} \
                         xmlns='{}'/></error></iq>",
                        crate::xml::element::escape(&id),
                        ns::STANZAS
                    ))));
                    return Ok(());
                }
            }
            (Some("set"), "block", ns::BLOCKING)
                if privacy_list::client_block(self, raw, payload, out) =>
            {
                return Ok(());
            }
            (Some("get"), "query", ns::DISCO_INFO)
                if payload.attr("node").is_none()
                    && tag.attr("to").is_some()
                    && self.disco_ids.len() < MAX_PENDING_IQS =>
            {
                self.disco_ids.insert(id);
            }
            _ => {}
        }
        out.push(Action::ToServer(raw.clone()));
        Ok(())
    }

    /// The user's own server: the stream's domain (the request's `to` compared normalised).
    fn is_our_server(&self, to: &str) -> bool {
        let to = to.strip_suffix('.').unwrap_or(to);
        Jid::new(to).is_ok_and(|j| {
            j.node().is_none() && j.resource().is_none() && j.domain().as_str() == self.domain
        })
    }

    /// Whether the server itself sends `entity` the resource's presence, and so its
    /// `unavailable` too: it does for subscribers while it broadcasts, not for roster contacts
    /// that only got directed presence (measured on Prosody and ejabberd: "ghost online").
    fn server_covers(&self, entity: &Jid) -> bool {
        self.server_broadcasting
            && self.vis.may_see(&entity.to_bare())
            && self
                .roster
                .as_ref()
                .and_then(|r| r.get(&entity.to_bare()))
                .is_some_and(|s| s.sees_user())
    }

    fn next_id(&self, what: &str) -> String {
        format!("{}-{what}", self.id_prefix)
    }
}

/// A copy of the stanza `raw` addressed to `to` (`raw` is the proxy's own or one the framer
/// accepted, so this does not fail; if it did, the copy would be empty and say nothing).
fn xml_with_to(raw: &Bytes, to: &str) -> Bytes {
    crate::xml::element::set_start_tag_attr(raw, "to", to).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot address a stanza copy");
        Bytes::new()
    })
}

/// A JID as the server compares it: stringprep-normalised, without a trailing dot on the domain
/// (`joe@example.org.` is `joe@example.org`). `None` if it is not a JID.
pub fn normalize(jid: &str) -> Option<Jid> {
    let parsed = Jid::new(jid).ok()?;
    if !parsed.domain().as_str().ends_with('.') {
        return Some(parsed);
    }
    let domain = parsed.domain().as_str().trim_end_matches('.');
    let mut s = String::new();
    if let Some(node) = parsed.node() {
        s.push_str(node.as_str());
        s.push('@');
    }
    s.push_str(domain);
    if let Some(resource) = parsed.resource() {
        s.push('/');
        s.push_str(resource.as_str());
    }
    Jid::new(&s).ok()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_privacy_list;
