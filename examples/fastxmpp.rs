//! A minimal, fast XMPP c2s server for the load benchmark ONLY (never for the tests, which use
//! real servers): domain `localhost`, SASL PLAIN for any user and password, resource binding,
//! an empty (or `--roster N`) roster, every other IQ to the server answered with an empty
//! result, presence ignored, and messages (and IQs) to `user@localhost[/res]` routed to that
//! session (a bare JID goes to the user's most recently bound session).
//!
//! Listens in plaintext (`--listen`, the upstream of the proxies under test) and optionally with
//! direct TLS (`--tls-listen`, ALPN `xmpp-client`): the "direct" baseline of the benchmark, where
//! the load generator talks to the server with no proxy in between.
//!
//! ```sh
//! cargo run --release --example fastxmpp -- --listen 127.0.0.1:5299 --tls-listen 127.0.0.1:5298
//! ```
//!
//! Loopback addresses only. Each session is a reader task (framing with the crate's own
//! [`Framer`], routing) and a writer task fed by a bounded mpsc queue, so a session that
//! routes to a busy peer never stops its own queue from draining.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use memchr::memchr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use xmpp_veil::xml::element::escape;
use xmpp_veil::xml::{Element, ElementKind, Frame, Framer, StartTag};

const NS_CLIENT: &str = "jabber:client";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_ROSTER: &str = "jabber:iq:roster";
const DOMAIN: &str = "localhost";
const MAX_ELEMENT: usize = 1 << 20;
const QUEUE: usize = 1024;

#[derive(Debug, Parser)]
#[command(about = "Minimal XMPP c2s server for the xmpp-veil load benchmark (loopback only)")]
struct Args {
    /// Plaintext c2s listener (loopback only).
    #[arg(long, default_value = "127.0.0.1:5299")]
    listen: SocketAddr,
    /// Optional direct-TLS c2s listener (XEP-0368), the benchmark's "direct" baseline.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Certificate chain for the TLS listener.
    #[arg(long, default_value = "certs/localhost.pem")]
    cert: PathBuf,
    /// Private key for the TLS listener.
    #[arg(long, default_value = "certs/localhost.key")]
    key: PathBuf,
    /// Roster size per user: `c0@localhost` … with subscription `both` (0: empty roster).
    #[arg(long, default_value_t = 0)]
    roster: usize,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the stanza counters every this many seconds while they change (0: never).
    #[arg(long, default_value_t = 0)]
    report_secs: u64,
}

/// Stanzas received from clients, by kind (sessions add theirs in batches).
static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
const KINDS: [&str; 3] = ["messages", "presences", "iqs"];

/// Who is bound where. Readers keep their own cache of senders, so the lock is taken only on
/// the first stanza to a JID (and after that JID's session went away).
#[derive(Default)]
struct Router {
    full: HashMap<String, mpsc::Sender<Bytes>>,
    /// bare JID → its most recently bound full JID
    bare: HashMap<String, String>,
}

type Shared = Arc<RwLock<Router>>;

fn main() -> Result<(), String> {
    let args = Args::parse();
    for addr in std::iter::once(&args.listen).chain(args.tls_listen.as_ref()) {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr}: loopback addresses only"));
        }
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let router: Shared = Arc::default();
    let roster = Arc::new(roster_items(args.roster));
    let plain = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("{}: {e}", args.listen))?;
    let mut bound = format!(
        "fastxmpp plain={}",
        plain.local_addr().map_err(|e| e.to_string())?
    );
    if let Some(addr) = args.tls_listen {
        let acceptor = tls_acceptor(&args)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        bound.push_str(&format!(
            " tls={}",
            listener.local_addr().map_err(|e| e.to_string())?
        ));
        let (router, roster) = (router.clone(), roster.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, router, roster) = (acceptor.clone(), router.clone(), roster.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let (rd, wr) = tokio::io::split(tls);
                        session(rd, wr, router, roster).await;
                    }
                });
            }
        });
    }
    println!("{bound}");
    if args.report_secs > 0 {
        let every = std::time::Duration::from_secs(args.report_secs);
        tokio::spawn(async move {
            let mut last = [0; 3];
            loop {
                tokio::time::sleep(every).await;
                let now = COUNTS.each_ref().map(|c| c.load(Ordering::Relaxed));
                if now != last {
                    let line: Vec<String> = KINDS
                        .iter()
                        .zip(now)
                        .map(|(k, n)| format!("{k}={n}"))
                        .collect();
                    println!("fastxmpp {}", line.join(" "));
                    last = now;
                }
            }
        });
    }
    loop {
        let Ok((tcp, _)) = plain.accept().await else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (router, roster) = (router.clone(), roster.clone());
        tokio::spawn(async move {
            let (rd, wr) = tcp.into_split();
            session(rd, wr, router, roster).await;
        });
    }
}

