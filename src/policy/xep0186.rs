//! XEP-0186 Invisible Command: `<invisible xmlns='urn:xmpp:invisible:1' probe='…'/>` and
//! `<visible/>` in an IQ-set to the user's own server. The server behind the proxy does not
//! know them, so the proxy consumes the IQ and answers it.
//!
//! - `invisible`: everyone who was shown the resource is told `unavailable` (rule 2), and
//!   from then on undirected presence is withheld (rule 3, [`super::presence`]). With
//!   `probe='true'` the proxy probes the contacts the user is subscribed to, so that the
//!   client still learns their presence (rule 9). XEP-0018 exceptions are cleared.
//! - `visible`: the session is as if it had not yet sent initial presence; nothing is
//!   broadcast until the client sends available presence. Entities that got directed presence
//!   while invisible stay remembered and get `unavailable` when the session ends.

use bytes::Bytes;

use super::report::{Command, Protocol, Report};
use super::{Action, Mode, Policy, presence, privacy_list};
use crate::ns;
use crate::xml::Element;
use crate::xml::element::escape;

// slixmpp 1.8's XEP-0186 plugin (Debian's `python3-slixmpp`) sends its `<invisible/>` in
// `ns::INVISIBLE_0` but its `<visible/>` in `ns::SLIXMPP_VISIBLE`, which no version of the XEP
// has. A `<visible/>` in it can only mean one thing and is accepted; anything else in it is
// refused.

/// Handles the IQ-set `iq` whose payload is `cmd` (`invisible` or `visible`).
pub(super) fn command(
    p: &mut Policy,
    iq: &Element,
    cmd: &Element,
    now: u64,
    out: &mut Vec<Action>,
) {
    let id = iq.attr("id").unwrap_or("");
    let from = iq.attr("to");
    if cmd.name == "invisible" {
        let Some(probe) = parse_bool(cmd.attr("probe")) else {
            out.push(Action::ToClient(error_reply(id, from, "bad-request")));
            return;
        };
        p.report(command_report(Command::Invisible));
        go_invisible(p, probe, now, out);
    } else {
        p.report(command_report(Command::Visible));
        go_visible(p, out);
    }
    out.push(Action::ToClient(result_reply(id, from)));
}

fn command_report(command: Command) -> Report {
    Report::InvisibilityCommand {
        protocol: Protocol::Xep0186,
        command,
    }
}

/// An IQ-set in [`ns::SLIXMPP_VISIBLE`] that is not `<visible/>`: what it asks is unclear, so
/// nothing changes and the client gets `modify/bad-request`.
pub(super) fn refuse(iq: &Element, out: &mut Vec<Action>) {
    out.push(Action::ToClient(error_reply(
        iq.attr("id").unwrap_or(""),
        iq.attr("to"),
        "bad-request",
    )));
}

pub(super) fn go_invisible(p: &mut Policy, probe: bool, now: u64, out: &mut Vec<Action>) {
    p.xep0018_global = false;
    p.invisible_since.get_or_insert(now);
    p.probe = probe;
    p.probe_pending = false;
    if p.uses_list() {
        privacy_list::hide_from_everyone(p, probe, false, out);
        return;
    }
    hide_from_everyone(p, out);
    p.vis.set(Mode::Invisible);
    if probe {
        probe_contacts(p, out);
    }
}

fn go_visible(p: &mut Policy, out: &mut Vec<Action>) {
    p.xep0018_global = false;
    p.invisible_since = None;
    p.probe = false;
    p.probe_pending = false;
    p.fan_out_pending = false;
    if p.uses_list() {
        privacy_list::visible_fresh_start(p, out);
        return;
    }
    p.vis.set(Mode::Visible);
    if !p.server_broadcasting {
        // "As if it had just started and not yet sent initial presence."
        p.available = false;
        p.last_presence = None;
    }
}

/// Rule 2: `unavailable` to every entity that would get it had the client sent unavailable.
pub(super) fn hide_from_everyone(p: &mut Policy, out: &mut Vec<Action>) {
    presence::stop_server_broadcast(p, out);
    let unavailable = presence::UNAVAILABLE;
    presence::tell_unavailable(p, &unavailable, |_| true, out);
}

/// Rule 9: probes to the contacts whose presence the user receives (`to`/`both`). The server
/// answers a silent session's probes with the contacts' presence; the contacts see nothing.
pub(super) fn probe_contacts(p: &mut Policy, out: &mut Vec<Action>) {
    let Some(roster) = p.roster.as_ref() else {
        p.probe_pending = true;
        return;
    };
    p.probe_pending = false;
    for contact in roster.subscriptions() {
        out.push(Action::ToServer(Bytes::from(format!(
            "<presence type='probe' to='{}'/>",
            escape(contact.as_str())
        ))));
    }
}

/// XML Schema boolean, default false; `None` for anything else.
fn parse_bool(v: Option<&str>) -> Option<bool> {
    match v.map(str::trim) {
        None => Some(false),
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(_) => None,
    }
}

fn result_reply(id: &str, from: Option<&str>) -> Bytes {
    Bytes::from(format!(
        "<iq type='result' id='{}'{}/>",
        escape(id),
        from_attr(from)
    ))
}

fn error_reply(id: &str, from: Option<&str>, condition: &str) -> Bytes {
    Bytes::from(format!(
        "<iq type='error' id='{}'{}><error type='modify'><{condition} \
         xmlns='{}'/></error></iq>",
        escape(id),
        from_attr(from),
        ns::STANZAS
    ))
}

fn from_attr(from: Option<&str>) -> String {
    from.map(|f| format!(" from='{}'", escape(f)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::parse_bool;

    #[test]
    fn probe_is_an_xml_boolean() {
        assert_eq!(parse_bool(None), Some(false));
        assert_eq!(parse_bool(Some("1")), Some(true));
        assert_eq!(parse_bool(Some("true")), Some(true));
        assert_eq!(parse_bool(Some("0")), Some(false));
        assert_eq!(parse_bool(Some("false")), Some(false));
        assert_eq!(parse_bool(Some("yes")), None);
        assert_eq!(parse_bool(Some("TRUE")), None);
    }
}
