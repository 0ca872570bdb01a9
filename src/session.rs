//! The pump of one client session: two legs, two framers, one [`Policy`].
//!
//! Client frames go through the stream-level checks (no STARTTLS, compression or stream
//! management inside the relay) and then the policy; server frames through the feature
//! rewrites and the policy. The policy's actions are queued per leg and written once per read,
//! so a burst of stanzas costs one write (and one TLS record) per leg.
//!
//! Stream restarts: after SASL `<success/>` the server's next bytes are a new stream, and so are
//! the client's (it may not send anything before it has read `<success/>`). Both framers are
//! reset right when `<success/>` passes, at that exact frame boundary, so no byte of either new
//! stream is read with the old parser state.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::metrics as m;
use crate::ns::{
    CLIENT as NS_CLIENT, SASL as NS_SASL, SM2 as NS_SM2, SM3 as NS_SM3, STREAMS as NS_STREAMS,
    TLS as NS_TLS,
};
use crate::policy::{Action, Policy, Violation};
use crate::proxy_protocol::Endpoints;
use crate::resume::{DEFAULT_KEEP, Detached, ResumeStore};
use crate::stream::errors::{Condition, client_stream_header, stream_error};
use crate::stream::sm::Counter as SmCounter;
use crate::stream::upstream::{self, Upstream, UpstreamConfig};
use crate::stream::{ReadError, StreamHeader, features, read_element, sasl};
use crate::xml::element::{remove_start_tag_attr, set_start_tag_attr};
use crate::xml::{Element, ElementKind, Frame, FrameError, Framer, Limits};

/// What every session shares.
pub struct Shared {
    pub upstream: UpstreamConfig,
    pub connect_timeout: Duration,
    pub limits: Limits,
    pub auth_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown: CancellationToken,
    pub resume: ResumeStore,
    /// How invisible sessions are hidden (`--invisibility-strategy`).
    pub strategy: crate::policy::Strategy,
}

/// Time to wait for the server's `</stream:stream>` after the proxy closed its stream.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read size: large enough to take a burst of stanzas in one read (and one TLS record).
const READ_CHUNK: usize = 16 * 1024;
/// A read smaller than this leaves the leg quiet: once its frames are handled, its buffers are
/// freed, so that the thousands of sessions that sit idle for hours hold none.
const QUIET_READ: usize = 1024;

thread_local! {
    /// Where every session of this worker thread reads into: a session waiting for data holds no
    /// read buffer of its own. Only borrowed inside one poll, never across an `.await`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Serves one client whose TLS is established: reads its stream header, connects upstream and
/// relays until either side ends. `auth_deadline`: when the client must have authenticated
/// (counted from its TCP connection).
///
/// Memory: thousands of sessions sit idle for hours, so what one holds while it waits is kept
/// small. The setup runs in its own boxed future, freed before the relay starts; the relay lives
/// in one box; `C` should be small to move (a boxed TLS stream).
/// `endpoints`: where the client comes from, for the upstream's PROXY protocol header.
pub async fn serve<C>(
    client: C,
    conn_id: u64,
    auth_deadline: Instant,
    shared: Arc<Shared>,
    endpoints: Endpoints,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match Box::pin(open(client, conn_id, auth_deadline, &shared, endpoints)).await {
        Some(Opened::Plain(relay)) => relay.run().await,
        Some(Opened::Tls(relay)) => relay.run().await,
        None => {}
    }
}

/// A relay ready to run, over either kind of upstream leg.
enum Opened<'a, C> {
    Plain(Box<Relay<'a, C, tokio::net::TcpStream>>),
    Tls(Box<Relay<'a, C, tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

/// Reads the client's stream header and connects upstream; `None` when the client was refused
/// (it has been told why).
async fn open<C>(
    mut client: C,
    conn_id: u64,
    auth_deadline: Instant,
    shared: &Shared,
    endpoints: Endpoints,
) -> Option<Opened<'_, C>>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut cf = Framer::with_limits(shared.limits);
    let stream_id = format!("xv-{conn_id:x}-{:x}", nanos());
    let header = tokio::time::timeout_at(auth_deadline, read_element(&mut client, &mut cf)).await;
    let Ok(header) = header else {
        return refuse(
            &mut client,
            &stream_id,
            "",
            Condition::ConnectionTimeout,
            "no stream header in time",
        )
        .await;
    };
    let header_raw = match header {
        Ok(Frame::StreamHeader(raw)) => raw,
        Ok(_) => {
            return refuse(
                &mut client,
                &stream_id,
                "",
                Condition::NotWellFormed,
                "expected a stream header",
            )
            .await;
        }
        Err(ReadError::Closed) => return None,
        Err(ReadError::Frame(e)) => {
            return refuse(&mut client, &stream_id, "", e.condition(), &e.to_string()).await;
        }
    };
    let header = match StreamHeader::parse(&header_raw)
        .and_then(|h| h.check_client_namespace().map(|()| h))
    {
        Ok(h) => h,
        Err(e) => return refuse(&mut client, &stream_id, "", e.condition(), &e.to_string()).await,
    };
    let Some(domain) = header.to.clone().filter(|d| !d.is_empty()) else {
        return refuse(
            &mut client,
            &stream_id,
            "",
            Condition::HostUnknown,
            "the stream header has no 'to'",
        )
        .await;
    };

    let connected = tokio::time::timeout(
        shared.connect_timeout,
        upstream::connect(&shared.upstream, &domain, Some(&endpoints)),
    )
    .await;
    let upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::warn!(reason = %e.reason, "upstream unavailable");
            let mut out = client_stream_header(&stream_id, &domain).to_vec();
            match e.server_error {
                Some(err) => {
                    count_stream_error(&err, &[("stream", NS_STREAMS)]);
                    out.extend_from_slice(&err);
                    out.extend_from_slice(b"</stream:stream>");
                }
                None => {
                    metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => Condition::RemoteConnectionFailed.as_str()).increment(1);
                    out.extend_from_slice(&stream_error(
                        Condition::RemoteConnectionFailed,
                        "the server cannot be reached",
                    ));
                }
            }
            let _ = client.write_all(&out).await;
            let _ = client.shutdown().await;
            return None;
        }
        Err(_) => {
            tracing::warn!(timeout = ?shared.connect_timeout, "upstream connect timed out");
            return refuse(
                &mut client,
                &stream_id,
                &domain,
                Condition::RemoteConnectionFailed,
                "the server did not answer in time",
            )
            .await;
        }
    };
    tracing::debug!("upstream connected");
    let opening = Opening {
        domain,
        conn_id,
        client_prefixes: header.prefixes,
        auth_deadline,
    };
    // The client's header goes first; anything it sent right after is already in the framer.
    Some(match upstream {
        Upstream::Plain(up) => {
            Opened::Plain(Relay::new(client, up, cf, &opening, shared, &header_raw))
        }
        Upstream::Tls(up) => {
            Opened::Tls(Relay::new(client, *up, cf, &opening, shared, &header_raw))
        }
    })
}

