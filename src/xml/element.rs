//! A small owned element tree, parsed with quick-xml, for the few stanzas the proxy inspects or
//! generates; plus cheap start-tag helpers that work on the framer's raw bytes.
//!
//! Limitations, by design:
//! - Prefixes are not kept: elements are serialized with default-namespace `xmlns='…'`
//!   declarations, and namespace declarations are not kept as attributes. Prefixed attributes
//!   other than `xml:*` therefore cannot be re-serialized with their binding; stanzas that carry
//!   them should be forwarded as raw bytes instead of through [`Element::to_xml`].

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::{Namespace, PrefixDeclaration, QName, ResolveResult};

use super::FrameError;
use super::framer::{
    MAX_DEPTH, check_chars, decode_ref, is_valid_qname, local_name, scan_start_tag, unescape_attr,
};

fn nwf(why: &'static str) -> FrameError {
    FrameError::NotWellFormed(why)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Local name.
    pub name: String,
    /// Resolved namespace URI, `""` if none.
    pub ns: String,
    /// Unescaped values. `xmlns` / `xmlns:*` declarations are not included; prefixed attributes
    /// are keyed `prefix:local` (e.g. `xml:lang`).
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// Parse one complete element (as returned by the framer), resolving namespaces.
    /// `default_ns` is the stream's default namespace (e.g. `jabber:client`), `prefixes` extra
    /// prefix bindings inherited from the stream header (e.g. `("stream", ns::STREAMS)`).
    pub fn parse(
        raw: &[u8],
        default_ns: &str,
        prefixes: &[(&str, &str)],
    ) -> Result<Element, FrameError> {
        check_chars(raw)?;
        let text = std::str::from_utf8(raw).map_err(|_| nwf("invalid UTF-8"))?;
        let mut reader = NsReader::from_str(text);
        let resolver = reader.resolver_mut();
        if !default_ns.is_empty() {
            resolver
                .add(PrefixDeclaration::Default, Namespace(default_ns))
                .map_err(|_| nwf("invalid inherited namespace"))?;
        }
        for (p, ns) in prefixes {
            resolver
                .add(PrefixDeclaration::Named(p), Namespace(ns))
                .map_err(|_| nwf("invalid inherited namespace"))?;
        }

        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let (res, event) = reader
                .read_resolved_event()
                .map_err(|_| nwf("malformed element"))?;
            let ns = match res {
                ResolveResult::Bound(ns) => Some(ns.into_inner().to_owned()),
                ResolveResult::Unbound => Some(String::new()),
                ResolveResult::Unknown(_) => None,
            };
            let (start, empty) = match event {
                Event::Start(s) => (s, false),
                Event::Empty(s) => (s, true),
                Event::End(_) => {
                    let done = stack.pop().ok_or(nwf("unexpected close tag"))?;
                    attach(&mut stack, &mut root, done);
                    continue;
                }
                Event::Text(t) => {
                    push_text(&mut stack, &t.xml10_content())?;
                    continue;
                }
                Event::CData(c) => {
                    if stack.is_empty() {
                        return Err(nwf("CDATA outside the element"));
                    }
                    push_text(&mut stack, &c.xml10_content())?;
                    continue;
                }
                Event::GeneralRef(r) => {
                    let c = decode_ref(r.xml10_content().as_bytes())?;
                    push_text(&mut stack, c.encode_utf8(&mut [0; 4]))?;
                    continue;
                }
                Event::Comment(_) => return Err(FrameError::RestrictedXml("comment")),
                Event::DocType(_) => return Err(FrameError::RestrictedXml("doctype")),
                Event::PI(_) | Event::Decl(_) => {
                    return Err(FrameError::RestrictedXml("processing instruction"));
                }
                Event::Eof => break,
            };
            if root.is_some() {
                return Err(nwf("content after the element"));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(nwf("elements nested too deeply"));
            }
            let ns = ns.ok_or(nwf("unbound prefix"))?;
            let mut el = Element::new(start.local_name().into_inner(), &ns);
            for attr in start.attributes() {
                let attr = attr.map_err(|_| nwf("malformed attribute"))?;
                let key: QName = attr.key;
                if key.as_namespace_binding().is_some() {
                    continue;
                }
                if key.prefix().is_some()
                    && matches!(
                        reader.resolver().resolve_attribute(key).0,
                        ResolveResult::Unknown(_)
                    )
                {
                    return Err(nwf("unbound prefix"));
                }
                if attr.value.contains('<') {
                    return Err(nwf("'<' in attribute value"));
                }
                let value = unescape_attr(attr.value.as_bytes())?;
                el.attrs.push((key.into_inner().to_owned(), value));
            }
            if empty {
                attach(&mut stack, &mut root, el);
            } else {
                stack.push(el);
            }
        }
        if !stack.is_empty() {
            return Err(nwf("unclosed element"));
        }
        root.ok_or(nwf("no element"))
    }

    pub fn new(name: &str, ns: &str) -> Element {
        Element {
            name: name.to_owned(),
            ns: ns.to_owned(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn with_attr(mut self, k: &str, v: &str) -> Self {
        self.set_attr(k, v);
        self
    }

    /// Set (replace or append) attribute `k`.
    pub fn set_attr(&mut self, k: &str, v: &str) {
        match self.attrs.iter_mut().find(|(key, _)| key == k) {
            Some((_, val)) => *val = v.to_owned(),
            None => self.attrs.push((k.to_owned(), v.to_owned())),
        }
    }

    pub fn remove_attr(&mut self, k: &str) -> Option<String> {
        let i = self.attrs.iter().position(|(key, _)| key == k)?;
        Some(self.attrs.remove(i).1)
    }

    pub fn with_child(mut self, c: Element) -> Self {
        self.push_child(c);
        self
    }

    pub fn push_child(&mut self, c: Element) {
        self.children.push(Node::Element(c));
    }

    pub fn with_text(mut self, t: &str) -> Self {
        self.children.push(Node::Text(t.to_owned()));
        self
    }

    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    /// First child element with this local name and namespace.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name && e.ns == ns)
    }

    pub fn child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.name == name && e.ns == ns => Some(e),
            _ => None,
        })
    }

    /// Element children.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Keep the element children for which `f` is true; text nodes are kept.
    pub fn retain_children(&mut self, mut f: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => f(e),
            Node::Text(_) => true,
        });
    }

    /// Concatenated direct text children.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    /// Serialize. `xmlns='…'` is emitted on this element unless `ns == parent_ns`, and on each
    /// child unless it has its parent's namespace. Attribute values use single quotes.
    pub fn to_xml(&self, parent_ns: &str) -> String {
        let mut out = String::new();
        self.write_xml(parent_ns, &mut out);
        out
    }

    fn write_xml(&self, parent_ns: &str, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        if self.ns != parent_ns {
            out.push_str(" xmlns='");
            escape_into(&self.ns, out, true);
            out.push('\'');
        }
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            escape_into(v, out, true);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_xml(&self.ns, out),
                Node::Text(t) => escape_into(t, out, false),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(el)),
        None => *root = Some(el),
    }
}

