//! A small real XMPP client for tests, independent of the proxy's code.
//!
//! It connects (plaintext, STARTTLS or XEP-0368 direct TLS), authenticates
//! (SASL PLAIN or SCRAM-SHA-1 via the `sasl` crate), binds a resource, and then
//! a reader task records every top-level element it receives into a log that
//! the test can search ([`Client::wait_for`], [`Client::expect_none`], ...).
//!
//! With [`Opts::sm`] / [`Opts::resume`] it speaks XEP-0198 Stream Management:
//! it counts stanzas both ways, answers the peer's `<r/>` by itself (a
//! separate task writes the `<a/>`, so a busy writer never stalls the reader),
//! and offers [`Client::request_ack`] and [`Client::sm_snapshot`].
//!
//! Set `XMPP_TEST_TRACE=1` to print everything sent and received.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use quick_xml::errors::IllFormedError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sasl::client::Mechanism;
use sasl::client::mechanisms::{Plain, Scram};
use sasl::common::scram::Sha1;
use sasl::common::{ChannelBinding, Credentials};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// XEP-0198 Stream Management.
pub const NS_SM: &str = "urn:xmpp:sm:3";
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Time allowed for the whole connect/login sequence.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time [`Client::close`] waits for the peer to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `Tls::StartTls` is the brief's name
pub enum Tls {
    /// Plaintext connection, then `<starttls/>` (required to be offered).
    StartTls,
    /// XEP-0368: TLS from the first byte, ALPN `xmpp-client`.
    Direct,
    /// Plaintext stream throughout.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    Plain,
    ScramSha1,
}

impl Mech {
    pub fn name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::ScramSha1 => "SCRAM-SHA-1",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub tls: Tls,
    pub mech: Mech,
    pub resource: String,
    /// Stream `to=`, TLS SNI and the name the certificate is verified against.
    pub domain: String,
    /// Send `<presence/>` right after binding.
    pub send_initial_presence: bool,
    /// XEP-0198: after binding, `<enable resume='true'/>` and count/ack stanzas.
    pub sm: bool,
    /// XEP-0198: resume this session instead of binding (implies `sm`).
    pub resume: Option<SmResume>,
    /// Loopback address to connect from (default: the system's choice, 127.0.0.1).
    pub source: Option<std::net::IpAddr>,
    /// Bytes written right after the TCP connect, before anything else (a PROXY protocol
    /// header, as a load balancer in front of the proxy sends).
    pub preamble: Vec<u8>,
}

/// What [`Opts::resume`] resumes.
#[derive(Debug, Clone)]
pub struct SmResume {
    /// `<enabled id=…>` of the session to resume.
    pub previd: String,
    /// Stanzas received from the server in that session (the `h` to send).
    pub h: u32,
    /// The session's full JID (the server does not say it on resumption).
    pub jid: String,
}

impl Opts {
    /// STARTTLS, SCRAM-SHA-1, domain `localhost`, no initial presence.
    pub fn new(resource: &str) -> Self {
        Opts {
            tls: Tls::StartTls,
            mech: Mech::ScramSha1,
            resource: resource.to_string(),
            domain: "localhost".to_string(),
            send_initial_presence: false,
            sm: false,
            resume: None,
            source: None,
            preamble: Vec::new(),
        }
    }

    /// Connects from this (loopback) address.
    pub fn source(mut self, ip: &str) -> Self {
        self.source = Some(ip.parse().expect("source address"));
        self
    }

    /// Sends these bytes first (e.g. a PROXY protocol header).
    pub fn preamble(mut self, bytes: &[u8]) -> Self {
        self.preamble = bytes.to_vec();
        self
    }

    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    pub fn mech(mut self, mech: Mech) -> Self {
        self.mech = mech;
        self
    }

    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_string();
        self
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = resource.to_string();
        self
    }

    pub fn initial_presence(mut self, send: bool) -> Self {
        self.send_initial_presence = send;
        self
    }

    /// XEP-0198: after binding, send `<enable xmlns='urn:xmpp:sm:3'
    /// resume='true'/>` and wait for `<enabled/>` (`<failed/>` makes
    /// [`Client::connect`] fail). The client then counts the stanzas it
    /// receives and sends, answers the server's `<r/>` by itself, and records
    /// the server's `<a/>`.
    pub fn sm(mut self, enable: bool) -> Self {
        self.sm = enable;
        self
    }

    /// XEP-0198: after authentication, instead of binding, send `<resume
    /// previd=… h=…/>`. `<resumed/>` gives a client in SM mode whose inbound
    /// count continues from `h` and whose outbound count starts at the
    /// `<resumed h=…/>`; `<failed/>` makes [`Client::connect`] fail with the
    /// element's raw XML in the error. `full_jid` becomes [`Client::jid`].
    pub fn resume(mut self, previd: &str, h: u32, full_jid: &str) -> Self {
        self.sm = true;
        self.resume = Some(SmResume {
            previd: previd.to_string(),
            h,
            jid: full_jid.to_string(),
        });
        self
    }
}

// ---------------------------------------------------------------------------
// XML tree
// ---------------------------------------------------------------------------

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
            fn walk<'a>(cs: &'a [Child], name: &str) -> Option<&'a Child> {
                for c in cs {
                    if c.name == name {
                        return Some(c);
                    }
                    if let Some(f) = walk(&c.children, name) {
                        return Some(f);
                    }
                }
                None
            }
            walk(&self.children, name)
        }

        /// First descendant (depth first) with this local name and namespace.
        pub fn find_ns(&self, name: &str, ns: &str) -> Option<&Child> {
            fn walk<'a>(cs: &'a [Child], name: &str, ns: &str) -> Option<&'a Child> {
                for c in cs {
                    if c.name == name && c.ns == ns {
                        return Some(c);
                    }
                    if let Some(f) = walk(&c.children, name, ns) {
                        return Some(f);
                    }
                }
                None
            }
            walk(&self.children, name, ns)
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

type Scope = Vec<(String, String)>;

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