/// Sends the proxy's own stream header and a stream error (nothing was relayed yet). Returns
/// `None`, what [`open`] returns for a refused client.
async fn refuse<C: AsyncWrite + Unpin, T>(
    client: &mut C,
    id: &str,
    domain: &str,
    condition: Condition,
    reason: &str,
) -> Option<T> {
    tracing::info!(%condition, reason, "stream refused");
    metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => condition.as_str()).increment(1);
    let mut out = client_stream_header(id, domain).to_vec();
    out.extend_from_slice(&stream_error(condition, reason));
    let _ = client.write_all(&out).await;
    let _ = client.shutdown().await;
    None
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The policy reads the time only for presence and IQs; messages skip the clock.
fn now_for(kind: ElementKind) -> u64 {
    if kind == ElementKind::Message {
        0
    } else {
        now_secs()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the client's stream opening told the relay.
#[derive(Debug, Clone)]
struct Opening {
    domain: String,
    conn_id: u64,
    client_prefixes: Vec<(String, String)>,
    auth_deadline: Instant,
}

/// How a relay ended.
#[derive(Debug)]
enum End {
    /// The client closed its stream.
    ClientClosed,
    /// The client's connection dropped without a stream close.
    ClientGone,
    /// The client sent something the proxy refuses: it gets this stream error.
    ClientError(Condition, String),
    /// The server closed its stream (after a stream error, if it sent one).
    ServerClosed,
    /// The server's connection dropped or stalled: nothing more can be said to it.
    ServerGone(String),
    /// The server sent something the proxy cannot relay, but its connection still works: the
    /// session ends, and the pending `unavailable`s still go out before the stream close.
    ServerUnreadable(String),
    /// The client stopped reading: like a drop (its stream may be resumed), but it is also
    /// sent a stream error in case it reads again.
    ClientStalled,
    /// The proxy is shutting down.
    Shutdown,
    /// The client resumed this stream on another connection, which asks for the state.
    TakenOver(oneshot::Sender<Detached>),
}

/// Stream management (XEP-0198) of this session, once the client enabled it.
#[derive(Debug)]
struct Sm {
    ns: &'static str,
    /// Set when the server enabled resumption.
    id: Option<String>,
    /// The client's `<enable/>` awaits the server's answer.
    enable_pending: bool,
    keep: Duration,
    c2s: SmCounter,
    s2c: SmCounter,
}

impl Sm {
    fn new(ns: &'static str) -> Self {
        Sm {
            ns,
            id: None,
            enable_pending: false,
            keep: DEFAULT_KEEP,
            c2s: SmCounter::default(),
            s2c: SmCounter::default(),
        }
    }
}

/// Where the policy's actions came from, for the stream-management counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// One stanza from the client.
    Client,
    /// One stanza from the server.
    Server,
    /// The proxy itself (session end, resumption).
    Proxy,
}

/// A `<resume/>` from the client, handled between two reads because it may have to wait for
/// the live session that holds the state.
struct ResumeRequest {
    previd: String,
    h: u32,
    ns: &'static str,
    raw: Bytes,
}

/// Per-session handles of the hot-path counters (one registry lookup per session, not per stanza).
struct Counters {
    /// Stanzas by kind from the client (0..4) and from the server (4..8), bytes read from the
    /// client (8) and from the server (9).
    handles: [Counter; 10],
    /// Counted here and added to `handles` once per read ([`Counters::publish`]): each add is an
    /// atomic on a cache line that every session of the process shares.
    pending: [u64; 10],
}

const BYTES_C2S: usize = 8;
const BYTES_S2C: usize = 9;

impl Counters {
    fn new() -> Self {
        let kinds = |dir: &'static str| {
            ["message", "presence", "iq", "other"]
                .map(|kind| metrics::counter!(m::STANZAS_TOTAL, "direction" => dir, "kind" => kind))
        };
        let [c0, c1, c2, c3] = kinds("c2s");
        let [s0, s1, s2, s3] = kinds("s2c");
        Counters {
            handles: [
                c0,
                c1,
                c2,
                c3,
                s0,
                s1,
                s2,
                s3,
                metrics::counter!(m::BYTES_TOTAL, "direction" => "c2s"),
                metrics::counter!(m::BYTES_TOTAL, "direction" => "s2c"),
            ],
            pending: [0; 10],
        }
    }

    fn stanza(&mut self, origin: Origin, kind: ElementKind) {
        let base = if origin == Origin::Server { 4 } else { 0 };
        self.pending[base + kind_index(kind)] += 1;
    }

    fn bytes(&mut self, which: usize, n: usize) {
        self.pending[which] += n as u64;
    }

    /// Adds what was counted since the last call to the shared counters.
    fn publish(&mut self) {
        for (handle, pending) in self.handles.iter().zip(self.pending.iter_mut()) {
            if *pending > 0 {
                handle.increment(std::mem::take(pending));
            }
        }
    }
}

