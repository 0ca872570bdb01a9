//! Stanzas from the server: what the policy learns from them, and the few it changes.
//!
//! - the bind result gives the session's full JID, and triggers the proxy's own roster query;
//! - the answer to that query is consumed (it never reaches the client) and builds the roster
//!   view; roster pushes keep it current, and a new subscriber who may see the resource is
//!   shown it;
//! - the answer to the client's disco#info query to its server gains the invisible features;
//! - presence of type `invisible`/`visible` never reaches the client (XEP-0018 §4.1).

use bytes::Bytes;
use jid::{FullJid, Jid};

use super::roster::Roster;
use super::{Action, Policy, Violation, presence, privacy_list, xep0186};
use crate::ns;
use crate::xml::{Element, StartTag};

impl Policy {
    pub(super) fn server_presence(
        &mut self,
        raw: &Bytes,
        out: &mut Vec<Action>,
    ) -> Result<(), Violation> {
        let tag = StartTag::parse(raw)?;
        match tag.attr("type") {
            Some("invisible" | "visible") => {}
            Some("error") if privacy_list::is_bounce(self, raw) => {}
            _ => out.push(Action::ToClient(raw.clone())),
        }
        Ok(())
    }

    pub(super) fn server_iq(
        &mut self,
        raw: &Bytes,
        out: &mut Vec<Action>,
    ) -> Result<(), Violation> {
        let tag = StartTag::parse(raw)?;
        let id = tag.attr("id").unwrap_or("");
        let from = tag.attr("from");
        // The proxy's own privacy-list traffic (and the disco#info that chooses the strategy).
        if matches!(tag.attr("type"), Some("result" | "error"))
            && id.starts_with(&self.id_prefix)
            && id[self.id_prefix.len()..].starts_with("-pl")
            && (self.is_own_account(from) || from.is_some_and(|f| self.is_our_server(f)))
        {
            let iq = Element::parse(raw, ns::CLIENT, &[])?;
            if privacy_list::server_iq(self, &iq, out) {
                return Ok(());
            }
        }
        match tag.attr("type") {
            Some("result" | "error")
                if self.roster_query_id.as_deref() == Some(id)
                    && self.is_own_account(tag.attr("from")) =>
            {
                self.roster_query_id = None;
                let iq = Element::parse(raw, ns::CLIENT, &[])?;
                self.roster_arrived(&iq, out);
                return Ok(());
            }
            Some("result") if self.bind_id.as_deref() == Some(id) => {
                self.bind_id = None;
                let iq = Element::parse(raw, ns::CLIENT, &[])?;
                self.bound(&iq, out);
            }
            Some(kind @ ("result" | "error")) if self.disco_ids.remove(id) && kind == "result" => {
                let mut iq = Element::parse(raw, ns::CLIENT, &[])?;
                if self.is_our_server(iq.attr("from").unwrap_or(""))
                    && add_invisible_features(&mut iq)
                {
                    out.push(Action::ToClient(Bytes::from(iq.to_xml(ns::CLIENT))));
                    return Ok(());
                }
            }
            Some("set") if self.roster.is_some() || self.uses_list() => {
                let iq = Element::parse(raw, ns::CLIENT, &[])?;
                if self.is_own_account(iq.attr("from")) {
                    if privacy_list::own_list_push(self, &iq, out) {
                        return Ok(());
                    }
                    privacy_list::blocklist_push(self, &iq, out);
                }
                if self.roster.is_some() {
                    self.roster_push(&iq, out);
                }
            }
            _ => {}
        }
        out.push(Action::ToClient(raw.clone()));
        Ok(())
    }

    fn bound(&mut self, iq: &Element, out: &mut Vec<Action>) {
        let jid = iq
            .child("bind", ns::BIND)
            .and_then(|b| b.child("jid", ns::BIND))
            .and_then(|j| FullJid::new(j.text().trim()).ok());
        let Some(jid) = jid else {
            tracing::warn!("bind result without a usable JID");
            return;
        };
        self.jid = Some(jid);
        let id = self.next_id("roster");
        out.push(Action::ToServer(Bytes::from(format!(
            "<iq type='get' id='{}'><query xmlns='{}'/></iq>",
            crate::xml::element::escape(&id),
            ns::ROSTER
        ))));
        self.roster_query_id = Some(id);
        privacy_list::bound(self, self.strategy, out);
    }

    fn roster_arrived(&mut self, iq: &Element, out: &mut Vec<Action>) {
        let roster = match (iq.attr("type"), iq.child("query", ns::ROSTER)) {
            (Some("result"), Some(query)) => Roster::from_query(query),
            _ => {
                // Fail closed: with no roster, fan-out reaches only explicit XEP-0018 exceptions.
                tracing::warn!("roster query failed; the roster view stays empty");
                Roster::default()
            }
        };
        tracing::debug!(items = roster.len(), "roster view loaded");
        self.roster = Some(roster);
        if self.fan_out_pending {
            presence::fan_out(self, out);
        }
        if self.probe_pending {
            xep0186::probe_contacts(self, out);
        }
    }

    /// RFC 6121 2.1.6: roster results and pushes come from the user's own account (no `from`,
    /// or the bare JID); anything else is not about the roster.
    fn is_own_account(&self, from: Option<&str>) -> bool {
        match from {
            None => true,
            Some(from) => match (Jid::new(from), &self.jid) {
                (Ok(from), Some(me)) => from.resource().is_none() && from.to_bare() == me.to_bare(),
                _ => false,
            },
        }
    }

    fn roster_push(&mut self, iq: &Element, out: &mut Vec<Action>) {
        if !self.is_own_account(iq.attr("from")) {
            return;
        }
        let (Some(query), Some(roster)) = (iq.child("query", ns::ROSTER), self.roster.as_mut())
        else {
            return;
        };
        let changes = roster.apply(query);
        // While the server broadcasts, it handles subscription changes itself. A silent
        // session's presence comes from the proxy, so the proxy does what the server would:
        // a new subscriber who may see the resource gets the current presence, a former one
        // gets `unavailable` (RFC 6121 3.1.5, 3.2.3).
        if self.server_broadcasting {
            return;
        }
        let current = self.current_presence();
        let unavailable = presence::UNAVAILABLE;
        for change in changes {
            let was = change.before.is_some_and(|s| s.sees_user());
            let is = change.after.is_some_and(|s| s.sees_user());
            let contact = Jid::from(change.jid.clone());
            if is && !was && self.available && self.vis.may_see(&change.jid) {
                presence::show_to(self, &current, contact, out);
            } else if was && !is {
                presence::tell_unavailable(self, &unavailable, |e| *e == contact, out);
            }
        }
    }
}

/// Adds the XEP-0186 features to a disco#info result; false if there was nothing to add to.
fn add_invisible_features(iq: &mut Element) -> bool {
    let Some(query) = iq.child_mut("query", ns::DISCO_INFO) else {
        return false;
    };
    for var in [ns::INVISIBLE_1, ns::INVISIBLE_0] {
        let present = query
            .elements()
            .any(|f| f.name == "feature" && f.attr("var") == Some(var));
        if !present {
            query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", var));
        }
    }
    true
}