fn attrs_of(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
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

/// Opens an element: its declarations become a new scope pushed on `scopes`.
fn open_element(e: &BytesStart<'_>, scopes: &mut Vec<Scope>) -> Result<Child, String> {
    let qname = e.name().as_ref().to_string();
    let attrs = attrs_of(e)?;
    let mut scope = Scope::new();
    for (k, v) in &attrs {
        if k == "xmlns" {
            scope.push((String::new(), v.clone()));
        } else if let Some(p) = k.strip_prefix("xmlns:") {
            scope.push((p.to_string(), v.clone()));
        }
    }
    scopes.push(scope);
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

// ---------------------------------------------------------------------------
// Framing: split the byte stream into stream header / elements / stream end
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Item {
    /// `<stream:stream …>` with its attributes.
    Open(Vec<(String, String)>),
    /// A complete top-level element.
    Element(String),
    /// `</stream:stream>`.
    Close,
}

#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete item, `Ok(None)` if more input is needed.
    fn next(&mut self) -> Result<Option<Item>, String> {
        'outer: loop {
            let ws = self
                .buf
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            self.buf.drain(..ws);
            if self.buf.is_empty() {
                return Ok(None);
            }
            // An end tag at the top level can only be the stream's own
            // (quick-xml rejects it as unmatched, so handle it here).
            if self.buf.starts_with(b"</") {
                let Some(end) = self.buf.iter().position(|&b| b == b'>') else {
                    return Ok(None);
                };
                let tag = String::from_utf8_lossy(&self.buf[2..end])
                    .trim()
                    .to_string();
                if tag.rsplit(':').next() != Some("stream") {
                    return Err(format!("unexpected top-level end tag </{tag}>"));
                }
                self.buf.drain(..=end);
                return Ok(Some(Item::Close));
            }
            let mut r = Reader::from_reader(&self.buf[..]);
            r.config_mut().check_end_names = false;
            let mut depth = 0usize;
            let mut start = 0usize;
            loop {
                let before = r.buffer_position() as usize;
                let ev = match r.read_event() {
                    Ok(ev) => ev,
                    // Input ends inside a tag, comment, CDATA, entity...: wait for more.
                    Err(
                        quick_xml::Error::Syntax(_)
                        | quick_xml::Error::IllFormed(
                            IllFormedError::UnclosedReference | IllFormedError::MissingEndTag(_),
                        ),
                    ) => return Ok(None),
                    Err(e) => {
                        return Err(format!(
                            "XML error at byte {}: {e}; input: {}",
                            r.error_position(),
                            String::from_utf8_lossy(&self.buf)
                        ));
                    }
                };
                let after = r.buffer_position() as usize;
                match ev {
                    Event::Eof => return Ok(None),
                    Event::Start(e) if depth == 0 => {
                        if e.local_name().as_ref() == "stream" {
                            let attrs = attrs_of(&e)?;
                            self.buf.drain(..after);
                            return Ok(Some(Item::Open(attrs)));
                        }
                        depth = 1;
                        start = before;
                    }
                    Event::Start(_) => depth += 1,
                    Event::Empty(_) if depth == 0 => {
                        let raw = String::from_utf8_lossy(&self.buf[before..after]).into_owned();
                        self.buf.drain(..after);
                        return Ok(Some(Item::Element(raw)));
                    }
                    Event::End(_) => {
                        depth -= 1;
                        if depth == 0 {
                            let raw = String::from_utf8_lossy(&self.buf[start..after]).into_owned();
                            self.buf.drain(..after);
                            return Ok(Some(Item::Element(raw)));
                        }
                    }
                    _ if depth == 0 => {
                        // XML declaration, whitespace keepalives, comments, PIs.
                        self.buf.drain(..after);
                        continue 'outer;
                    }
                    _ => {}
                }
            }
        }
    }

    fn pending(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

// ---------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

fn trace_on() -> bool {
    std::env::var_os("XMPP_TEST_TRACE").is_some_and(|v| v == "1")
}

/// Seconds since the first trace line, for trace output.
fn ts() -> f64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The dev CA that the client trusts (and nothing else).
pub fn dev_ca_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join("dev-ca.pem")
}

/// rustls client config trusting only `certs/dev-ca.pem`.
pub fn tls_client_config(alpn: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let path = dev_ca_path();
    for cert in CertificateDer::pem_file_iter(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    {
        roots
            .add(cert.expect("parse dev CA"))
            .expect("add dev CA to root store");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Arc::new(cfg)
}

async fn tls_wrap(io: BoxIo, domain: &str, alpn: bool) -> Result<BoxIo, String> {
    let name = ServerName::try_from(domain.to_string())
        .map_err(|e| format!("bad TLS server name {domain:?}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(tls_client_config(alpn))
        .connect(name, io)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(Box::new(tls))
}

/// The connection while negotiating (before the reader task takes over).
struct Conn {
    io: BoxIo,
    framer: Framer,
    label: String,
    /// Namespace context of the current stream (from its header).
    scope: Scope,
    deadline: tokio::time::Instant,
}

impl Conn {
    async fn send(&mut self, s: &str) -> Result<(), String> {
        if trace_on() {
            eprintln!("{:8.3} [{}] >> {s}", ts(), self.label);
        }
        let fut = async {
            self.io.write_all(s.as_bytes()).await?;
            self.io.flush().await
        };
        tokio::time::timeout_at(self.deadline, fut)
            .await
            .map_err(|_| "timeout while writing".to_string())?
            .map_err(|e| format!("write failed: {e}"))
    }

    async fn next_item(&mut self) -> Result<Item, String> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(item) = self.framer.next()? {
                if trace_on() {
                    eprintln!("{:8.3} [{}] << {item:?}", ts(), self.label);
                }
                return Ok(item);
            }
            let n = tokio::time::timeout_at(self.deadline, self.io.read(&mut buf))
                .await
                .map_err(|_| {
                    format!(
                        "timeout while negotiating; unparsed input: {:?}",
                        self.framer.pending()
                    )
                })?
                .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed while negotiating; unparsed input: {:?}",
                    self.framer.pending()
                ));
            }
            self.framer.push(&buf[..n]);
        }
    }

    /// Next element; a stream error or stream end is an `Err`.
    async fn next_element(&mut self) -> Result<Stanza, String> {
        match self.next_item().await? {
            Item::Element(raw) => {
                let s = Stanza::parse(&raw, &self.scope, 0);
                if s.is_stream_error() {
                    return Err(format!("stream error: {}", s.raw));
                }
                Ok(s)
            }
            Item::Open(a) => Err(format!("unexpected second stream header: {a:?}")),
            Item::Close => Err("peer closed the stream while negotiating".to_string()),
        }
    }

    /// Sends a stream header, reads the peer's and then its features.
    async fn open_stream(
        &mut self,
        domain: &str,
    ) -> Result<(Vec<(String, String)>, Stanza), String> {
        self.framer = Framer::default();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' \
             xmlns:stream='{NS_STREAM}' to='{}' version='1.0' xml:lang='en'>",
            esc(domain)
        ))
        .await?;
        let attrs = match self.next_item().await? {
            Item::Open(attrs) => attrs,
            Item::Element(raw) => return Err(format!("expected stream header, got {raw}")),
            Item::Close => return Err("expected stream header, got stream end".to_string()),
        };
        let mut scope = Scope::new();
        for (k, v) in &attrs {
            if k == "xmlns" {
                scope.push((String::new(), v.clone()));
            } else if let Some(p) = k.strip_prefix("xmlns:") {
                scope.push((p.to_string(), v.clone()));
            }
        }
        self.scope = scope;
        let features = self.next_element().await?;
        if features.name != "features" || features.ns != NS_STREAM {
            return Err(format!("expected stream features, got {}", features.raw));
        }
        Ok((attrs, features))
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