fn kind_index(kind: ElementKind) -> usize {
    match kind {
        ElementKind::Message => 0,
        ElementKind::Presence => 1,
        ElementKind::Iq => 2,
        ElementKind::Other => 3,
    }
}

struct Relay<'a, C, U> {
    client: C,
    upstream: U,
    cf: Framer,
    sf: Framer,
    policy: Policy,
    /// Prefix bindings of the client's and the server's current stream headers.
    client_prefixes: Vec<(String, String)>,
    server_prefixes: Vec<(String, String)>,
    to_client: Vec<u8>,
    to_server: Vec<u8>,
    actions: Vec<Action>,
    counters: Counters,
    /// The session hides from someone, and how (`privacy_list` or `silent`).
    hidden: Option<&'static str>,
    jid_known: bool,
    /// SASL succeeded on this connection (a `<resume/>` is only taken after it).
    authenticated: bool,
    /// Who the client authenticated as (from its `<auth/>`): only that user's stream is resumed.
    sasl_user: Option<String>,
    domain: String,
    sm: Option<Sm>,
    resume_request: Option<ResumeRequest>,
    /// A resumption forwarded to the server, with the state it will continue with.
    pending_resume: Option<(String, Detached, u32)>,
    /// Takeover requests from a connection that resumes this session.
    takeover: Option<mpsc::Receiver<oneshot::Sender<Detached>>>,
    /// The client must authenticate before this instant.
    auth_deadline: Instant,
    /// Size of the last read on each leg (see [`QUIET_READ`]).
    c_last_read: usize,
    s_last_read: usize,
    shared: &'a Shared,
}