/// Append text to the open element, merging with a preceding text node. Outside the element
/// only whitespace is allowed.
fn push_text(stack: &mut [Element], t: &str) -> Result<(), FrameError> {
    let Some(parent) = stack.last_mut() else {
        if t.bytes().all(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
            return Ok(());
        }
        return Err(nwf("text outside the element"));
    };
    if t.is_empty() {
        return Ok(());
    }
    match parent.children.last_mut() {
        Some(Node::Text(prev)) => prev.push_str(t),
        _ => parent.children.push(Node::Text(t.to_owned())),
    }
    Ok(())
}

/// Escape `s` into `out`. `attr`: also TAB/LF (which attribute normalization would turn into
/// spaces) and both quotes. CR is always escaped since parsers rewrite it to LF.
fn escape_into(s: &str, out: &mut String, attr: bool) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            '\'' if attr => out.push_str("&apos;"),
            '"' if attr => out.push_str("&quot;"),
            '\n' if attr => out.push_str("&#xA;"),
            '\t' if attr => out.push_str("&#x9;"),
            c => out.push(c),
        }
    }
}

/// Escape for an attribute value (either quote) or text: `& < > " '` and TAB/LF/CR as character
/// references, so the value survives parsing unchanged in both contexts.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'', '\t', '\n', '\r']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    escape_into(s, &mut out, true);
    Cow::Owned(out)
}

/// Cheap look at a top-level element's start tag only (no tree): local name and unescaped
/// attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartTag {
    /// Local name (prefix stripped).
    pub name: String,
    /// Every attribute as written (keys are qualified names, including `xmlns` declarations),
    /// values unescaped and normalized. Duplicate names are rejected.
    pub attrs: Vec<(String, String)>,
}

