//! Rewrites of the server's `<stream:features/>` before the client sees them.
//!
//! Removed, because the proxy must see and be able to change every stanza:
//! - compression (XEP-0138): a compressed stream cannot be filtered;
//! - SASL2/Bind2 (XEP-0388/0386): they can enable stream management and bind inline, out of
//!   the proxy's sight (stream management itself is offered: see [`super::sm`]);
//! - STARTTLS: the client leg is already TLS, terminated by the proxy;
//! - SCRAM `-PLUS` mechanisms and `<sasl-channel-binding/>`: the channel binding of the
//!   client's TLS session is not the server's, so channel binding cannot cross the proxy;
//! - the server's entity-caps `<c/>`: its hash no longer matches the disco#info the client
//!   will see through the proxy (which adds the invisible features).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::ns;
use crate::xml::Element;

const REMOVED: &[(&str, &str)] = &[
    ("compression", ns::COMPRESS_FEATURE),
    ("authentication", ns::SASL2),
    ("bind", ns::BIND2),
    ("starttls", ns::TLS),
    ("c", ns::CAPS),
    ("sasl-channel-binding", ns::SASL_CB),
];

static PLUS_WARNED: AtomicBool = AtomicBool::new(false);

/// Returns the features to send to the client, or `None` when the original bytes can go as they are.
pub fn rewrite(raw: &[u8], features: &Element) -> Option<Bytes> {
    let mut out = features.clone();
    let mut changed = false;
    out.retain_children(|child| {
        let removed = REMOVED
            .iter()
            .any(|(name, ns)| child.name == *name && child.ns == *ns)
            || child.name == "sasl-channel-binding";
        changed |= removed;
        !removed
    });
    if let Some(mechanisms) = out.child_mut("mechanisms", ns::SASL) {
        let before = mechanisms.elements().count();
        mechanisms
            .retain_children(|m| !(m.name == "mechanism" && m.text().trim().ends_with("-PLUS")));
        if mechanisms.elements().count() != before {
            changed = true;
            if !PLUS_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the upstream offers SCRAM -PLUS (channel binding), which cannot work through a \
                     TLS-terminating proxy: removed from the offer. Recommended: a plaintext upstream on \
                     loopback or a private network (see the README)"
                );
            }
        }
    }
    if !changed {
        return None;
    }
    Some(serialize(raw, &out))
}

/// Serializes with the prefix the server used for `features` (bound by its stream header,
/// which the client received as it was).
fn serialize(raw: &[u8], features: &Element) -> Bytes {
    let prefix = raw
        .strip_prefix(b"<")
        .and_then(|r| r.iter().position(|&b| b == b':').map(|i| &r[..i]))
        .filter(|p| {
            p.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or("stream");
    let mut s = format!("<{prefix}:features xmlns:{prefix}='{}'>", ns::STREAMS);
    for child in features.elements() {
        s.push_str(&child.to_xml(ns::STREAMS));
    }
    s.push_str(&format!("</{prefix}:features>"));
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(xml: &str) -> Element {
        Element::parse(xml.as_bytes(), "jabber:client", &[("stream", ns::STREAMS)]).unwrap()
    }

    #[test]
    fn strips_what_the_proxy_cannot_relay_and_keeps_the_rest() {
        let raw = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
            <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
            <sm xmlns='urn:xmpp:sm:3'/><ver xmlns='urn:xmpp:features:rosterver'/>\
            <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/>\
            <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>\
            </stream:features>";
        let out = rewrite(raw.as_bytes(), &features(raw)).expect("changed");
        let text = std::str::from_utf8(&out).unwrap();
        let back = features(text);
        let names: Vec<_> = back.elements().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["mechanisms", "sm", "ver"]);
        let mechs: Vec<_> = back
            .child("mechanisms", ns::SASL)
            .unwrap()
            .elements()
            .map(|m| m.text())
            .collect();
        assert_eq!(mechs, ["SCRAM-SHA-1", "PLAIN"]);
        assert!(text.starts_with("<stream:features"));
    }

    #[test]
    fn untouched_features_are_forwarded_as_they_are() {
        let raw =
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>";
        assert!(rewrite(raw.as_bytes(), &features(raw)).is_none());
    }
}