impl<'a, C, U> Relay<'a, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn new(
        client: C,
        upstream: U,
        cf: Framer,
        opening: &Opening,
        shared: &'a Shared,
        client_header: &[u8],
    ) -> Box<Self> {
        let Opening {
            domain,
            conn_id,
            client_prefixes,
            auth_deadline,
        } = opening.clone();
        Box::new(Relay {
            client,
            upstream,
            cf,
            // The server is trusted with deeper and wider elements than clients; its size bound stays.
            sf: Framer::with_limits(Limits {
                max_depth: crate::xml::framer::MAX_DEPTH,
                max_attributes: usize::MAX,
                ..shared.limits
            }),
            policy: Policy::with_strategy(
                &domain,
                &format!("veil{:x}{conn_id:x}", nanos() & 0xffff_ffff),
                shared.strategy,
            ),
            client_prefixes,
            server_prefixes: vec![("stream".into(), NS_STREAMS.into())],
            to_client: Vec::new(),
            to_server: client_header.to_vec(),
            actions: Vec::new(),
            counters: Counters::new(),
            hidden: None,
            jid_known: false,
            authenticated: false,
            sasl_user: None,
            domain: domain.clone(),
            sm: None,
            resume_request: None,
            pending_resume: None,
            takeover: None,
            auth_deadline,
            c_last_read: 0,
            s_last_read: 0,
            shared,
        })
    }

    /// Boxed `self`: the relay's state stays in its one allocation instead of being moved into
    /// this future (and copied again into each future that takes it).
    async fn run(mut self: Box<Self>) {
        let mut end = self.client_frames().err();
        if end.is_none() {
            end = self.flush().await.err();
        }
        let end = match end {
            Some(end) => end,
            None => self.pump().await,
        };
        // Boxed: the ending's state is large and only needed once, at the end.
        Box::pin(self.finish(end)).await;
    }

    async fn pump(&mut self) -> End {
        // This session's own token: polling the shared token's future takes a lock that every
        // session shares, and the pump polls it on every read. Made once, outside the loop.
        let shutdown = self.shared.shutdown.child_token();
        let cancelled = shutdown.cancelled();
        // Made once too: select! evaluates a disabled branch's expression all the same.
        let auth_timer = tokio::time::sleep_until(self.auth_deadline);
        tokio::pin!(cancelled, auth_timer);
        loop {
            let result = tokio::select! {
                _ = &mut cancelled => Err(End::Shutdown),
                _ = &mut auth_timer, if !self.authenticated => Err(End::ClientError(
                    Condition::ConnectionTimeout,
                    "authentication took too long".into(),
                )),
                request = takeover_request(&mut self.takeover) => Err(End::TakenOver(request)),
                // While the client's stanzas wait (see `client_frames`), nothing more is read
                // from it: its bytes wait in the socket, not in the proxy's memory.
                r = read_into(&mut self.client, self.cf.buffer_mut()), if !self.client_waits() => match r {
                    Ok(0) | Err(_) => Err(End::ClientGone),
                    Ok(n) => {
                        self.counters.bytes(BYTES_C2S, n);
                        self.c_last_read = n;
                        self.client_frames()
                    }
                },
                r = read_into(&mut self.upstream, self.sf.buffer_mut()) => match r {
                    Ok(0) => Err(End::ServerGone("the server closed the connection".into())),
                    Err(e) => Err(End::ServerGone(format!("read: {e}"))),
                    Ok(n) => {
                        self.counters.bytes(BYTES_S2C, n);
                        self.s_last_read = n;
                        // A resumption may have settled: the client's waiting stanzas go on.
                        self.server_frames().and_then(|()| self.client_frames())
                    }
                },
            };
            // Whatever was decided before an end is still written (e.g. a stream error relayed).
            let mut result = result.and(self.flush().await);
            while result.is_ok()
                && let Some(request) = self.resume_request.take()
            {
                // Boxed: its state is only needed for the moment of a resumption.
                Box::pin(self.start_resume(request)).await;
                result = self.client_frames().and(self.flush().await);
            }
            if let Err(end) = result {
                return end;
            }
            // A quiet leg gives its buffers back; a busy one keeps them (no allocation per read).
            if self.c_last_read < QUIET_READ {
                self.cf.release_if_empty();
                release(&mut self.to_server);
            }
            if self.s_last_read < QUIET_READ {
                self.sf.release_if_empty();
                release(&mut self.to_client);
            }
        }
    }

    /// The client's stanzas wait for the server: a resumption, or a privacy list, is open.
    fn client_waits(&self) -> bool {
        self.resume_request.is_some()
            || self.pending_resume.is_some()
            || self.policy.awaits_server()
    }

    /// Handles every complete frame from the client.
    fn client_frames(&mut self) -> Result<(), End> {
        // While a resumption is open, the client's next stanzas belong to the resumed session:
        // they wait until the server has answered (and the resumed policy is in place).
        // So do they while the policy waits for the server to confirm a privacy list: the next
        // stanza may be one that must not go out before the list is in force.
        while !self.client_waits() {
            let frame = match self.cf.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::ClientError(e.condition(), e.to_string())),
            };
            match frame {
                Frame::Whitespace(raw) => self.to_server.extend_from_slice(&raw),
                Frame::StreamHeader(raw) => {
                    let header = StreamHeader::parse(&raw)
                        .and_then(|h| h.check_client_namespace().map(|()| h))
                        .map_err(client_error)?;
                    self.client_prefixes = header.prefixes;
                    self.to_server.extend_from_slice(&raw);
                }
                Frame::StreamEnd(_) => return Err(End::ClientClosed),
                Frame::Element { raw, kind } => {
                    self.counters.stanza(Origin::Client, kind);
                    if kind == ElementKind::Other {
                        self.client_stream_element(raw)?;
                    } else {
                        self.policy
                            .from_client(&raw, kind, now_for(kind), &mut self.actions)
                            .map_err(violation)?;
                        self.apply_actions(Origin::Client)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Non-stanza elements from the client: SASL passes (never logged); what would take the
    /// stream out of the proxy's sight is answered by the proxy instead.
    fn client_stream_element(&mut self, raw: Bytes) -> Result<(), End> {
        let element = Element::parse(&raw, NS_CLIENT, &prefix_refs(&self.client_prefixes))
            .map_err(client_error)?;
        match (element.name.as_str(), element.ns.as_str()) {
            ("auth", NS_SASL) => {
                self.sasl_user = sasl::auth_user(&element);
                self.to_server.extend_from_slice(&raw);
                Ok(())
            }
            ("starttls", NS_TLS) => Err(End::ClientError(
                Condition::PolicyViolation,
                "TLS is already established".into(),
            )),
            ("compress", "http://jabber.org/protocol/compress") => {
                self.to_client.extend_from_slice(
                    b"<failure xmlns='http://jabber.org/protocol/compress'><setup-failed/></failure>",
                );
                Ok(())
            }
            ("enable", ns @ (NS_SM2 | NS_SM3)) => {
                if self.sm.is_some() || self.pending_resume.is_some() {
                    // Once per stream: a second one would reset the proxy's counts while the
                    // server keeps its own.
                    self.to_client
                        .extend_from_slice(sm_failed(ns, "unexpected-request").as_bytes());
                    return Ok(());
                }
                self.to_server.extend_from_slice(&raw);
                // The server counts the client's stanzas from here on.
                let mut sm = Sm::new(static_ns(ns));
                sm.enable_pending = true;
                sm.c2s.enable();
                self.sm = Some(sm);
                Ok(())
            }
            ("resume", ns @ (NS_SM2 | NS_SM3)) => {
                let previd = element.attr("previd").unwrap_or_default().to_owned();
                let h = parse_h(&element);
                match h {
                    Some(h) if self.authenticated && !previd.is_empty() => {
                        self.resume_request = Some(ResumeRequest {
                            previd,
                            h,
                            ns: static_ns(ns),
                            raw,
                        });
                    }
                    _ => self.refuse_resume(static_ns(ns), "unexpected-request"),
                }
                Ok(())
            }
            ("a", NS_SM2 | NS_SM3) => {
                // The client's count of what it received, as the server must see it.
                if let Some(sm) = self.sm.as_mut().filter(|sm| sm.s2c.is_enabled()) {
                    let h = parse_h(&element).ok_or_else(|| {
                        End::ClientError(
                            Condition::UndefinedCondition,
                            "<a/> without a valid h".into(),
                        )
                    })?;
                    let mapped = sm.s2c.ack(h);
                    self.to_server.extend_from_slice(&with_h(&raw, mapped)?);
                }
                Ok(())
            }
            ("r", NS_SM2 | NS_SM3) => {
                if self.sm.is_some() {
                    self.to_server.extend_from_slice(&raw);
                }
                Ok(())
            }
            _ => {
                self.to_server.extend_from_slice(&raw);
                Ok(())
            }
        }
    }

    /// The proxy answers a `<resume/>` itself: it does not hold that session's state, so it
    /// will not let the client continue a stream whose invisibility it does not know.
    fn refuse_resume(&mut self, ns: &str, condition: &str) {
        metrics::counter!(m::SM_RESUMPTIONS, "result" => "failed").increment(1);
        tracing::info!(condition, "resumption refused by the proxy");
        self.to_client
            .extend_from_slice(sm_failed(ns, condition).as_bytes());
    }

    /// Looks up the state of the session to resume (asking its live connection if needed) and,
    /// if the proxy holds it, forwards the `<resume/>` with the count the server must see.
    async fn start_resume(&mut self, request: ResumeRequest) {
        let Some(requester) = self.requester() else {
            self.refuse_resume(request.ns, "not-authorized");
            return;
        };
        let Some(state) = self.shared.resume.take(&request.previd, &requester).await else {
            self.refuse_resume(request.ns, "item-not-found");
            return;
        };
        let h = state.s2c.peek_ack(request.h);
        match set_start_tag_attr(&request.raw, "h", &h.to_string()) {
            Ok(rewritten) => {
                self.to_server.extend_from_slice(&rewritten);
                self.pending_resume = Some((request.previd, state, request.h));
            }
            Err(_) => {
                self.shared.resume.put(&request.previd, state);
                self.refuse_resume(request.ns, "bad-request");
            }
        }
    }

    /// The bare JID the client authenticated as.
    fn requester(&self) -> Option<jid::BareJid> {
        let user = self.sasl_user.as_deref()?;
        let jid = if user.contains('@') {
            user.to_owned()
        } else {
            format!("{user}@{}", self.domain)
        };
        crate::policy::normalize(&jid).map(|j| j.to_bare())
    }

    /// The server resumed the stream: this connection continues the detached session.
    fn resumed(&mut self, raw: &Bytes, element: &Element) -> Result<(), End> {
        let Some((id, mut state, client_h)) = self.pending_resume.take() else {
            return Err(End::ServerUnreadable(
                "<resumed/> without a resumption".into(),
            ));
        };
        let Some(server_h) = parse_h(element) else {
            // The state goes back to the store: the server's answer cannot be trusted.
            self.shared.resume.put(&id, state);
            return Err(End::ServerUnreadable("<resumed/> without a valid h".into()));
        };
        let client_count = state.c2s.peek_ack(server_h);
        state.c2s.rebase(server_h);
        let lost = state.s2c.rebase(client_h);
        self.to_client
            .extend_from_slice(&with_h(raw, client_count)?);
        set_hidden_gauges(self.hidden.take(), None);
        self.policy = state.policy;
        self.jid_known = false;
        self.takeover = self
            .policy
            .jid()
            .map(|j| self.shared.resume.register_live(&id, j.to_bare()));
        let mut sm = Sm::new(state.ns);
        sm.id = Some(id);
        sm.keep = state.keep;
        sm.c2s = state.c2s;
        sm.s2c = state.s2c;
        self.sm = Some(sm);
        // Answers of the proxy's own that the client had not received before the break.
        for stanza in lost {
            self.actions.push(Action::ToClient(stanza));
        }
        self.policy.resumed(&mut self.actions);
        self.apply_actions(Origin::Proxy)?;
        metrics::counter!(m::SM_RESUMPTIONS, "result" => "ok").increment(1);
        tracing::info!(client_h, server_h, "stream resumed");
        Ok(())
    }

    /// Handles every complete frame from the server.
    fn server_frames(&mut self) -> Result<(), End> {
        loop {
            let frame = match self.sf.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(End::ServerUnreadable(format!(
                        "the server sent bad XML: {e}"
                    )));
                }
            };
            match frame {
                Frame::Whitespace(raw) => self.to_client.extend_from_slice(&raw),
                Frame::StreamHeader(raw) => {
                    let header = StreamHeader::parse(&raw)
                        .map_err(|e| End::ServerUnreadable(e.to_string()))?;
                    self.server_prefixes = header.prefixes;
                    self.to_client.extend_from_slice(&raw);
                }
                Frame::StreamEnd(raw) => {
                    self.to_client.extend_from_slice(&raw);
                    return Err(End::ServerClosed);
                }
                Frame::Element { raw, kind } => {
                    self.counters.stanza(Origin::Server, kind);
                    if kind == ElementKind::Other {
                        self.server_stream_element(raw)?;
                    } else {
                        if let Err(v) = self.policy.from_server(&raw, kind, &mut self.actions) {
                            // A stanza the policy cannot judge is not forwarded (fail closed);
                            // the session goes on.
                            tracing::warn!(reason = %v.reason, "stanza from the server dropped");
                            self.actions.clear();
                        }
                        self.apply_actions(Origin::Server)?;
                    }
                }
            }
        }
    }

    fn server_stream_element(&mut self, raw: Bytes) -> Result<(), End> {
        let element = Element::parse(&raw, NS_CLIENT, &prefix_refs(&self.server_prefixes))
            .map_err(|e| End::ServerUnreadable(e.to_string()))?;
        match (element.name.as_str(), element.ns.as_str()) {
            ("features", NS_STREAMS) => match features::rewrite(&raw, &element) {
                Some(rewritten) => self.to_client.extend_from_slice(&rewritten),
                None => self.to_client.extend_from_slice(&raw),
            },
            ("success", NS_SASL) => {
                self.to_client.extend_from_slice(&raw);
                self.sf.reset();
                self.cf.reset();
                self.authenticated = true;
            }
            ("enabled", NS_SM2 | NS_SM3) => {
                // `location` would send a resuming client around the proxy.
                let rewritten = remove_start_tag_attr(&raw, "location")
                    .map_err(|e| End::ServerUnreadable(e.to_string()))?;
                self.to_client.extend_from_slice(&rewritten);
                let sm = self
                    .sm
                    .get_or_insert_with(|| Sm::new(static_ns(&element.ns)));
                sm.enable_pending = false;
                sm.s2c.enable();
                if let Some(max) = element.attr("max").and_then(|m| m.parse::<u64>().ok()) {
                    sm.keep = Duration::from_secs(max);
                }
                let resumable = matches!(element.attr("resume"), Some("true" | "1"));
                let owner = self.policy.jid().map(|j| j.to_bare());
                if let (true, Some(id), Some(owner)) = (resumable, element.attr("id"), owner) {
                    sm.id = Some(id.to_owned());
                    self.takeover = Some(self.shared.resume.register_live(id, owner));
                }
            }
            ("resumed", NS_SM2 | NS_SM3) => self.resumed(&raw, &element)?,
            ("failed", NS_SM2 | NS_SM3) => {
                if let Some((id, state, _)) = self.pending_resume.take() {
                    // Refused by the server (expired, or not this user's): the state stays for
                    // its rightful owner until it expires.
                    self.shared.resume.put(&id, state);
                    metrics::counter!(m::SM_RESUMPTIONS, "result" => "failed").increment(1);
                } else if self.sm.as_ref().is_some_and(|sm| sm.enable_pending) {
                    // The server refused to enable stream management: nothing to count.
                    self.sm = None;
                }
                self.to_client.extend_from_slice(&raw);
            }
            ("a", NS_SM2 | NS_SM3) => match self.sm.as_mut().filter(|sm| sm.c2s.is_enabled()) {
                Some(sm) => {
                    let h = parse_h(&element)
                        .ok_or_else(|| End::ServerUnreadable("<a/> without a valid h".into()))?;
                    let mapped = sm.c2s.ack(h);
                    self.to_client.extend_from_slice(&with_h(&raw, mapped)?);
                }
                None => self.to_client.extend_from_slice(&raw),
            },
            ("error", NS_STREAMS) => {
                let condition = stream_error_condition(&element);
                metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => condition.clone())
                    .increment(1);
                tracing::info!(%condition, "stream error from the server");
                if condition == "see-other-host" {
                    // Following the redirect would take the client around the proxy.
                    self.to_client.extend_from_slice(&stream_error(
                        Condition::SystemShutdown,
                        "the server is moving; reconnect later",
                    ));
                    return Err(End::ServerClosed);
                }
                self.to_client.extend_from_slice(&raw);
            }
            _ => self.to_client.extend_from_slice(&raw),
        }
        Ok(())
    }

    /// Moves the policy's actions into the write queues, counts them for stream management,
    /// and keeps the gauges and the log current.
    fn apply_actions(&mut self, origin: Origin) -> Result<(), End> {
        let (mut to_server, mut to_client) = (0u64, 0u64);
        for action in self.actions.drain(..) {
            match action {
                Action::ToServer(b) => {
                    to_server += 1;
                    self.to_server.extend_from_slice(&b);
                }
                Action::ToClient(b) => {
                    to_client += 1;
                    self.to_client.extend_from_slice(&b);
                    // The proxy's own answers are its to deliver again after a resumption.
                    if origin != Origin::Server
                        && let Some(sm) = self.sm.as_mut()
                    {
                        let (_, out) = sm.s2c.totals();
                        sm.s2c.remember_injected(out + to_client, b);
                    }
                }
            }
        }
        if let Some(sm) = self.sm.as_mut() {
            let (from_client, from_server) = match origin {
                Origin::Client => (1, 0),
                Origin::Server => (0, 1),
                Origin::Proxy => (0, 0),
            };
            let counted = sm
                .c2s
                .record(from_client, to_server)
                .and(sm.s2c.record(from_server, to_client));
            if counted.is_err() {
                return Err(End::ClientError(
                    Condition::ResourceConstraint,
                    "too many unacknowledged stanzas".into(),
                ));
            }
        }
        let hidden = self
            .policy
            .is_hidden()
            .then(|| self.policy.strategy_in_use());
        if hidden != self.hidden {
            set_hidden_gauges(self.hidden, hidden);
            self.hidden = hidden;
            tracing::info!(
                hidden = hidden.is_some(),
                strategy = hidden,
                "visibility changed"
            );
        }
        if !self.jid_known
            && let Some(jid) = self.policy.jid()
        {
            self.jid_known = true;
            Span::current().record("jid", tracing::field::display(jid));
            tracing::info!("resource bound");
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        // The counts go out with the bytes they count.
        self.counters.publish();
        // A peer that does not read must not hold the session (and its buffers) forever.
        let limit = self.shared.write_timeout;
        if !self.to_server.is_empty() {
            let r = write_bounded(&mut self.upstream, &self.to_server, limit).await;
            clear_write_buffer(&mut self.to_server);
            match r {
                Ok(r) => r.map_err(|e| End::ServerGone(format!("write: {e}")))?,
                Err(_) => return Err(End::ServerGone("the server does not read".into())),
            }
        }
        if !self.to_client.is_empty() {
            // A client that resumed elsewhere may be the reason this write does not finish.
            let r = tokio::select! {
                r = write_bounded(&mut self.client, &self.to_client, limit) => r,
                request = takeover_request(&mut self.takeover) => {
                    clear_write_buffer(&mut self.to_client);
                    return Err(End::TakenOver(request));
                }
            };
            clear_write_buffer(&mut self.to_client);
            match r {
                Ok(r) => r.map_err(|_| End::ClientGone)?,
                Err(_) => return Err(End::ClientStalled),
            }
        }
        Ok(())
    }

    /// Ends both legs in the order that keeps the promise: while the upstream is still open, the
    /// policy's pending `unavailable`s go out before the proxy closes the stream.
    async fn finish(mut self, end: End) {
        // What was counted before the end, if no flush carried it out.
        self.counters.publish();
        let upstream_open = !matches!(end, End::ServerClosed | End::ServerGone(_));
        let resumable = self.sm.as_ref().is_some_and(|sm| sm.id.is_some());
        let client_lost = matches!(
            end,
            End::ClientGone | End::ClientStalled | End::TakenOver(_)
        );
        if upstream_open && resumable && client_lost {
            return self.detach(end).await;
        }
        if let Some(id) = self.sm.as_ref().and_then(|sm| sm.id.as_deref()) {
            self.shared.resume.forget(id);
        }
        let client_error = match &end {
            End::ClientError(condition, reason) => Some((*condition, reason.as_str())),
            End::ClientStalled => Some((
                Condition::ResourceConstraint,
                "the client does not read what it is sent",
            )),
            End::Shutdown => Some((Condition::SystemShutdown, "the proxy is shutting down")),
            End::ServerGone(_) | End::ServerUnreadable(_) => Some((
                Condition::RemoteConnectionFailed,
                "the connection to the server was lost",
            )),
            End::ClientClosed | End::ClientGone | End::TakenOver(_) | End::ServerClosed => None,
        };
        match (&end, client_error) {
            (End::ServerGone(reason) | End::ServerUnreadable(reason), _) => {
                tracing::warn!(reason, "upstream lost");
            }
            (_, Some((condition, reason))) => {
                tracing::info!(%condition, reason, "stream error to the client")
            }
            _ => tracing::info!(?end, "session ending"),
        }
        if let Some((condition, reason)) = client_error {
            metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => condition.as_str())
                .increment(1);
            self.to_client
                .extend_from_slice(&stream_error(condition, reason));
        } else if matches!(end, End::ClientClosed) {
            self.to_client.extend_from_slice(b"</stream:stream>");
        }
        // (On ServerClosed the server's own close was relayed already.)
        if upstream_open {
            self.policy.session_end(&mut self.actions);
            let told = self.actions.len();
            let _ = self.apply_actions(Origin::Proxy);
            if told > 0 {
                tracing::info!(told, "unavailable sent for the ending session");
            }
            self.to_server.extend_from_slice(b"</stream:stream>");
        } else if self.policy.shown().next().is_some() {
            tracing::warn!(
                entities = self.policy.shown().count(),
                "upstream gone: entities shown this resource by directed presence cannot be told unavailable"
            );
        }
        // Best effort from here on, each step bounded: either leg may be gone or stalled.
        let to_server = std::mem::take(&mut self.to_server);
        let to_client = std::mem::take(&mut self.to_client);
        if upstream_open {
            let _ =
                tokio::time::timeout(CLOSE_GRACE, write_out(&mut self.upstream, &to_server)).await;
        }
        if !client_lost || matches!(end, End::ClientStalled) {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                let _ = self.client.write_all(&to_client).await;
                let _ = self.client.shutdown().await;
            })
            .await;
        }
        if upstream_open {
            // Give the server time to process the unavailables and answer the close.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                drain_until_closed(&mut self.upstream, &mut self.sf).await;
                let _ = self.upstream.shutdown().await;
            })
            .await;
        }
        set_hidden_gauges(self.hidden, None);
        tracing::info!(?end, "session ended");
    }
}