impl StartTag {
    /// Parse the start tag at the beginning of `raw` (the rest of `raw` is not looked at).
    pub fn parse(raw: &[u8]) -> Result<StartTag, FrameError> {
        let spans = scan_start_tag(raw)?;
        let utf8 = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| nwf("invalid UTF-8"))
        };
        let qname = raw.get(spans.name.clone()).unwrap_or_default();
        let name = utf8(local_name(qname))?;
        let attrs = spans
            .attrs
            .iter()
            .map(|a| {
                let k = utf8(raw.get(a.name.clone()).unwrap_or_default())?;
                let v = unescape_attr(raw.get(a.value.clone()).unwrap_or_default())?;
                Ok((k, v))
            })
            .collect::<Result<Vec<_>, FrameError>>()?;
        Ok(StartTag { name, attrs })
    }

    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Copy of a top-level element's raw bytes with attribute `name` set to `value` in its start tag
/// (replacing an existing one of that name, else inserted right after the element name); every
/// other byte is unchanged.
pub fn set_start_tag_attr(raw: &[u8], name: &str, value: &str) -> Result<Bytes, FrameError> {
    if !is_valid_qname(name.as_bytes()) {
        return Err(nwf("invalid attribute name"));
    }
    let spans = scan_start_tag(raw)?;
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    escape_into(value, &mut quoted, true);
    quoted.push('\'');

    let existing = spans
        .attrs
        .iter()
        .find(|a| raw.get(a.name.clone()) == Some(name.as_bytes()));
    // (keep up to, insert, resume from)
    let (keep, insert, resume) = match existing {
        // Replace the quoted value, quotes included.
        Some(a) => (a.value.start.saturating_sub(1), quoted, a.end),
        None => {
            let at = spans.name.end;
            (at, format!(" {name}={quoted}"), at)
        }
    };
    let mut out = BytesMut::with_capacity(raw.len() + insert.len());
    out.extend_from_slice(raw.get(..keep).unwrap_or_default());
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(raw.get(resume..).unwrap_or_default());
    Ok(out.freeze())
}