#[derive(Default)]
struct State {
    log: Vec<Stanza>,
    /// Peer sent `</stream:stream>`.
    stream_closed: bool,
    /// TCP EOF or read error.
    eof: bool,
    close_reason: Option<String>,
    parse_error: Option<String>,
    pending: String,
    sm: SmState,
}

/// XEP-0198 bookkeeping (all counters mod 2^32).
#[derive(Default)]
struct SmState {
    /// Counting and answering `<r/>` (after `<enabled/>` or `<resumed/>`).
    active: bool,
    id: Option<String>,
    enabled: Option<Stanza>,
    resumed: Option<Stanza>,
    /// Stanzas received while active (plus the `h` resumed from).
    inbound: u32,
    /// Stanzas sent while active (plus the server's `<resumed h=…/>`).
    outbound: u32,
    /// Latest `h` the peer acknowledged (`<a/>` or `<resumed/>`).
    last_ack: Option<u32>,
    /// `h` of every `<a/>` received, in order.
    acks_from_peer: Vec<u32>,
    /// `<r/>` sent by [`Client::request_ack`].
    requests_sent: usize,
    /// For every `<r/>` from the peer: its log index and the `h` answered.
    answered: Vec<(usize, u32)>,
    /// `<a/>` actually written.
    answers_written: usize,
    /// Sent stanzas not yet acknowledged: (outbound count after it, raw XML).
    unacked: VecDeque<(u32, String)>,
    /// `</stream:stream>` was sent: write nothing more.
    closing: bool,
}

/// `seq` is covered by an acknowledgement of `h` (both mod 2^32).
fn sm_covers(h: u32, seq: u32) -> bool {
    h.wrapping_sub(seq) < 1 << 31
}

/// A client's XEP-0198 state, e.g. taken just before [`Client::drop_tcp`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmSnapshot {
    /// `<enabled id=…>` (the previd to resume).
    pub id: Option<String>,
    /// Stanzas received (the `h` to resume with).
    pub inbound: u32,
    /// Stanzas sent.
    pub outbound: u32,
    /// Latest `h` acknowledged by the peer.
    pub last_ack: Option<u32>,
    /// Sent stanzas not acknowledged yet: (outbound count after it, raw XML).
    pub unacked: Vec<(u32, String)>,
}

impl SmSnapshot {
    /// The unacknowledged stanzas a peer that handled `h` of them has not
    /// seen (to re-send after `<resumed h=…/>`), in order.
    pub fn unacked_after(&self, h: u32) -> Vec<String> {
        self.unacked
            .iter()
            .filter(|(seq, _)| !sm_covers(h, *seq))
            .map(|(_, raw)| raw.clone())
            .collect()
    }
}

impl SmState {
    /// Records an `<a h=…/>` (or `<resumed h=…/>`) from the peer.
    fn peer_acked(&mut self, h: u32) {
        self.last_ack = Some(h);
        while self
            .unacked
            .front()
            .is_some_and(|(seq, _)| sm_covers(h, *seq))
        {
            self.unacked.pop_front();
        }
    }

    /// Counts the stanzas in `xml` (about to be written) as sent.
    fn count_outbound(&mut self, xml: &str) {
        for item in top_level_items(xml) {
            match item {
                Item::Element(raw) => {
                    let s = Stanza::parse(&raw, &[(String::new(), NS_CLIENT.to_string())], 0);
                    if is_sm_stanza(&s) {
                        self.outbound = self.outbound.wrapping_add(1);
                        self.unacked.push_back((self.outbound, raw));
                    }
                }
                Item::Close => self.closing = true,
                Item::Open(_) => {}
            }
        }
    }
}

/// A stanza as XEP-0198 counts it: a top-level `message`, `presence` or `iq`
/// in the `jabber:client` namespace.
fn is_sm_stanza(s: &Stanza) -> bool {
    s.ns == NS_CLIENT && matches!(s.name.as_str(), "message" | "presence" | "iq")
}

/// The complete top-level items in a piece of XML written by the test (up to
/// the first incomplete or malformed one).
fn top_level_items(xml: &str) -> Vec<Item> {
    let mut f = Framer::default();
    f.push(xml.as_bytes());
    let mut out = Vec::new();
    while let Ok(Some(item)) = f.next() {
        out.push(item);
    }
    out
}

