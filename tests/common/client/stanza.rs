//! The received XML as a small tree: [`Stanza`] (a top-level element) and [`Child`], with
//! the predicates the tests match on; JID helpers; XML escaping.

use std::borrow::Cow;
use std::time::Instant;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::{NS_ROSTER, NS_STREAM};

const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// A parsed element below a stanza: local name, resolved namespace,
/// attributes as written (including `xmlns` declarations), children, and the
/// concatenated text directly inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Child {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Child>,
    pub text: String,
}

/// One top-level element received (stanza, stream error, SM element, ...).
#[derive(Debug, Clone)]
pub struct Stanza {
    /// The element exactly as received.
    pub raw: String,
    /// Local name (`presence`, `message`, `iq`, `error` for `<stream:error>`, ...).
    pub name: String,
    /// Resolved namespace (`jabber:client`, `http://etherx.jabber.org/streams`, ...).
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Child>,
    pub text: String,
    /// When it was received.
    pub at: Instant,
    /// Position in the client's log.
    pub index: usize,
}

macro_rules! element_helpers {
    () => {
        pub fn attr(&self, k: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        }

        /// First direct child with this local name.
        pub fn child(&self, name: &str) -> Option<&Child> {
            self.children.iter().find(|c| c.name == name)
        }

        /// First direct child with this local name and namespace.
        pub fn child_ns(&self, name: &str, ns: &str) -> Option<&Child> {
            self.children.iter().find(|c| c.name == name && c.ns == ns)
        }

        /// All direct children with this local name.
        pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Child> + 'a {
            self.children.iter().filter(move |c| c.name == name)
        }

        /// First descendant (depth first) with this local name.
        pub fn find(&self, name: &str) -> Option<&Child> {
            find_in(&self.children, &|c| c.name == name)
        }

        /// First descendant (depth first) with this local name and namespace.
        pub fn find_ns(&self, name: &str, ns: &str) -> Option<&Child> {
            find_in(&self.children, &|c| c.name == name && c.ns == ns)
        }

        /// Text of the first direct child with this local name.
        pub fn child_text(&self, name: &str) -> Option<&str> {
            self.child(name).map(|c| c.text.as_str())
        }
    };
}

impl Child {
    element_helpers!();
}

/// The first of `children` and their descendants (depth first) that is `wanted`.
fn find_in<'a>(children: &'a [Child], wanted: &dyn Fn(&Child) -> bool) -> Option<&'a Child> {
    for c in children {
        if wanted(c) {
            return Some(c);
        }
        if let Some(found) = find_in(&c.children, wanted) {
            return Some(found);
        }
    }
    None
}

impl Stanza {
    element_helpers!();

    pub fn from(&self) -> Option<&str> {
        self.attr("from")
    }

    pub fn to(&self) -> Option<&str> {
        self.attr("to")
    }

    pub fn id(&self) -> Option<&str> {
        self.attr("id")
    }

    pub fn type_(&self) -> Option<&str> {
        self.attr("type")
    }

    /// `from` matches: a full JID exactly, a bare JID (no `/`) any of its resources.
    pub fn is_from(&self, bare_or_full: &str) -> bool {
        self.from().is_some_and(|f| jid_matches(f, bare_or_full))
    }

    /// A `<presence/>` (of any type) from this bare or full JID.
    pub fn is_presence_from(&self, bare_or_full: &str) -> bool {
        self.name == "presence" && self.is_from(bare_or_full)
    }

    /// `None` = available.
    pub fn presence_type(&self) -> Option<&str> {
        self.type_()
    }

    pub fn is_available_from(&self, bare_or_full: &str) -> bool {
        self.is_presence_from(bare_or_full) && self.presence_type().is_none()
    }

    pub fn is_unavailable_from(&self, bare_or_full: &str) -> bool {
        self.is_presence_from(bare_or_full) && self.presence_type() == Some("unavailable")
    }

    pub fn is_message_from(&self, bare_or_full: &str) -> bool {
        self.name == "message" && self.is_from(bare_or_full)
    }

    /// `<body/>` text of a message.
    pub fn body(&self) -> Option<&str> {
        self.child_text("body")
    }

    /// An IQ reply (`result` or `error`) with this id.
    pub fn is_iq_reply(&self, id: &str) -> bool {
        self.name == "iq"
            && self.id() == Some(id)
            && matches!(self.type_(), Some("result") | Some("error"))
    }

    /// `<stream:error/>`.
    pub fn is_stream_error(&self) -> bool {
        self.name == "error" && self.ns == NS_STREAM
    }

    /// The defined condition of a stanza or stream error (`bad-request`, ...).
    pub fn error_condition(&self) -> Option<&str> {
        let err = if self.is_stream_error() {
            return self
                .children
                .iter()
                .find(|c| c.ns == "urn:ietf:params:xml:ns:xmpp-streams" && c.name != "text")
                .map(|c| c.name.as_str());
        } else {
            self.child("error")?
        };
        err.children
            .iter()
            .find(|c| c.ns == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name != "text")
            .map(|c| c.name.as_str())
    }