impl<C, U> Relay<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// The client's connection is gone but its stream may be resumed: the entities only the
    /// proxy would tell get `unavailable` now, the upstream connection is dropped WITHOUT a
    /// stream close (so the server keeps the session for resumption), and the state waits for
    /// the resuming connection.
    async fn detach(mut self, end: End) {
        self.policy.detach(&mut self.actions);
        let told = self.actions.len();
        let _ = self.apply_actions(Origin::Proxy);
        let to_server = std::mem::take(&mut self.to_server);
        let _ = tokio::time::timeout(CLOSE_GRACE, write_out(&mut self.upstream, &to_server)).await;
        set_hidden_gauges(self.hidden, None);
        let Relay {
            client,
            upstream,
            policy,
            sm,
            shared,
            ..
        } = self;
        // Dropped, not shut down: no close_notify, no </stream:stream>.
        drop(upstream);
        drop(client);
        let Some(Sm {
            ns,
            id: Some(id),
            keep,
            enable_pending: _,
            c2s,
            s2c,
        }) = sm
        else {
            return;
        };
        let state = Detached {
            policy,
            c2s,
            s2c,
            ns,
            keep,
        };
        tracing::info!(told, "client gone; stream kept for resumption");
        match end {
            End::TakenOver(reply) => {
                if let Err(state) = reply.send(state) {
                    shared.resume.put(&id, state);
                }
            }
            _ => shared.resume.put(&id, state),
        }
    }
}