impl State {
    fn closed(&self) -> bool {
        self.stream_closed || self.eof || self.parse_error.is_some()
    }
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
    }
}

pub struct Client {
    /// Full JID from resource binding.
    pub jid: String,
    /// Bare JID.
    pub bare: String,
    /// Stream features before authentication (after TLS).
    pub pre_auth_features: Stanza,
    /// Stream features after authentication.
    pub features: Stanza,
    /// Attributes of the server's last stream header.
    pub stream_attrs: Vec<(String, String)>,
    label: String,
    started: Instant,
    writer: Writer,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    /// XEP-0198: writes the `<a/>` answers the reader task queues.
    acker: Option<JoinHandle<()>>,
    /// A duplicate of the TCP socket, for abrupt shutdown.
    sock: Option<std::net::TcpStream>,
}

type Writer = Arc<tokio::sync::Mutex<Option<WriteHalf<BoxIo>>>>;

/// A TCP connection to `addr`, from `source` (a loopback address) when given.
pub async fn connect_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    assert!(ip.is_loopback(), "tests connect from loopback only: {ip}");
    let sock = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(ip, 0))?;
    sock.connect(addr).await
}

impl Client {
    /// Connects, secures, authenticates, binds, and starts recording.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        opts: Opts,
    ) -> Result<Client, String> {
        let label = format!("{user}/{}", opts.resource);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut tcp = tokio::time::timeout_at(deadline, connect_from(opts.source, addr))
            .await
            .map_err(|_| format!("[{label}] TCP connect to {addr} timed out"))?
            .map_err(|e| format!("[{label}] TCP connect to {addr}: {e}"))?;
        if !opts.preamble.is_empty() {
            tcp.write_all(&opts.preamble)
                .await
                .map_err(|e| format!("[{label}] write preamble: {e}"))?;
        }
        let _ = tcp.set_nodelay(true);
        let std_sock = tcp.into_std().map_err(|e| e.to_string())?;
        let sock = std_sock.try_clone().map_err(|e| e.to_string())?;
        let tcp = TcpStream::from_std(std_sock).map_err(|e| e.to_string())?;
        let mut io: BoxIo = Box::new(tcp);
        if opts.tls == Tls::Direct {
            io = tls_wrap(io, &opts.domain, true)
                .await
                .map_err(|e| format!("[{label}] {e}"))?;
        }
        let mut conn = Conn {
            io,
            framer: Framer::default(),
            label: label.clone(),
            scope: Scope::new(),
            deadline,
        };
        let r = negotiate(&mut conn, user, pass, &opts).await;
        let Negotiated {
            pre_auth_features,
            features,
            stream_attrs,
            jid,
            early,
            sm,
        } = r.map_err(|e| format!("[{label}] {e}"))?;

        let Conn {
            io, framer, scope, ..
        } = conn;
        let (rd, wr) = tokio::io::split(io);
        let (changed, _) = watch::channel(0u64);
        let sm_active = sm.active;
        let mut state = State {
            sm,
            ..State::default()
        };
        for (i, raw) in early.iter().enumerate() {
            state.log.push(Stanza::parse(raw, &scope, i));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed,
        });
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(Some(wr)));
        let task_label = format!("{label}→{jid}");
        let (acks, acker) = if sm_active {
            let (tx, rx) = mpsc::unbounded_channel();
            let acker = tokio::spawn(acker_task(
                rx,
                writer.clone(),
                shared.clone(),
                task_label.clone(),
            ));
            (Some(tx), Some(acker))
        } else {
            (None, None)
        };
        let reader = tokio::spawn(reader_task(
            rd,
            framer,
            scope,
            shared.clone(),
            task_label,
            acks,
        ));
        let client = Client {
            bare: bare(&jid).to_string(),
            jid,
            pre_auth_features,
            features,
            stream_attrs,
            label,
            started,
            writer,
            shared,
            reader: Some(reader),
            acker,
            sock: Some(sock),
        };
        if opts.send_initial_presence {
            client.send("<presence/>").await;
        }
        Ok(client)
    }

    /// Writes raw XML; panics if the connection is gone.
    pub async fn send(&self, xml: &str) {
        if let Err(e) = self.try_send(xml).await {
            panic!("[{}] send failed: {e}\n{}", self.label, self.dump());
        }
    }

    /// Writes raw XML.
    pub async fn try_send(&self, xml: &str) -> Result<(), String> {
        if trace_on() {
            eprintln!("{:8.3} [{}] >> {xml}", ts(), self.label);
        }
        let mut w = self.writer.lock().await;
        let w = w.as_mut().ok_or("writer already shut down")?;
        {
            // Counted before writing, so that an `<a/>` the peer sends for it
            // can never be ahead of the count.
            let mut st = self.shared.state.lock().unwrap();
            if st.sm.active {
                st.sm.count_outbound(xml);
            }
        }
        w.write_all(xml.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())
    }

    /// Sends an IQ and waits for the `result`/`error` with this id.
    pub async fn iq(&self, xml_with_id: &str, id: &str, timeout: Duration) -> Stanza {
        let mark = self.mark();
        self.send(xml_with_id).await;
        self.wait_for_since(mark, &format!("IQ reply id={id}"), timeout, |s| {
            s.is_iq_reply(id)
        })
        .await
    }

    /// First stanza in the whole log (from the beginning) matching `pred`;
    /// waits up to `timeout` for it, panics with `what` and the log otherwise.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Stanza) -> bool,
    ) -> Stanza {
        self.wait_for_since(0, what, timeout, pred).await
    }

    /// Waits for the stream error and asserts its defined condition.
    pub async fn expect_stream_error(&self, condition: &str, timeout: Duration) {
        let e = self
            .wait_for(&format!("{condition} stream error"), timeout, |s| {
                s.is_stream_error()
            })
            .await;
        assert_eq!(e.error_condition(), Some(condition), "{}", e.raw);
    }

    /// Like [`Client::wait_for`], but only stanzas received after this call.
    /// If the stanza may already be in flight (the action that triggers it
    /// happened before this call), take a [`Client::mark`] before that action
    /// and use [`Client::wait_for_since`] instead.
    pub async fn wait_for_new(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Stanza) -> bool,
    ) -> Stanza {
        let mark = self.mark();
        self.wait_for_since(mark, what, timeout, pred).await
    }

    /// Like [`Client::wait_for`], but only stanzas at log position `mark` or later.
    pub async fn wait_for_since(
        &self,
        mark: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Stanza) -> bool,
    ) -> Stanza {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            {
                let st = self.shared.state.lock().unwrap();
                if let Some(s) = st.log.iter().skip(mark).find(|s| pred(s)) {
                    return s.clone();
                }
                if st.closed() {
                    drop(st);
                    panic!(
                        "[{}] connection closed while waiting for {what}\n{}",
                        self.label,
                        self.dump()
                    );
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!(
                    "[{}] timed out after {timeout:?} waiting for {what}\n{}",
                    self.label,
                    self.dump()
                );
            }
        }
    }

    /// Waits `quiet`; panics if any stanza in the whole log (before or during
    /// the window) matches `pred`.
    pub async fn expect_none(&self, what: &str, quiet: Duration, pred: impl Fn(&Stanza) -> bool) {
        self.expect_none_since(0, what, quiet, pred).await
    }

    /// Like [`Client::expect_none`], but only stanzas at log position `mark` or later.
    pub async fn expect_none_since(
        &self,
        mark: usize,
        what: &str,
        quiet: Duration,
        pred: impl Fn(&Stanza) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + quiet;
        let mut rx = self.shared.changed.subscribe();
        loop {
            {
                let st = self.shared.state.lock().unwrap();
                if let Some(s) = st.log.iter().skip(mark).find(|s| pred(s)) {
                    let s = s.clone();
                    drop(st);
                    panic!(
                        "[{}] expected no {what}, but got #{}: {}\n{}",
                        self.label,
                        s.index,
                        s.raw,
                        self.dump()
                    );
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Waits until the peer closed the stream or the connection; `false` on timeout.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            if self.closed() {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return self.closed();
            }
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Stanza> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// Current log position.
    pub fn mark(&self) -> usize {
        self.shared.state.lock().unwrap().log.len()
    }

    /// Stanzas received at log position `mark` or later.
    pub fn since(&self, mark: usize) -> Vec<Stanza> {
        let st = self.shared.state.lock().unwrap();
        st.log
            .get(mark..)
            .map(<[Stanza]>::to_vec)
            .unwrap_or_default()
    }

    /// The peer closed the stream (`</stream:stream>`) or the connection,
    /// or sent unparsable XML.
    pub fn closed(&self) -> bool {
        self.shared.state.lock().unwrap().closed()
    }

    /// Why the connection is closed, if it is.
    pub fn close_reason(&self) -> Option<String> {
        let st = self.shared.state.lock().unwrap();
        st.parse_error.clone().or_else(|| st.close_reason.clone())
    }

    // ---- XEP-0198 Stream Management -------------------------------------

    /// `<enabled id=…>` (or the previd resumed); `None` without SM.
    pub fn sm_id(&self) -> Option<String> {
        self.shared.state.lock().unwrap().sm.id.clone()
    }

    /// The `<enabled/>` element as received (`None` without SM or when resumed).
    pub fn enabled(&self) -> Option<Stanza> {
        self.shared.state.lock().unwrap().sm.enabled.clone()
    }

    /// The `<resumed/>` element as received (`None` unless resumed).
    pub fn resumed(&self) -> Option<Stanza> {
        self.shared.state.lock().unwrap().sm.resumed.clone()
    }

    /// Stanzas received since `<enabled/>` (continuing from the `h` resumed
    /// from), mod 2^32: what the client answers the peer's `<r/>` with.
    pub fn inbound_count(&self) -> u32 {
        self.shared.state.lock().unwrap().sm.inbound
    }

    /// Stanzas sent since `<enabled/>` (continuing from `<resumed h=…/>`), mod 2^32.
    pub fn outbound_count(&self) -> u32 {
        self.shared.state.lock().unwrap().sm.outbound
    }

    /// `h` of the latest `<a/>` from the peer (or of `<resumed/>`).
    pub fn last_ack_from_peer(&self) -> Option<u32> {
        self.shared.state.lock().unwrap().sm.last_ack
    }

    /// Raw XML of the stanzas sent and not yet acknowledged by the peer, in order.
    pub fn unacked_outbound(&self) -> Vec<String> {
        let st = self.shared.state.lock().unwrap();
        st.sm.unacked.iter().map(|(_, raw)| raw.clone()).collect()
    }

    /// Every `<r/>` the peer sent: its log index and the `h` the client
    /// answered it with (queued in order; see [`Client::sm_answers_written`]).
    pub fn sm_answered(&self) -> Vec<(usize, u32)> {
        self.shared.state.lock().unwrap().sm.answered.clone()
    }

    /// How many `<a/>` answers have actually been written.
    pub fn sm_answers_written(&self) -> usize {
        self.shared.state.lock().unwrap().sm.answers_written
    }

    /// `h` of every `<a/>` received from the peer, in order.
    pub fn acks_from_peer(&self) -> Vec<u32> {
        self.shared.state.lock().unwrap().sm.acks_from_peer.clone()
    }

    /// The SM counters now (take it before [`Client::drop_tcp`] to resume).
    pub fn sm_snapshot(&self) -> SmSnapshot {
        let st = self.shared.state.lock().unwrap();
        SmSnapshot {
            id: st.sm.id.clone(),
            inbound: st.sm.inbound,
            outbound: st.sm.outbound,
            last_ack: st.sm.last_ack,
            unacked: st.sm.unacked.iter().cloned().collect(),
        }
    }

    /// Sends `<r xmlns='urn:xmpp:sm:3'/>` and returns the `h` of the peer's
    /// next `<a/>`; panics on timeout or if the connection closes.
    pub async fn request_ack(&self, timeout: Duration) -> u32 {
        let r = format!("<r xmlns='{NS_SM}'/>");
        let want = {
            let mut w = self.writer.lock().await;
            // The answer to this <r/>: the next <a/> from now, and behind
            // the answers to our earlier requests.
            let want = {
                let mut st = self.shared.state.lock().unwrap();
                let want = st.sm.acks_from_peer.len().max(st.sm.requests_sent);
                st.sm.requests_sent += 1;
                want
            };
            if trace_on() {
                eprintln!("{:8.3} [{}] >> {r}", ts(), self.label);
            }
            let res = match w.as_mut() {
                Some(w) => async {
                    w.write_all(r.as_bytes()).await?;
                    w.flush().await
                }
                .await
                .map_err(|e| e.to_string()),
                None => Err("writer already shut down".to_string()),
            };
            drop(w);
            if let Err(e) = res {
                panic!("[{}] sending <r/> failed: {e}\n{}", self.label, self.dump());
            }
            want
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            {
                let st = self.shared.state.lock().unwrap();
                if let Some(&h) = st.sm.acks_from_peer.get(want) {
                    return h;
                }
                if st.closed() {
                    drop(st);
                    panic!(
                        "[{}] connection closed while waiting for <a/>\n{}",
                        self.label,
                        self.dump()
                    );
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!(
                    "[{}] timed out after {timeout:?} waiting for <a/>\n{}",
                    self.label,
                    self.dump()
                );
            }
        }
    }

    /// Sends `</stream:stream>`, waits (bounded) for the peer's close, then
    /// shuts down TLS (close_notify) and TCP.
    pub async fn close(mut self) {
        if self.try_send("</stream:stream>").await.is_ok() && !self.wait_closed(CLOSE_TIMEOUT).await
        {
            eprintln!(
                "[{}] peer did not close within {CLOSE_TIMEOUT:?} after </stream:stream>",
                self.label
            );
        }
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
        }
        self.teardown();
    }

    /// Abrupt loss: shuts the TCP socket down (FIN) without `</stream:stream>`
    /// and without TLS close_notify.
    pub fn drop_tcp(mut self) {
        if trace_on() {
            eprintln!("{:8.3} [{}] -- dropping TCP", ts(), self.label);
        }
        self.teardown();
    }

    /// Abrupt loss with a TCP RST (SO_LINGER 0) instead of a FIN.
    pub fn reset_tcp(mut self) {
        if trace_on() {
            eprintln!("{:8.3} [{}] -- resetting TCP", ts(), self.label);
        }
        if let Some(sock) = &self.sock {
            use std::os::fd::AsRawFd;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a socket we own, with a correctly sized value.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            // Dropping every descriptor of the socket now sends the RST.
            self.sock = None;
        }
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if let Some(a) = self.acker.take() {
            a.abort();
        }
        if let Ok(mut w) = self.writer.try_lock() {
            w.take();
        }
    }

    fn teardown(&mut self) {
        if let Some(sock) = self.sock.take() {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if let Some(a) = self.acker.take() {
            a.abort();
        }
        if let Ok(mut w) = self.writer.try_lock() {
            w.take();
        }
    }

    /// The received log, state and unparsed input, for failure messages.
    pub fn dump(&self) -> String {
        let st = self.shared.state.lock().unwrap();
        let mut s = format!(
            "---- received by {} ({}), {} elements ----\n",
            self.label,
            self.jid,
            st.log.len()
        );
        for x in &st.log {
            let _ = writeln!(
                s,
                "#{:<3} +{:>7.3}s {}",
                x.index,
                x.at.duration_since(self.started).as_secs_f64(),
                x.raw
            );
        }
        if st.stream_closed {
            s.push_str("(peer sent </stream:stream>)\n");
        }
        if let Some(r) = &st.close_reason {
            let _ = writeln!(s, "(connection: {r})");
        }
        if let Some(e) = &st.parse_error {
            let _ = writeln!(s, "(parse error: {e})");
        }
        if !st.pending.is_empty() {
            let _ = writeln!(s, "(unparsed input: {:?})", st.pending);
        }
        if st.sm.active {
            let _ = writeln!(
                s,
                "(sm: id {:?}, inbound {}, outbound {}, last ack {:?}, {} unacked, \
                 {} peer <r/> answered, {} <a/> written)",
                st.sm.id,
                st.sm.inbound,
                st.sm.outbound,
                st.sm.last_ack,
                st.sm.unacked.len(),
                st.sm.answered.len(),
                st.sm.answers_written
            );
        }
        s.push_str("---- end ----");
        s
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.teardown();
    }
}

struct Negotiated {
    pre_auth_features: Stanza,
    features: Stanza,
    stream_attrs: Vec<(String, String)>,
    jid: String,
    /// Stanzas received while negotiating (before `<enabled/>`), raw.
    early: Vec<String>,
    sm: SmState,
}

async fn negotiate(
    conn: &mut Conn,
    user: &str,
    pass: &str,
    opts: &Opts,
) -> Result<Negotiated, String> {
    let (_, mut features) = conn.open_stream(&opts.domain).await?;
    if opts.tls == Tls::StartTls {
        if features.child_ns("starttls", NS_TLS).is_none() {
            return Err(format!("STARTTLS not offered: {}", features.raw));
        }
        conn.send(&format!("<starttls xmlns='{NS_TLS}'/>")).await?;
        let reply = conn.next_element().await?;
        if reply.name != "proceed" {
            return Err(format!("STARTTLS refused: {}", reply.raw));
        }
        if !conn.framer.buf.is_empty() {
            return Err(format!(
                "data after <proceed/>: {:?}",
                conn.framer.pending()
            ));
        }
        let io = std::mem::replace(&mut conn.io, Box::new(tokio::io::empty()));
        conn.io = tokio::time::timeout_at(conn.deadline, tls_wrap(io, &opts.domain, false))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())??;
        features = conn.open_stream(&opts.domain).await?.1;
    }
    let pre_auth_features = features.clone();

    // SASL
    let mechs: Vec<String> = features
        .child_ns("mechanisms", NS_SASL)
        .map(|m| {
            m.children_named("mechanism")
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let name = opts.mech.name();
    if !mechs.iter().any(|m| m == name) {
        return Err(format!(
            "SASL {name} not offered (offered: {mechs:?}): {}",
            features.raw
        ));
    }
    let creds = Credentials::default()
        .with_username(user)
        .with_password(pass)
        .with_channel_binding(ChannelBinding::None);
    let mut mech: Box<dyn Mechanism + Send> = match opts.mech {
        Mech::Plain => Box::new(Plain::from_credentials(creds).map_err(|e| e.to_string())?),
        Mech::ScramSha1 => {
            Box::new(Scram::<Sha1>::from_credentials(creds).map_err(|e| e.to_string())?)
        }
    };
    let initial = mech.initial();
    let initial = if initial.is_empty() {
        "=".to_string()
    } else {
        B64.encode(initial)
    };
    conn.send(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='{name}'>{initial}</auth>"
    ))
    .await?;
    loop {
        let s = conn.next_element().await?;
        let data = B64
            .decode(s.text.trim())
            .map_err(|e| format!("bad base64 in {}: {e}", s.raw))?;
        match s.name.as_str() {
            "challenge" => {
                let resp = mech
                    .response(&data)
                    .map_err(|e| format!("SASL {name}: {e}"))?;
                conn.send(&format!(
                    "<response xmlns='{NS_SASL}'>{}</response>",
                    B64.encode(resp)
                ))
                .await?;
            }
            "success" => {
                mech.success(&data)
                    .map_err(|e| format!("SASL {name} success not verified: {e}"))?;
                break;
            }
            _ => return Err(format!("authentication failed: {}", s.raw)),
        }
    }

    let (stream_attrs, features) = conn.open_stream(&opts.domain).await?;
    let mut sm = SmState::default();
    if let Some(r) = &opts.resume {
        if features.child_ns("sm", NS_SM).is_none() {
            return Err(format!("stream management not offered: {}", features.raw));
        }
        conn.send(&format!(
            "<resume xmlns='{NS_SM}' previd='{}' h='{}'/>",
            esc(&r.previd),
            r.h
        ))
        .await?;
        let reply = conn.next_element().await?;
        if reply.name != "resumed" || reply.ns != NS_SM {
            return Err(format!("resumption failed: {}", reply.raw));
        }
        let h = reply
            .attr("h")
            .and_then(|h| h.parse::<u32>().ok())
            .ok_or_else(|| format!("no valid h in {}", reply.raw))?;
        sm.active = true;
        sm.id = Some(r.previd.clone());
        sm.inbound = r.h;
        sm.outbound = h;
        sm.peer_acked(h);
        sm.resumed = Some(reply);
        return Ok(Negotiated {
            pre_auth_features,
            features,
            stream_attrs,
            jid: r.jid.clone(),
            early: Vec::new(),
            sm,
        });
    }
    if features.child_ns("bind", NS_BIND).is_none() {
        return Err(format!("bind not offered: {}", features.raw));
    }
    conn.send(&format!(
        "<iq type='set' id='bind_1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
        esc(&opts.resource)
    ))
    .await?;
    let reply = conn.next_element().await?;
    if !reply.is_iq_reply("bind_1") || reply.type_() != Some("result") {
        return Err(format!("bind failed: {}", reply.raw));
    }
    let jid = reply
        .find("jid")
        .map(|j| j.text.trim().to_string())
        .ok_or_else(|| format!("no jid in bind result: {}", reply.raw))?;
    if let Some(sess) = features.child_ns("session", NS_SESSION)
        && sess.child("optional").is_none()
    {
        conn.send(&format!(
            "<iq type='set' id='sess_1'><session xmlns='{NS_SESSION}'/></iq>"
        ))
        .await?;
        let reply = conn.next_element().await?;
        if !reply.is_iq_reply("sess_1") || reply.type_() != Some("result") {
            return Err(format!("session establishment failed: {}", reply.raw));
        }
    }
    let mut early = Vec::new();
    if opts.sm {
        conn.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
            .await?;
        loop {
            let reply = conn.next_element().await?;
            if reply.ns == NS_SM && reply.name == "enabled" {
                sm.active = true;
                sm.id = reply.attr("id").map(str::to_string);
                sm.enabled = Some(reply);
                break;
            }
            if is_sm_stanza(&reply) {
                // Sent before <enabled/>: not counted by either side.
                early.push(reply.raw);
                continue;
            }
            return Err(format!("enabling stream management failed: {}", reply.raw));
        }
    }
    Ok(Negotiated {
        pre_auth_features,
        features,
        stream_attrs,
        jid,
        early,
        sm,
    })
}

async fn reader_task(
    mut rd: ReadHalf<BoxIo>,
    mut framer: Framer,
    scope: Scope,
    shared: Arc<Shared>,
    label: String,
    acks: Option<mpsc::UnboundedSender<u32>>,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        loop {
            match framer.next() {
                Ok(Some(Item::Element(raw))) => {
                    if trace_on() {
                        eprintln!("{:8.3} [{label}] << {raw}", ts());
                    }
                    shared.update(|st| {
                        let s = Stanza::parse(&raw, &scope, st.log.len());
                        if st.sm.active {
                            sm_inbound(&mut st.sm, &s, acks.as_ref());
                        }
                        st.log.push(s);
                    });
                }
                Ok(Some(Item::Close)) => {
                    if trace_on() {
                        eprintln!("{:8.3} [{label}] << </stream:stream>", ts());
                    }
                    shared.update(|st| st.stream_closed = true);
                }
                Ok(Some(Item::Open(attrs))) => {
                    if trace_on() {
                        eprintln!(
                            "{:8.3} [{label}] << unexpected stream header {attrs:?}",
                            ts()
                        );
                    }
                    shared.update(|st| {
                        st.parse_error = Some(format!("unexpected stream header {attrs:?}"))
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    if trace_on() {
                        eprintln!("{:8.3} [{label}] << parse error: {e}", ts());
                    }
                    shared.update(|st| st.parse_error = Some(e));
                    return;
                }
            }
        }
        let pending = framer.pending();
        shared.update(|st| st.pending = pending);
        match rd.read(&mut buf).await {
            Ok(0) => {
                if trace_on() {
                    eprintln!("{:8.3} [{label}] << EOF", ts());
                }
                shared.update(|st| {
                    st.eof = true;
                    st.close_reason = Some("EOF".to_string());
                });
                return;
            }
            Ok(n) => framer.push(&buf[..n]),
            Err(e) => {
                if trace_on() {
                    eprintln!("{:8.3} [{label}] << read error: {e}", ts());
                }
                shared.update(|st| {
                    st.eof = true;
                    st.close_reason = Some(format!("read error: {e}"));
                });
                return;
            }
        }
    }
}

/// XEP-0198 bookkeeping for one received element (in order, before the next).
fn sm_inbound(sm: &mut SmState, s: &Stanza, acks: Option<&mpsc::UnboundedSender<u32>>) {
    if is_sm_stanza(s) {
        sm.inbound = sm.inbound.wrapping_add(1);
    } else if s.ns == NS_SM && s.name == "r" {
        // Answers exactly the stanzas received before this <r/>.
        sm.answered.push((s.index, sm.inbound));
        if let Some(tx) = acks {
            let _ = tx.send(sm.inbound);
        }
    } else if s.ns == NS_SM && s.name == "a" {
        // An unparsable h is recorded as u32::MAX (and shows in the log).
        let h = s
            .attr("h")
            .and_then(|h| h.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        sm.acks_from_peer.push(h);
        sm.peer_acked(h);
    }
}

/// Writes the `<a/>` answers queued by the reader task, in order.
async fn acker_task(
    mut rx: mpsc::UnboundedReceiver<u32>,
    writer: Writer,
    shared: Arc<Shared>,
    label: String,
) {
    while let Some(h) = rx.recv().await {
        let mut w = writer.lock().await;
        if shared.state.lock().unwrap().sm.closing {
            return;
        }
        let Some(w) = w.as_mut() else { return };
        let a = format!("<a xmlns='{NS_SM}' h='{h}'/>");
        if trace_on() {
            eprintln!("{:8.3} [{label}] >> {a}", ts());
        }
        let r = async {
            w.write_all(a.as_bytes()).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = r {
            if trace_on() {
                eprintln!("{:8.3} [{label}] -- writing <a/> failed: {e}", ts());
            }
            return;
        }
        shared.update(|st| st.sm.answers_written += 1);
    }
}

/// A plain TCP connection, for bad-input tests.
pub async fn connect_raw(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"))
}

/// Makes `a` subscribe to `b` with `b` approving (`a` gets subscription `to`,
/// `b` gets `from`); with `mutual` also the reverse (both get `both`). Uses
/// real logins (resource `befriend`, `opts` otherwise), then closes them.
pub async fn befriend(
    addr: SocketAddr,
    a: (&str, &str),
    b: (&str, &str),
    mutual: bool,
    opts: &Opts,
) {
    const T: Duration = Duration::from_secs(10);
    let o = |r: &str| Opts {
        resource: r.to_string(),
        send_initial_presence: false,
        sm: false,
        resume: None,
        ..opts.clone()
    };
    let (ca, cb) = tokio::join!(
        Client::connect(addr, a.0, a.1, o("befriend-a")),
        Client::connect(addr, b.0, b.1, o("befriend-b")),
    );
    let ca = ca.unwrap_or_else(|e| panic!("befriend: login {}: {e}", a.0));
    let cb = cb.unwrap_or_else(|e| panic!("befriend: login {}: {e}", b.0));
    let (ja, jb) = (ca.bare.clone(), cb.bare.clone());
    // Fetch the roster (to get roster pushes) and become available (to get
    // subscription requests).
    for c in [&ca, &cb] {
        c.iq(
            &format!("<iq type='get' id='roster_1'><query xmlns='{NS_ROSTER}'/></iq>"),
            "roster_1",
            T,
        )
        .await;
        c.send("<presence/>").await;
    }
    subscribe(&ca, &cb, &ja, &jb, Some("to")).await;
    if mutual {
        subscribe(&cb, &ca, &jb, &ja, Some("both")).await;
        ca.wait_for("roster push: b is 'both'", T, |s| {
            s.is_roster_push(&jb, Some("both"))
        })
        .await;
    } else {
        cb.wait_for("roster push: a is 'from'", T, |s| {
            s.is_roster_push(&ja, Some("from"))
        })
        .await;
    }
    tokio::join!(ca.close(), cb.close());

    async fn subscribe(from: &Client, to: &Client, jf: &str, jt: &str, sub: Option<&str>) {
        let m_to = to.mark();
        let m_from = from.mark();
        from.send(&format!("<presence to='{jt}' type='subscribe'/>"))
            .await;
        to.wait_for_since(m_to, &format!("subscribe from {jf}"), T, |s| {
            s.is_presence_from(jf) && s.presence_type() == Some("subscribe")
        })
        .await;
        to.send(&format!("<presence to='{jf}' type='subscribed'/>"))
            .await;
        from.wait_for_since(m_from, &format!("roster push: {jt} is {sub:?}"), T, |s| {
            s.is_roster_push(jt, sub)
        })
        .await;
    }
}

/// Feeds `chunks` one after another to the stream splitter, as the reader
/// task does, and describes what comes out (`open`, `close`, or the raw
/// element); for testing the harness itself.
pub fn frame_chunks(chunks: &[&[u8]]) -> Result<Vec<String>, String> {
    let mut f = Framer::default();
    let mut out = Vec::new();
    for c in chunks {
        f.push(c);
        while let Some(item) = f.next()? {
            out.push(match item {
                Item::Open(_) => "open".to_string(),
                Item::Element(raw) => raw,
                Item::Close => "close".to_string(),
            });
        }
    }
    if !f.buf.is_empty() {
        out.push(format!("pending:{}", f.pending()));
    }
    Ok(out)
}