    /// A roster push (`<iq type='set'><query xmlns='jabber:iq:roster'><item jid=…/>`)
    /// for `jid`, with this subscription state (any if `None`).
    pub fn is_roster_push(&self, jid: &str, subscription: Option<&str>) -> bool {
        self.name == "iq"
            && self.type_() == Some("set")
            && self.child_ns("query", NS_ROSTER).is_some_and(|q| {
                q.children_named("item").any(|i| {
                    i.attr("jid").is_some_and(|j| j.eq_ignore_ascii_case(jid))
                        && subscription.is_none_or(|s| i.attr("subscription") == Some(s))
                })
            })
    }
}

/// The bare part of a JID.
pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// `jid` matches `want`: exactly if `want` is full, by bare JID otherwise.
pub fn jid_matches(jid: &str, want: &str) -> bool {
    if want.contains('/') {
        let (jb, jr) = jid.split_once('/').unwrap_or((jid, ""));
        let (wb, wr) = want.split_once('/').unwrap_or((want, ""));
        jb.eq_ignore_ascii_case(wb) && jr == wr
    } else {
        bare(jid).eq_ignore_ascii_case(want)
    }
}

/// XML-escape text or an attribute value.
pub fn esc(s: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(s)
}

pub(super) type Scope = Vec<(String, String)>;

fn lookup_ns(prefix: &str, scopes: &[Scope]) -> String {
    if prefix == "xml" {
        return NS_XML.to_string();
    }
    for scope in scopes.iter().rev() {
        if let Some((_, ns)) = scope.iter().rev().find(|(p, _)| p == prefix) {
            return ns.clone();
        }
    }
    String::new()
}

pub(super) fn attrs_of(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| format!("bad attribute: {e}"))?;
        let key = a.key.as_ref().to_string();
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| format!("bad attribute value: {e}"))?
            .into_owned();
        out.push((key, value));
    }
    Ok(out)
}

/// The namespace declarations among an element's attributes.
pub(super) fn scope_of(attrs: &[(String, String)]) -> Scope {
    let mut scope = Scope::new();
    for (k, v) in attrs {
        if k == "xmlns" {
            scope.push((String::new(), v.clone()));
        } else if let Some(p) = k.strip_prefix("xmlns:") {
            scope.push((p.to_string(), v.clone()));
        }
    }
    scope
}

/// Opens an element: its declarations become a new scope pushed on `scopes`.
fn open_element(e: &BytesStart<'_>, scopes: &mut Vec<Scope>) -> Result<Child, String> {
    let qname = e.name().as_ref().to_string();
    let attrs = attrs_of(e)?;
    scopes.push(scope_of(&attrs));
    let (prefix, local) = qname.split_once(':').unwrap_or(("", &qname));
    Ok(Child {
        name: local.to_string(),
        ns: lookup_ns(prefix, scopes),
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

/// Parses one complete element, with `base` as the namespace context around it.
pub fn parse_element(raw: &str, base: &[(String, String)]) -> Result<Child, String> {
    let mut reader = Reader::from_str(raw);
    let mut scopes: Vec<Scope> = vec![base.to_vec()];
    let mut stack: Vec<Child> = Vec::new();
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("XML error at {}: {e}", reader.error_position()))?;
        let done = match ev {
            Event::Start(e) => {
                stack.push(open_element(&e, &mut scopes)?);
                None
            }
            Event::Empty(e) => {
                let el = open_element(&e, &mut scopes)?;
                scopes.pop();
                Some(el)
            }
            Event::End(_) => {
                scopes.pop();
                Some(stack.pop().ok_or("unbalanced end tag")?)
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
                None
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t);
                }
                None
            }
            Event::GeneralRef(r) => {
                if let Some(top) = stack.last_mut() {
                    if r.is_char_ref() {
                        match r.resolve_char_ref() {
                            Ok(Some(c)) => top.text.push(c),
                            _ => return Err(format!("bad character reference &{};", &*r)),
                        }
                    } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(&r) {
                        top.text.push_str(s);
                    } else {
                        return Err(format!("unknown entity &{};", &*r));
                    }
                }
                None
            }
            Event::Eof => return Err("incomplete element".to_string()),
            _ => None,
        };
        if let Some(el) = done {
            match stack.last_mut() {
                Some(parent) => parent.children.push(el),
                None => return Ok(el),
            }
        }
    }
}

impl Stanza {
    /// Parses a top-level element; never fails (a parse error gives a
    /// stanza named `!parse-error` with the error as text).
    pub fn parse(raw: &str, base: &[(String, String)], index: usize) -> Stanza {
        let (el, raw) = match parse_element(raw, base) {
            Ok(el) => (el, raw.to_string()),
            Err(e) => (
                Child {
                    name: "!parse-error".to_string(),
                    text: e,
                    ..Child::default()
                },
                raw.to_string(),
            ),
        };
        Stanza {
            raw,
            name: el.name,
            ns: el.ns,
            attrs: el.attrs,
            children: el.children,
            text: el.text,
            at: Instant::now(),
            index,
        }
    }
}