/// Moves one session between the invisible-session gauges.
fn set_hidden_gauges(before: Option<&'static str>, after: Option<&'static str>) {
    if before == after {
        return;
    }
    if let Some(strategy) = before {
        metrics::gauge!(m::INVISIBLE_SESSIONS).decrement(1.0);
        metrics::gauge!(m::INVISIBLE_SESSIONS_BY_STRATEGY, "strategy" => strategy).decrement(1.0);
    }
    if let Some(strategy) = after {
        metrics::gauge!(m::INVISIBLE_SESSIONS).increment(1.0);
        metrics::gauge!(m::INVISIBLE_SESSIONS_BY_STRATEGY, "strategy" => strategy).increment(1.0);
    }
}

/// Waits for a takeover request; never resolves without a channel.
async fn takeover_request(
    rx: &mut Option<mpsc::Receiver<oneshot::Sender<Detached>>>,
) -> oneshot::Sender<Detached> {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A stream-management `<failed/>` with a stanza error condition.
fn sm_failed(ns: &str, condition: &str) -> String {
    format!(
        "<failed xmlns='{ns}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    )
}

/// The `h` of an `<a/>`, `<resume/>` or `<resumed/>`: a u32, required.
fn parse_h(element: &Element) -> Option<u32> {
    element.attr("h").and_then(|h| h.trim().parse::<u32>().ok())
}

/// Prefix bindings as the element parser takes them.
fn prefix_refs(prefixes: &[(String, String)]) -> Vec<(&str, &str)> {
    prefixes
        .iter()
        .map(|(p, n)| (p.as_str(), n.as_str()))
        .collect()
}

/// The stream-management namespace as a static string (it was matched against one).
fn static_ns(ns: &str) -> &'static str {
    if ns == NS_SM2 { NS_SM2 } else { NS_SM3 }
}

/// An `<a/>` or `<resumed/>` with its `h` replaced.
fn with_h(raw: &[u8], h: u32) -> Result<Bytes, End> {
    set_start_tag_attr(raw, "h", &h.to_string())
        .map_err(|e| End::ServerGone(format!("cannot rewrite h: {e}")))
}

/// Reads (and drops) what the server still sends until it closes its stream or the connection.
async fn drain_until_closed<U: AsyncRead + Unpin>(upstream: &mut U, framer: &mut Framer) {
    loop {
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::StreamEnd(_))) | Err(_) => return,
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        match read_into(upstream, framer.buffer_mut()).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads what `r` has ready and appends it to `buf`, through this thread's [`SCRATCH`].
async fn read_into<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
            buf.extend_from_slice(rb.filled());
            Poll::Ready(Ok(rb.filled().len()))
        })
    })
    .await
}

