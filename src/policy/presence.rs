//! Ordinary presence from the client, under whatever visibility the session has.
//!
//! The rules in one place:
//! - **Undirected available without `<show/>`** after an undirected XEP-0018 `invisible` with no
//!   per-contact exception since: ends that invisibility first ([`xep0018`]).
//! - **Undirected available**: if nobody is hidden, it goes to the server, which broadcasts it.
//!   Otherwise it is withheld from the server and fanned out as directed presence to the
//!   contacts allowed to see the resource (XEP-0018); with everyone hidden that is nobody
//!   (XEP-0186 rule 3).
//! - **Directed available** (also while invisible): delivered, and the recipient remembered
//!   (XEP-0186 rule 4), because the server does not tell roster contacts `unavailable` for
//!   directed presence at disconnect.
//! - **Undirected unavailable**: to the server only if it holds the resource as available;
//!   otherwise only to the remembered recipients (XEP-0186 rule 5): a silent session's
//!   undirected unavailable would be broadcast by the server to every subscriber.
//! - **Directed unavailable**: delivered; the recipient is forgotten.
//! - **Session end** ([`Policy::session_end`]): every remembered recipient the server will not
//!   tell itself gets `unavailable`, before the upstream stream closes.

use bytes::Bytes;
use jid::{BareJid, Jid};

use super::report::Report;
use super::{Action, MAX_SHOWN, Policy, privacy_list, xep0018};
use crate::ns;
use crate::xml::element::{escape, set_start_tag_attr};

/// A plain undirected `unavailable`; directed copies are made from it.
pub(super) const UNAVAILABLE: Bytes = Bytes::from_static(b"<presence type='unavailable'/>");

pub(super) fn undirected_available(p: &mut Policy, raw: &Bytes, out: &mut Vec<Action>) {
    if p.xep0018_global && xep0018::is_plain_online(raw) {
        xep0018::ended_by_presence(p);
    }
    p.available = true;
    // A copy: a slice of the read buffer would keep the whole buffer alive.
    p.last_presence = Some(Bytes::copy_from_slice(raw));
    if p.vis.hides_anyone() && p.uses_list() {
        privacy_list::undirected_available(p, raw, out);
    } else if p.vis.hides_anyone() {
        p.report(Report::PresenceSuppressed);
        fan_out(p, out);
    } else if p.uses_list() {
        // A list that was in force (Psi's "Online" after "Invisible") is declined first.
        privacy_list::show_to_everyone_now(p, raw, out);
    } else {
        p.server_broadcasting = true;
        out.push(Action::ToServer(raw.clone()));
    }
}

pub(super) fn undirected_unavailable(p: &mut Policy, raw: &Bytes, out: &mut Vec<Action>) {
    p.available = false;
    p.last_presence = None;
    if p.server_broadcasting {
        out.push(Action::ToServer(raw.clone()));
    } else {
        p.report(Report::PresenceSuppressed);
    }
    tell_unavailable(p, raw, |_| true, out);
    p.server_broadcasting = false;
}

pub(super) fn directed_available(p: &mut Policy, raw: &Bytes, to: Jid, out: &mut Vec<Action>) {
    if !p.shown.contains_key(&to) && p.shown.len() >= MAX_SHOWN {
        refuse(p, raw, "resource-constraint", out);
        return;
    }
    p.shown.insert(to.clone(), true);
    if p.uses_list() {
        privacy_list::directed_available(p, raw, to, out);
    } else {
        out.push(Action::ToServer(raw.clone()));
    }
}

/// A presence error to an entity: delivered. The server then forgets the directed presence it
/// had recorded for that entity (Prosody), so the proxy must tell it `unavailable` itself.
pub(super) fn error_to(p: &mut Policy, raw: &Bytes, to: Jid, out: &mut Vec<Action>) {
    if let Some(recorded) = p.shown.get_mut(&to) {
        *recorded = false;
    }
    out.push(Action::ToServer(raw.clone()));
}

pub(super) fn directed_unavailable(p: &mut Policy, raw: &Bytes, to: Jid, out: &mut Vec<Action>) {
    // Unavailable to a bare JID reaches every resource of it.
    if to.resource().is_none() {
        let bare = to.to_bare();
        p.shown.retain(|e, _| e.to_bare() != bare);
    } else {
        p.shown.remove(&to);
    }
    if p.uses_list() {
        privacy_list::directed_unavailable(p, raw, &to, out);
    } else {
        out.push(Action::ToServer(raw.clone()));
    }
}