/// Copy of a top-level element's raw bytes without attribute `name` (with its leading
/// whitespace) in its start tag; every other byte is unchanged.
pub fn remove_start_tag_attr(raw: &[u8], name: &str) -> Result<Bytes, FrameError> {
    let spans = scan_start_tag(raw)?;
    let existing = spans
        .attrs
        .iter()
        .find(|a| raw.get(a.name.clone()) == Some(name.as_bytes()));
    let Some(a) = existing else {
        return Ok(Bytes::copy_from_slice(raw));
    };
    let mut out = BytesMut::with_capacity(raw.len());
    out.extend_from_slice(raw.get(..a.lead).unwrap_or_default());
    out.extend_from_slice(raw.get(a.end..).unwrap_or_default());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::{CLIENT, STREAMS as STREAMS_NS};

    fn parse(s: &str) -> Result<Element, FrameError> {
        Element::parse(s.as_bytes(), CLIENT, &[("stream", STREAMS_NS)])
    }

    #[test]
    fn namespace_resolution() {
        let e = parse(
            "<message to='a@b' xmlns:x='urn:x'><body>hi</body>\
<x:data><inner/></x:data><c xmlns='urn:c'><d/></c><stream:error/></message>",
        )
        .expect("parse");
        assert_eq!((e.name.as_str(), e.ns.as_str()), ("message", CLIENT));
        assert_eq!(e.attrs, vec![("to".to_owned(), "a@b".to_owned())]);
        let names: Vec<(&str, &str)> = e
            .elements()
            .map(|c| (c.name.as_str(), c.ns.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("body", CLIENT),
                ("data", "urn:x"),
                ("c", "urn:c"),
                ("error", STREAMS_NS)
            ]
        );
        // Unprefixed child of a prefixed element inherits the default namespace.
        let data = e.child("data", "urn:x").expect("data");
        assert_eq!(
            data.child("inner", CLIENT).map(|i| i.name.as_str()),
            Some("inner")
        );
        let c = e.child("c", "urn:c").expect("c");
        assert!(c.child("d", "urn:c").is_some());
        assert_eq!(
            e.child("body", CLIENT).map(Element::text).as_deref(),
            Some("hi")
        );

        let p = parse("<x:presence xmlns:x='jabber:client'/>").expect("parse");
        assert_eq!((p.name.as_str(), p.ns.as_str()), ("presence", CLIENT));
        let none = Element::parse(b"<a><b xmlns=''/></a>", "", &[]).expect("parse");
        assert_eq!(none.ns, "");
        assert_eq!(none.child("b", "").map(|b| b.ns.as_str()), Some(""));
    }

    #[test]
    fn unbound_prefix_and_garbage() {
        assert_eq!(parse("<y:message/>"), Err(nwf("unbound prefix")));
        assert_eq!(parse("<message y:a='1'/>"), Err(nwf("unbound prefix")));
        assert!(matches!(
            parse("<a><b></a>"),
            Err(FrameError::NotWellFormed(_))
        ));
        assert!(matches!(parse("<a>"), Err(FrameError::NotWellFormed(_))));
        assert!(matches!(
            parse("<a/><b/>"),
            Err(FrameError::NotWellFormed(_))
        ));
        assert!(matches!(
            parse("<a b='1' b='2'/>"),
            Err(FrameError::NotWellFormed(_))
        ));
        assert!(matches!(
            parse("<a>\u{1}</a>"),
            Err(FrameError::NotWellFormed(_))
        ));
        assert_eq!(
            parse("<a>&foo;</a>"),
            Err(FrameError::RestrictedXml("entity reference"))
        );
        assert_eq!(
            parse("<a><!--x--></a>"),
            Err(FrameError::RestrictedXml("comment"))
        );
        assert!(parse("").is_err());
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(parse(&deep), Err(nwf("elements nested too deeply")));
    }

    #[test]
    fn unescaping() {
        let e = parse(
            "<message id=\"a&amp;b&quot;c&apos;&#x41;&#66;\" xml:lang='en'>\
<body>1 &lt; 2 &gt; 0 &amp;&#x263A;<![CDATA[<raw> & ]]>\r\nx</body></message>",
        )
        .expect("parse");
        assert_eq!(e.attr("id"), Some("a&b\"c'AB"));
        assert_eq!(e.attr("xml:lang"), Some("en"));
        let body = e.child("body", CLIENT).expect("body");
        assert_eq!(body.text(), "1 < 2 > 0 &\u{263A}<raw> & \nx");
        assert_eq!(body.children.len(), 1, "text nodes merged");
    }

    #[test]
    fn round_trip() {
        let src = "<message to='r@e/b' type='chat' xml:lang='en' note='a&apos;&quot;&lt;&gt;&amp;&#x9;&#xA;'>\
<body>x &lt; y &amp; z\r\n</body><c xmlns='urn:c' k='v'><d>t</d><e xmlns=''/></c>\
<active xmlns='http://jabber.org/protocol/chatstates'/>tail</message>";
        let e = parse(src).expect("parse");
        let xml = e.to_xml(CLIENT);
        assert!(xml.starts_with("<message to='r@e/b'"), "{xml}");
        assert_eq!(parse(&xml).expect("reparse"), e);
        // Relative to another parent namespace, xmlns is declared on the root.
        let xml2 = e.to_xml("");
        assert!(xml2.starts_with("<message xmlns='jabber:client'"), "{xml2}");
        assert_eq!(
            Element::parse(xml2.as_bytes(), "", &[]).expect("reparse"),
            e
        );
    }

    #[test]
    fn parses_framer_output() {
        use crate::xml::{Frame, Framer};
        let mut f = Framer::new(1 << 16);
        f.extend(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
<message type='chat' note='a > b'><body>x &amp; y<![CDATA[ <z> ]]></body></message>\
<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        let mut parsed = Vec::new();
        while let Ok(Some(fr)) = f.next_frame() {
            if let Frame::Element { raw, .. } = fr {
                parsed.push(parse(std::str::from_utf8(&raw).expect("utf8")).expect("parse"));
            }
        }
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].attr("note"), Some("a > b"));
        assert_eq!(
            parsed[0]
                .child("body", CLIENT)
                .map(Element::text)
                .as_deref(),
            Some("x & y <z> ")
        );
        assert_eq!(
            (parsed[1].name.as_str(), parsed[1].ns.as_str()),
            ("error", STREAMS_NS)
        );
    }

    #[test]
    fn builders() {
        let mut e = Element::new("iq", CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "1")
            .with_child(Element::new("query", "jabber:iq:privacy").with_text("a<b"));
        e.set_attr("type", "get");
        assert_eq!(e.attr("type"), Some("get"));
        assert_eq!(e.remove_attr("id").as_deref(), Some("1"));
        assert_eq!(e.remove_attr("id"), None);
        e.push_child(Element::new("x", "urn:x"));
        assert_eq!(
            e.to_xml(CLIENT),
            "<iq type='get'><query xmlns='jabber:iq:privacy'>a&lt;b</query><x xmlns='urn:x'/></iq>"
        );
        e.child_mut("query", "jabber:iq:privacy")
            .expect("query")
            .set_attr("n", "1");
        e.retain_children(|c| c.name != "x");
        assert_eq!(e.elements().count(), 1);
        assert_eq!(escape("plain"), Cow::Borrowed("plain"));
        assert_eq!(escape("<'&\">"), "&lt;&apos;&amp;&quot;&gt;");
    }

    #[test]
    fn start_tag() {
        let t = StartTag::parse(
            b"<x:presence xmlns:x='jabber:client' to=\"a@b/c\" type = 'unavailable' \
id='&lt;1&gt;'><status>a > b</status></x:presence>",
        )
        .expect("parse");
        assert_eq!(t.name, "presence");
        assert_eq!(t.attr("to"), Some("a@b/c"));
        assert_eq!(t.attr("type"), Some("unavailable"));
        assert_eq!(t.attr("id"), Some("<1>"));
        assert_eq!(t.attr("xmlns:x"), Some("jabber:client"));
        assert!(StartTag::parse(b"<presence to='a' to='b'/>").is_err());
        assert!(StartTag::parse(b"<presence to='a<'/>").is_err());
        assert!(StartTag::parse(b"<presence to='a'").is_err());
        assert!(StartTag::parse(b"presence").is_err());
        assert_eq!(
            StartTag::parse(b"<presence/>").expect("parse"),
            StartTag {
                name: "presence".into(),
                attrs: vec![]
            }
        );
    }

    #[test]
    fn set_and_remove_start_tag_attr() {
        let set = |raw: &str, k: &str, v: &str| {
            String::from_utf8(
                set_start_tag_attr(raw.as_bytes(), k, v)
                    .expect("set")
                    .to_vec(),
            )
            .expect("utf8")
        };
        let rm = |raw: &str, k: &str| {
            String::from_utf8(
                remove_start_tag_attr(raw.as_bytes(), k)
                    .expect("rm")
                    .to_vec(),
            )
            .expect("utf8")
        };
        assert_eq!(set("<presence/>", "to", "a@b"), "<presence to='a@b'/>");
        assert_eq!(
            set("<presence><show>away</show></presence>", "to", "o'b"),
            "<presence to='o&apos;b'><show>away</show></presence>"
        );
        assert_eq!(
            set("<presence id=\"x>y\" to=\"old\" type='a/b'/>", "to", "new"),
            "<presence id=\"x>y\" to='new' type='a/b'/>"
        );
        assert_eq!(
            set("<presence  to = 'old'  >t</presence>", "to", "n"),
            "<presence  to = 'n'  >t</presence>"
        );
        assert_eq!(
            set("<presence to='x'><x to='keep'/></presence>", "to", "y"),
            "<presence to='y'><x to='keep'/></presence>"
        );
        assert_eq!(
            rm("<presence id='1' to=\"a>b\" type='u'/>", "to"),
            "<presence id='1' type='u'/>"
        );
        assert_eq!(rm("<presence to='a'/>", "to"), "<presence/>");
        assert_eq!(
            rm("<presence\n\tto='a'>x</presence>", "to"),
            "<presence>x</presence>"
        );
        assert_eq!(rm("<presence id='1'/>", "to"), "<presence id='1'/>");
        assert!(set_start_tag_attr(b"<presence/>", "bad name", "v").is_err());
        assert!(set_start_tag_attr(b"<presence to='a' to='b'/>", "to", "v").is_err());
        assert!(remove_start_tag_attr(b"<presence", "to").is_err());
        // The result still parses, with the new value.
        let out =
            set_start_tag_attr(b"<presence type='unavailable'/>", "to", "a&b<c").expect("set");
        let t = StartTag::parse(&out).expect("parse");
        assert_eq!(t.attr("to"), Some("a&b<c"));
    }
}
