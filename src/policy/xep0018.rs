//! XEP-0018 Invisible Presence: `<presence type='invisible'/>` and `type='visible'`, undirected
//! (everyone) or directed (one contact). These stanzas never leave the proxy; they change the
//! session's [`super::Visibility`] and may make the proxy send other presence:
//!
//! - undirected `invisible`: everyone who was shown the resource gets `unavailable`; it may be
//!   the initial presence (Listing 5): the session is then online but shown to nobody;
//! - undirected `visible`: everyone who could not see the resource gets the last undirected
//!   presence (Listings 10–11). Nobody is hidden any more, so the session is handed back to the
//!   server's own broadcast (it gets bare-JID messages and contacts' presence again);
//! - directed `invisible` to a contact who could see the resource: that contact gets
//!   `unavailable` (Listings 12–13). If the server was broadcasting, it must first be told the
//!   resource is unavailable (the only way to stop its broadcasts and probe answers), so the
//!   other allowed contacts get `unavailable` followed at once by the current presence;
//! - directed `visible` to a contact: it gets the last undirected presence, or plain available
//!   (Listings 6–7).
//!
//! Exceptions are kept per bare JID: hiding from a contact hides from all its resources.
//!
//! **Back online with a plain presence.** Psi (and the servers it was written for, ejabberd 2.x)
//! ends an undirected `invisible` with an ordinary available presence, never `type='visible'`.
//! §3.1 and §4.1 say presence updates while invisible (auto-away, a new status) must not reveal
//! the user. The rule that serves both: after an undirected `invisible`, as long as no
//! per-contact exception has been recorded since (a directed `visible`/`invisible` that differs
//! from the global mode), an undirected available presence *without `<show/>`* ("online", what
//! Psi sends for it) acts as an undirected `visible` followed by that presence. A presence with a
//! `<show/>` (away, xa, dnd, chat: an idle timer's or a status change while invisible) stays
//! withheld. (Psi 1.5 sends no auto-away while invisible: `autoAwayStatus` keeps a manual
//! invisible status.) XEP-0186 invisibility is never ended by presence (rule 3).

use bytes::Bytes;

use jid::{BareJid, Jid};

use super::report::{Command, Protocol, Report};
use super::{Action, MAX_EXCEPTIONS, Mode, Policy, presence, privacy_list, xep0186};
use crate::ns;
use crate::xml::Element;

fn count(p: &mut Policy, command: Command) {
    p.report(Report::InvisibilityCommand {
        protocol: Protocol::Xep0018,
        command,
    });
}

pub(super) fn invisible(p: &mut Policy, now: u64, out: &mut Vec<Action>) {
    count(p, Command::Invisible);
    if p.uses_list() {
        p.xep0018_global = true;
        p.invisible_since.get_or_insert(now);
        let initial = !p.available;
        if initial {
            p.available = true;
            p.last_presence = None;
        }
        // The server would probe at an initial presence, but the list blocks its probes
        // (Prosody): the proxy probes first.
        privacy_list::hide_from_everyone(p, initial, initial, out);
        return;
    }
    xep0186::hide_from_everyone(p, out);
    p.vis.set(Mode::Invisible);
    p.xep0018_global = true;
    p.invisible_since.get_or_insert(now);
    if !p.available {
        // Listing 5: "invisible" as the initial presence starts a presence session.
        p.available = true;
        p.last_presence = None;
    }
}

pub(super) fn visible(p: &mut Policy, out: &mut Vec<Action>) {
    count(p, Command::Visible);
    p.vis.set(Mode::Visible);
    p.xep0018_global = false;
    p.invisible_since = None;
    p.fan_out_pending = false;
    if p.uses_list() {
        privacy_list::show_to_everyone(p, out);
        return;
    }
    presence::resume_server_broadcast(p, out);
}

pub(super) fn invisible_to(p: &mut Policy, contact: BareJid, now: u64, out: &mut Vec<Action>) {
    count(p, Command::Invisible);
    if !exception_fits(p, &contact) {
        // The request cannot be recorded, and it must not be ignored: fail closed by hiding
        // from everyone, and tell the client.
        invisible(p, now, out);
        // Not a plain global invisibility: presence must not end it.
        p.xep0018_global = false;
        presence::refuse_note(&contact, "resource-constraint", out);
        return;
    }
    if p.vis.global != Mode::Invisible {
        p.xep0018_global = false;
    }
    if p.uses_list() {
        privacy_list::invisible_to(p, contact, out);
    } else if p.server_broadcasting {
        presence::stop_server_broadcast(p, out);
        p.vis.set_for(contact, Mode::Invisible);
        presence::fan_out(p, out);
    } else {
        let unavailable = presence::UNAVAILABLE;
        presence::tell_unavailable(p, &unavailable, |e| e.to_bare() == contact, out);
        p.vis.set_for(contact, Mode::Invisible);
    }
    if p.vis.hides_anyone() {
        p.invisible_since.get_or_insert(now);
    }
}

pub(super) fn visible_to(p: &mut Policy, contact: BareJid, out: &mut Vec<Action>) {
    count(p, Command::Visible);
    if !exception_fits(p, &contact) {
        // Not showing is the safe side of a request that cannot be recorded.
        presence::refuse_note(&contact, "resource-constraint", out);
        return;
    }
    if p.vis.global != Mode::Visible {
        p.xep0018_global = false;
    }
    if p.uses_list() {
        privacy_list::visible_to(p, contact, out);
        return;
    }
    p.vis.set_for(contact.clone(), Mode::Visible);
    if !p.vis.hides_anyone() {
        p.invisible_since = None;
        p.fan_out_pending = false;
        presence::resume_server_broadcast(p, out);
    }
    let already_sees = p.shown.keys().any(|e| e.to_bare() == contact);
    let contact = Jid::from(contact);
    if p.available && !already_sees && !p.server_covers(&contact) {
        let current = p.current_presence();
        presence::show_to(p, &current, contact, out);
    }
}

/// An undirected available presence ends a plain global XEP-0018 invisibility (see the module
/// documentation): nobody is hidden any more, and the presence itself then goes to the server.
pub(super) fn ended_by_presence(p: &mut Policy) {
    count(p, Command::Visible);
    p.vis.set(Mode::Visible);
    p.xep0018_global = false;
    p.invisible_since = None;
    p.fan_out_pending = false;
}

/// An available presence without `<show/>` ("online"); unparsable counts as not (it then stays
/// withheld).
pub(super) fn is_plain_online(raw: &Bytes) -> bool {
    Element::parse(raw, ns::CLIENT, &[])
        .is_ok_and(|presence| presence.child("show", ns::CLIENT).is_none())
}

fn exception_fits(p: &Policy, contact: &BareJid) -> bool {
    let fits = p.vis.exceptions.contains_key(contact) || p.vis.exceptions.len() < MAX_EXCEPTIONS;
    if !fits {
        tracing::warn!(
            limit = MAX_EXCEPTIONS,
            "too many per-contact visibility exceptions"
        );
    }
    fits
}