/// Frees an empty write queue's memory.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

/// Writes and flushes: a TLS stream may keep encrypted records back after `write_all` (when the
/// socket is full or the task's budget is spent) until it is flushed.
async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// [`write_out`] within `limit`. Most writes finish at once: the timer is only set for one
/// that does not (setting it costs atomics shared with every other session).
async fn write_bounded<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<std::io::Result<()>, tokio::time::error::Elapsed> {
    let mut write = std::pin::pin!(write_out(w, bytes));
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return Ok(r);
    }
    tokio::time::timeout(limit, write).await
}

/// Empties a write queue, giving back the memory of an unusually large burst.
fn clear_write_buffer(buf: &mut Vec<u8>) {
    if buf.capacity() > 4 * READ_CHUNK {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

fn client_error(e: FrameError) -> End {
    End::ClientError(e.condition(), e.to_string())
}

fn violation(v: Violation) -> End {
    End::ClientError(v.condition, v.reason)
}

fn stream_error_condition(error: &Element) -> String {
    error
        .elements()
        .find(|e| e.ns == crate::ns::STREAM_ERRORS && e.name != "text")
        .map(|e| e.name.clone())
        .unwrap_or_else(|| "undefined-condition".into())
}

fn count_stream_error(raw: &[u8], prefixes: &[(&str, &str)]) {
    let condition = Element::parse(raw, NS_CLIENT, prefixes)
        .map(|e| stream_error_condition(&e))
        .unwrap_or_else(|_| "undefined-condition".into());
    metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => condition).increment(1);
}