fn tls_acceptor(args: &Args) -> Result<TlsAcceptor, String> {
    xmpp_veil::tls::server_config_from_files(&args.cert, &args.key).map(TlsAcceptor::from)
}

fn roster_items(n: usize) -> String {
    (0..n)
        .map(|i| format!("<item jid='c{i}@{DOMAIN}' subscription='both'/>"))
        .collect()
}

fn stream_header(id: u64, authed: bool) -> Bytes {
    let features = if authed {
        format!("<bind xmlns='{NS_BIND}'/>")
    } else {
        format!("<mechanisms xmlns='{NS_SASL}'><mechanism>PLAIN</mechanism></mechanisms>")
    };
    Bytes::from(format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' \
         xmlns:stream='http://etherx.jabber.org/streams' id='fx{id:x}' from='{DOMAIN}' \
         version='1.0' xml:lang='en'><stream:features>{features}</stream:features>"
    ))
}

/// One client session: reads, frames, answers and routes; a writer task drains its queue.
async fn session<R, W>(mut rd: R, wr: W, router: Shared, roster: Arc<String>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let writer = tokio::spawn(writer(wr, rx));
    let mut s = Session {
        tx,
        router,
        roster,
        user: None,
        jid: None,
        from_attr: Bytes::new(),
        cache: HashMap::new(),
    };
    let mut framer = Framer::new(MAX_ELEMENT);
    let mut counts = [0u64; 3];
    'read: loop {
        loop {
            let frame = match framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let go_on = match frame {
                Frame::StreamHeader(_) => s.send(stream_header(id, s.user.is_some())).await,
                Frame::Element { raw, kind } => match kind {
                    ElementKind::Message => {
                        counts[0] += 1;
                        s.route(&raw).await
                    }
                    ElementKind::Presence => {
                        counts[1] += 1;
                        true
                    }
                    ElementKind::Iq => {
                        counts[2] += 1;
                        s.iq(&raw).await
                    }
                    ElementKind::Other => {
                        let ok = s.auth(&raw).await;
                        if s.user.is_some() {
                            framer.reset();
                        }
                        ok
                    }
                },
                Frame::Whitespace(_) => true,
                Frame::StreamEnd(_) => {
                    let _ = s.send(Bytes::from_static(b"</stream:stream>")).await;
                    break 'read;
                }
            };
            if !go_on {
                break 'read;
            }
        }
        if counts[0] >= 1024 {
            add_counts(&mut counts);
        }
        let buf = framer.buffer_mut();
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    add_counts(&mut counts);
    if let Some(jid) = &s.jid {
        let mut r = s.router.write().unwrap_or_else(|e| e.into_inner());
        if r.full.get(jid).is_some_and(|t| t.same_channel(&s.tx)) {
            r.full.remove(jid);
        }
        let bare = jid.split('/').next().unwrap_or_default().to_owned();
        if r.bare.get(&bare) == Some(jid) {
            r.bare.remove(&bare);
        }
    }
    drop(s);
    let _ = writer.await;
}

fn add_counts(counts: &mut [u64; 3]) {
    for (c, n) in COUNTS.iter().zip(counts.iter_mut()) {
        c.fetch_add(std::mem::take(n), Ordering::Relaxed);
    }
}