/// The client's session ends (clean close, TCP drop, upstream close, proxy shutdown):
/// `unavailable` to everyone shown the resource whom the server will not tell itself.
/// The pump sends these before it closes the upstream stream.
impl Policy {
    pub fn session_end(&mut self, out: &mut Vec<Action>) {
        privacy_list::session_end_first(self, out);
        let unavailable = UNAVAILABLE;
        tell_unavailable(self, &unavailable, |_| true, out);
        privacy_list::session_end_last(self, out);
        self.available = false;
    }

    /// The client's connection dropped but its stream may be resumed: the server keeps the
    /// session (hibernating) and, when that times out, tells the entities it tracks (the
    /// subscribers it broadcast to, and non-roster recipients of directed presence: measured on
    /// Prosody and ejabberd). The roster contacts that only the proxy showed the resource to get
    /// `unavailable` now, and their presence back if the stream is resumed ([`Policy::resumed`]).
    pub fn detach(&mut self, out: &mut Vec<Action>) {
        let ended = privacy_list::detach(self, out);
        let unavailable = UNAVAILABLE;
        let server_tracks = |p: &Policy, e: &Jid, recorded: bool| {
            p.server_covers(e)
                || (recorded
                    && p.roster
                        .as_ref()
                        .is_some_and(|r| r.get(&e.to_bare()).is_none()))
        };
        let told: Vec<Jid> = self
            .shown
            .iter()
            .filter(|(e, recorded)| !server_tracks(self, e, **recorded))
            .map(|(e, _)| e.clone())
            .collect();
        for entity in &told {
            tell(self, &unavailable, entity, out);
            self.shown.remove(entity);
        }
        self.detached = told;
        if ended {
            // The server's presence ended (see `privacy_list::detach`): it told the rest of the
            // remembered recipients itself, and all of them see the resource again on resumption.
            let rest: Vec<Jid> = self
                .shown
                .keys()
                .filter(|e| !self.server_covers(e))
                .cloned()
                .collect();
            for entity in rest {
                self.shown.remove(&entity);
                self.detached.push(entity);
            }
            self.server_broadcasting = false;
        }
    }

    /// The stream was resumed: the entities told `unavailable` at the drop see the resource
    /// again (the current presence; what else a directed presence carried is not kept).
    pub fn resumed(&mut self, out: &mut Vec<Action>) {
        if self.uses_list() {
            let detached = std::mem::take(&mut self.detached);
            privacy_list::resumed(self, detached, out);
            return;
        }
        let current = self.current_presence();
        for entity in std::mem::take(&mut self.detached) {
            show_to(self, &current, entity, out);
        }
    }
}

/// The server must stop holding the resource as available (someone is about to be hidden):
/// an undirected `unavailable` makes it tell every subscriber and stop answering probes with
/// presence; the remembered recipients it will not tell get a directed one.
pub(super) fn stop_server_broadcast(p: &mut Policy, out: &mut Vec<Action>) {
    if !p.server_broadcasting {
        return;
    }
    let unavailable = UNAVAILABLE;
    out.push(Action::ToServer(unavailable.clone()));
    tell_unavailable(p, &unavailable, |_| true, out);
    p.server_broadcasting = false;
}

/// Hands the session back to the server's own broadcast (nobody is hidden any more): the last
/// undirected presence goes to the server, which sends it to every subscriber and probes the
/// contacts for the client.
pub(super) fn resume_server_broadcast(p: &mut Policy, out: &mut Vec<Action>) {
    debug_assert!(!p.vis.hides_anyone());
    if p.server_broadcasting || !p.available {
        return;
    }
    out.push(Action::ToServer(p.current_presence()));
    p.server_broadcasting = true;
}

/// A directed copy of the proxy's `raw` to one entity (through the privacy list's rules when the
/// session hides with one).
fn tell(p: &mut Policy, raw: &Bytes, entity: &Jid, out: &mut Vec<Action>) {
    if p.uses_list() {
        let copy = super::xml_with_to(raw, entity.as_str());
        privacy_list::directed(p, copy, entity, out);
    } else {
        push_directed(raw, entity.as_str(), Action::ToServer, out);
    }
}

