//! The slice of the user's roster that the invisibility rules need: who is subscribed to the
//! user's presence (`from`/`both`: the server would broadcast to them) and whose presence the
//! user receives (`to`/`both`: the targets of `probe='true'`).
//!
//! The proxy learns the roster with a query of its own right after resource binding (the client's
//! own query may be answered with an empty roster-versioning result, which says nothing) and keeps
//! it current with the server's roster pushes.

use std::collections::HashMap;

use jid::BareJid;

use crate::ns;
use crate::xml::Element;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    fn parse(s: Option<&str>) -> Option<Subscription> {
        match s.unwrap_or("none") {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            // "remove" in a push, or garbage: the item leaves the roster view.
            _ => None,
        }
    }

    /// The contact receives the user's presence broadcasts.
    pub fn sees_user(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    /// The user receives the contact's presence (probe target).
    pub fn user_sees(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
}

/// A change that a roster push made, for the rules that react to a new subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterChange {
    pub jid: BareJid,
    pub before: Option<Subscription>,
    pub after: Option<Subscription>,
}

#[derive(Debug, Default, Clone)]
pub struct Roster {
    items: HashMap<BareJid, Subscription>,
}

impl Roster {
    /// Builds the view from a roster query result (`<query xmlns='jabber:iq:roster'>`).
    pub fn from_query(query: &Element) -> Roster {
        let mut roster = Roster::default();
        roster.apply(query);
        roster
    }

    /// Applies the items of a roster result or push; returns what changed.
    pub fn apply(&mut self, query: &Element) -> Vec<RosterChange> {
        let mut changes = Vec::new();
        for item in query
            .elements()
            .filter(|e| e.name == "item" && e.ns == ns::ROSTER)
        {
            // An item whose JID does not parse cannot be addressed by the proxy; skip it.
            let Some(jid) = item.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
                continue;
            };
            let after = Subscription::parse(item.attr("subscription"));
            let before = match after {
                Some(sub) => self.items.insert(jid.clone(), sub),
                None => self.items.remove(&jid),
            };
            if before != after {
                changes.push(RosterChange { jid, before, after });
            }
        }
        changes
    }

    pub fn get(&self, jid: &BareJid) -> Option<Subscription> {
        self.items.get(jid).copied()
    }

    /// Contacts the server would broadcast the user's presence to.
    pub fn subscribers(&self) -> impl Iterator<Item = &BareJid> {
        self.items
            .iter()
            .filter(|(_, s)| s.sees_user())
            .map(|(j, _)| j)
    }

    /// Contacts whose presence the user is subscribed to.
    pub fn subscriptions(&self) -> impl Iterator<Item = &BareJid> {
        self.items
            .iter()
            .filter(|(_, s)| s.user_sees())
            .map(|(j, _)| j)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(items: &[(&str, &str)]) -> Element {
        let mut q = Element::new("query", ns::ROSTER);
        for (jid, sub) in items {
            q.push_child(
                Element::new("item", ns::ROSTER)
                    .with_attr("jid", jid)
                    .with_attr("subscription", sub),
            );
        }
        q
    }

    #[test]
    fn subscribers_and_subscriptions_follow_the_subscription_state() {
        let r = Roster::from_query(&query(&[
            ("a@x", "none"),
            ("b@x", "to"),
            ("c@x", "from"),
            ("d@x", "both"),
        ]));
        let mut subs: Vec<_> = r.subscribers().map(|j| j.to_string()).collect();
        subs.sort();
        assert_eq!(subs, ["c@x", "d@x"]);
        let mut tos: Vec<_> = r.subscriptions().map(|j| j.to_string()).collect();
        tos.sort();
        assert_eq!(tos, ["b@x", "d@x"]);
    }

    #[test]
    fn pushes_update_and_remove_and_normalise_jids() {
        let mut r = Roster::from_query(&query(&[("Joe@Foo.com", "to")]));
        let changes = r.apply(&query(&[("joe@foo.com", "both")]));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].before, Some(Subscription::To));
        assert_eq!(changes[0].after, Some(Subscription::Both));
        assert_eq!(r.len(), 1);
        r.apply(&query(&[("joe@foo.com", "remove")]));
        assert!(r.is_empty());
    }
}