async fn writer<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(64);
    let mut buf = BytesMut::new();
    while rx.recv_many(&mut batch, 64).await > 0 {
        let ok = if batch.len() == 1 {
            wr.write_all(&batch[0]).await.is_ok()
        } else {
            buf.clear();
            for b in &batch {
                buf.extend_from_slice(b);
            }
            wr.write_all(&buf).await.is_ok()
        };
        // A TLS stream may hold back records it could not write yet: flush them.
        let ok = ok && wr.flush().await.is_ok();
        batch.clear();
        if !ok {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

struct Session {
    tx: mpsc::Sender<Bytes>,
    router: Shared,
    roster: Arc<String>,
    user: Option<String>,
    jid: Option<String>,
    /// ` from='user@localhost/res'`, stamped into routed stanzas that lack a `from`.
    from_attr: Bytes,
    cache: HashMap<Bytes, mpsc::Sender<Bytes>>,
}

impl Session {
    async fn send(&self, b: Bytes) -> bool {
        self.tx.send(b).await.is_ok()
    }

    /// `<auth mechanism='PLAIN'>`: any user, any password.
    async fn auth(&mut self, raw: &Bytes) -> bool {
        if self.user.is_some() || !raw.starts_with(b"<auth") {
            return true;
        }
        let user = Element::parse(raw, NS_CLIENT, &[]).ok().and_then(|el| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(el.text().trim())
                .ok()?;
            let mut parts = data.split(|&b| b == 0);
            let _authzid = parts.next()?;
            let authcid = std::str::from_utf8(parts.next()?).ok()?;
            (!authcid.is_empty() && !authcid.contains(['@', '/', '\'', '"', '<', '&']))
                .then(|| authcid.to_ascii_lowercase())
        });
        match user {
            Some(user) => {
                self.user = Some(user);
                self.send(Bytes::from(format!("<success xmlns='{NS_SASL}'/>")))
                    .await
            }
            None => {
                self.send(Bytes::from(format!(
                    "<failure xmlns='{NS_SASL}'><malformed-request/></failure>"
                )))
                .await
            }
        }
    }

    async fn iq(&mut self, raw: &Bytes) -> bool {
        if start_tag_attr(raw, b"to").is_some_and(|to| memchr(b'@', to).is_some()) {
            return self.route(raw).await;
        }
        let Ok(tag) = StartTag::parse(raw) else {
            return false;
        };
        let kind = tag.attr("type").unwrap_or("");
        if !matches!(kind, "get" | "set") {
            return true;
        }
        let id = escape(tag.attr("id").unwrap_or("")).into_owned();
        let Ok(iq) = Element::parse(raw, NS_CLIENT, &[]) else {
            return false;
        };
        let payload = iq.elements().next();
        let reply = match payload.map(|p| (p.name.as_str(), p.ns.as_str())) {
            Some(("bind", NS_BIND)) if kind == "set" && self.jid.is_none() => {
                let Some(user) = self.user.clone() else {
                    return false;
                };
                let res = payload
                    .and_then(|b| b.child("resource", NS_BIND))
                    .map(|r| r.text().trim().to_owned())
                    .filter(|r| !r.is_empty() && !r.contains(['/', '\'', '"', '<', '&', '>']))
                    .unwrap_or_else(|| format!("fx{:x}", rand_u64()));
                let jid = format!("{user}@{DOMAIN}/{res}");
                {
                    let mut r = self.router.write().unwrap_or_else(|e| e.into_inner());
                    r.full.insert(jid.clone(), self.tx.clone());
                    r.bare.insert(format!("{user}@{DOMAIN}"), jid.clone());
                }
                self.from_attr = Bytes::from(format!(" from='{jid}'"));
                let reply = format!(
                    "<iq type='result' id='{id}'><bind xmlns='{NS_BIND}'><jid>{jid}</jid></bind></iq>"
                );
                self.jid = Some(jid);
                reply
            }
            Some(("query", NS_ROSTER)) if kind == "get" => format!(
                "<iq type='result' id='{id}'{}><query xmlns='{NS_ROSTER}'>{}</query></iq>",
                self.to_attr(),
                self.roster
            ),
            _ => format!("<iq type='result' id='{id}'{}/>", self.to_attr()),
        };
        self.send(Bytes::from(reply)).await
    }

    fn to_attr(&self) -> String {
        self.jid
            .as_deref()
            .map(|j| format!(" to='{j}'"))
            .unwrap_or_default()
    }

    /// A stanza to another user: stamped with the sender's `from` and queued to the target.
    async fn route(&mut self, raw: &Bytes) -> bool {
        if self.jid.is_none() {
            return false;
        }
        let Some(to) = start_tag_attr(raw, b"to") else {
            return true;
        };
        let to = raw.slice_ref(to);
        let stanza = if start_tag_attr(raw, b"from").is_none() {
            stamp(raw, &self.from_attr)
        } else {
            raw.clone()
        };
        for _ in 0..2 {
            let target = match self.cache.get(&to) {
                Some(t) => Some(t.clone()),
                None => self.lookup(&to),
            };
            let Some(target) = target else {
                return self.bounce(raw).await;
            };
            // A full queue is backpressure on this sender (its own queue keeps draining).
            match target.send(stanza.clone()).await {
                Ok(()) => return true,
                Err(_) => {
                    self.cache.remove(&to);
                }
            }
        }
        self.bounce(raw).await
    }

    fn lookup(&mut self, to: &Bytes) -> Option<mpsc::Sender<Bytes>> {
        let to_s = std::str::from_utf8(to).ok()?;
        let r = self.router.read().unwrap_or_else(|e| e.into_inner());
        let full = if to_s.contains('/') {
            to_s
        } else {
            r.bare.get(to_s)?.as_str()
        };
        let tx = r.full.get(full)?.clone();
        drop(r);
        if self.cache.len() > 4096 {
            self.cache.clear();
        }
        self.cache.insert(to.clone(), tx.clone());
        Some(tx)
    }

    /// `service-unavailable` back to the sender (for a message; an IQ gets the same).
    async fn bounce(&self, raw: &Bytes) -> bool {
        if start_tag_attr(raw, b"type") == Some(b"error") {
            return true;
        }
        let name = if raw.starts_with(b"<iq") {
            "iq"
        } else {
            "message"
        };
        let attr = |k: &[u8]| {
            start_tag_attr(raw, k)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let reply = format!(
            "<{name} type='error' from='{}' id='{}'{}><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></{name}>",
            attr(b"to"),
            attr(b"id"),
            self.to_attr()
        );
        self.send(Bytes::from(reply)).await
    }
}

/// Inserts `attr` (` from='…'`) right after the element name of `raw`.
fn stamp(raw: &Bytes, attr: &[u8]) -> Bytes {
    let name_end = raw
        .iter()
        .position(|&c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/'))
        .unwrap_or(raw.len());
    let mut out = BytesMut::with_capacity(raw.len() + attr.len());
    out.extend_from_slice(&raw[..name_end]);
    out.extend_from_slice(attr);
    out.extend_from_slice(&raw[name_end..]);
    out.freeze()
}

/// The raw value of attribute `name` in the start tag at the beginning of `raw` (no
/// unescaping: the benchmark's JIDs have no entities).
fn start_tag_attr<'a>(raw: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let mut i = raw.iter().position(|&c| ws(c) || c == b'>' || c == b'/')?;
    loop {
        while raw.get(i).is_some_and(|&c| ws(c)) {
            i += 1;
        }
        if matches!(raw.get(i)?, b'>' | b'/') {
            return None;
        }
        let start = i;
        while raw.get(i).is_some_and(|&c| c != b'=' && !ws(c)) {
            i += 1;
        }
        let key = raw.get(start..i)?;
        while raw.get(i).is_some_and(|&c| ws(c)) {
            i += 1;
        }
        if *raw.get(i)? != b'=' {
            return None;
        }
        i += 1;
        while raw.get(i).is_some_and(|&c| ws(c)) {
            i += 1;
        }
        let quote = *raw.get(i)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        i += 1;
        let len = memchr(quote, raw.get(i..)?)?;
        if key == name {
            return raw.get(i..i + len);
        }
        i += len + 1;
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_of_the_start_tag_only() {
        let raw = b"<message type='chat' to=\"a@localhost/r\"><body to='x'>hi</body></message>";
        assert_eq!(start_tag_attr(raw, b"to"), Some(&b"a@localhost/r"[..]));
        assert_eq!(start_tag_attr(raw, b"type"), Some(&b"chat"[..]));
        assert_eq!(start_tag_attr(raw, b"from"), None);
        assert_eq!(start_tag_attr(b"<presence/>", b"to"), None);
        let stamped = stamp(&Bytes::from_static(raw), b" from='b@localhost/r'");
        assert!(stamped.starts_with(b"<message from='b@localhost/r' type='chat'"));
    }
}