/// Sends `unavailable` (a directed copy of `raw`) to every remembered recipient matching
/// `which` that the server will not tell itself, and forgets them.
pub(super) fn tell_unavailable(
    p: &mut Policy,
    raw: &Bytes,
    which: impl Fn(&Jid) -> bool,
    out: &mut Vec<Action>,
) {
    let told: Vec<Jid> = p.shown.keys().filter(|e| which(e)).cloned().collect();
    for entity in told {
        if !p.server_covers(&entity) {
            tell(p, raw, &entity, out);
        }
        p.shown.remove(&entity);
    }
}

/// The current undirected presence sent as directed presence to every contact allowed to see
/// the resource: subscribers (`from`/`both`) and contacts made visible by XEP-0018, minus the
/// hidden ones. Waits for the roster view if it has not arrived yet.
pub(super) fn fan_out(p: &mut Policy, out: &mut Vec<Action>) {
    if !p.available {
        return;
    }
    let Some(roster) = p.roster.as_ref() else {
        p.fan_out_pending = true;
        return;
    };
    p.fan_out_pending = false;
    let mut audience: std::collections::BTreeSet<BareJid> = roster
        .subscribers()
        .filter(|c| p.vis.may_see(c))
        .cloned()
        .collect();
    let visible_exceptions = p
        .vis
        .exceptions
        .iter()
        .filter(|(_, m)| **m == super::Mode::Visible);
    audience.extend(visible_exceptions.map(|(c, _)| c.clone()));
    let presence = p.current_presence();
    for contact in audience {
        show_to(p, &presence, Jid::from(contact), out);
    }
}

/// Directed copy of `presence` to one entity, remembered for its `unavailable` later.
pub(super) fn show_to(p: &mut Policy, presence: &Bytes, to: Jid, out: &mut Vec<Action>) {
    if !p.shown.contains_key(&to) && p.shown.len() >= MAX_SHOWN {
        tracing::warn!(
            limit = MAX_SHOWN,
            "too many presence recipients; not showing more"
        );
        return;
    }
    if push_directed(presence, to.as_str(), Action::ToServer, out).is_some() {
        p.shown.insert(to, true);
    }
}

/// Writes a copy of `raw` addressed to `to`; returns the copy.
fn push_directed(
    raw: &Bytes,
    to: &str,
    dir: fn(Bytes) -> Action,
    out: &mut Vec<Action>,
) -> Option<Bytes> {
    match set_start_tag_attr(raw, "to", to) {
        Ok(copy) => {
            out.push(dir(copy.clone()));
            Some(copy)
        }
        // `raw` is the proxy's own stanza or one the framer accepted, so this does not happen;
        // if it did, nothing is sent (an available presence that cannot be addressed stays here).
        Err(e) => {
            tracing::warn!(error = %e, "cannot address a presence copy");
            None
        }
    }
}

/// Presence the proxy will not let out: the client gets a presence error instead.
pub(super) fn refuse(p: &mut Policy, raw: &Bytes, condition: &str, out: &mut Vec<Action>) {
    p.report(Report::PresenceSuppressed);
    let id = crate::xml::StartTag::parse(raw)
        .ok()
        .and_then(|t| t.attr("id").map(|s| format!(" id='{}'", escape(s))))
        .unwrap_or_default();
    out.push(Action::ToClient(Bytes::from(format!(
        "<presence type='error'{id}><error type='modify'><{condition} \
         xmlns='{}'/></error></presence>",
        ns::STANZAS
    ))));
}

/// Tells the client that a presence request about `contact` was not carried out.
pub(super) fn refuse_note(contact: &BareJid, condition: &str, out: &mut Vec<Action>) {
    out.push(Action::ToClient(Bytes::from(format!(
        "<presence type='error' from='{}'><error type='wait'><{condition} \
         xmlns='{}'/></error></presence>",
        escape(contact.as_str()),
        ns::STANZAS
    ))));
}

impl Policy {
    /// The presence to show: the client's last undirected presence, or plain available.
    pub(super) fn current_presence(&self) -> Bytes {
        self.last_presence
            .clone()
            .unwrap_or_else(|| Bytes::from_static(b"<presence/>"))
    }
}
