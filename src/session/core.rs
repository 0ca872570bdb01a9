//! One session as a sans-IO state machine: bytes and events in, bytes per leg and
//! [`Event`]s out, and at the end a [`Plan`]. No socket, no clock, no task: the shell
//! ([`super::shell`]) moves the bytes and carries out the events.
//!
//! Inputs: [`Core::handle_client_bytes`], [`Core::handle_server_bytes`],
//! [`Core::handle_connected`] / [`Core::handle_connect_failed`] (the shell connected upstream, or
//! could not), [`Core::handle_resume_state`] (the resume store's answer), and the ends the shell
//! sees itself (a leg closed or stalled, a timer, a takeover, shutdown) as an [`End`] given to
//! [`Core::finish`].
//! Outputs: [`Core::client_out`] and [`Core::server_out`] (bytes to write, in order),
//! [`Core::poll_event`] (work for the shell), [`Core::end`] (the session must end) and
//! [`Core::finish`] (the ending as a plan).
//!
//! Stream restarts: after SASL `<success/>` the server's next bytes are a new stream, and so are
//! the client's (it may not send anything before it has read `<success/>`). Both framers are
//! reset right when `<success/>` passes, at that exact frame boundary, so no byte of either new
//! stream is read with the old parser state.

use std::time::Duration;

use bytes::Bytes;
use jid::BareJid;

use super::ending::{End, Plan};
use crate::ns;
use crate::policy::report::Reports;
use crate::policy::{Action, Policy, Strategy};
use crate::resume::{DEFAULT_KEEP, Detached};
use crate::stream::errors::{Condition, client_stream_header, stream_error};
use crate::stream::sm::Counter as SmCounter;
use crate::stream::{StreamHeader, features, sasl};
use crate::xml::element::{remove_start_tag_attr, set_start_tag_attr};
use crate::xml::{Element, ElementKind, Frame, FrameError, Framer, Limits};

/// A read smaller than this leaves the leg quiet: once its frames are handled and its output
/// written, its buffers are freed, so that the thousands of sessions that sit idle for hours
/// hold none.
pub const QUIET_READ: usize = 1024;
/// A write queue larger than this is freed once written, not kept for the next burst.
const KEEP_QUEUE: usize = 64 * 1024;

/// Where the stream is. Each phase holds what only it needs, so a state that cannot happen
/// cannot be written (a resumption state outside a resumption, a user before SASL …).
#[derive(Debug)]
pub enum Phase {
    /// The client's first stream on a STARTTLS port, before TLS: the proxy answers it itself
    /// (RFC 6120 5.4) and accepts nothing but `<starttls/>`.
    PreTls(PreTls),
    /// Waiting for the client's stream header (over TLS); nothing is connected upstream yet.
    Opening,
    /// The client's header is read; the shell connects upstream ([`Event::Connect`]).
    Connecting { header: Bytes },
    /// The legs negotiate (SASL) through the proxy.
    Negotiating { sasl_user: Option<String> },
    /// SASL succeeded on this connection: the client binds a resource or resumes a stream.
    Authenticated { sasl_user: Option<String> },
    /// A `<resume/>` is open; the client's next stanzas wait for its outcome.
    Resuming {
        sasl_user: Option<String>,
        step: Resume,
    },
    /// A resource is bound (or a stream resumed): the policy rules every stanza.
    Bound,
    /// Only while the phase moves from one step to the next (see `std::mem::replace`).
    Ended,
}

/// The steps of the exchange before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTls {
    /// Waiting for the client's stream header.
    Header,
    /// The proxy offered `<starttls><required/></starttls>`; waiting for `<starttls/>`.
    Starttls,
    /// `<proceed/>` is queued: the shell runs the TLS handshake ([`Event::StartTls`]), then
    /// calls [`Core::handle_tls_established`].
    Proceed,
}

/// The two steps of a resumption.
#[derive(Debug)]
pub enum Resume {
    /// The shell asks the resume store for the state ([`Event::LookupResume`]).
    Lookup {
        ns: &'static str,
        raw: Bytes,
        previd: String,
        h: u32,
    },
    /// The `<resume/>` went to the server; the state waits for its `<resumed/>` or `<failed/>`.
    Server {
        id: String,
        state: Box<Detached>,
        client_h: u32,
    },
}

/// Work for the shell, in order.
#[derive(Debug)]
pub enum Event {
    /// Write what is queued for the client (`<proceed/>`), then run the TLS handshake for
    /// this domain.
    StartTls { domain: String },
    /// Connect upstream for this domain, then call [`Core::handle_connected`] or
    /// [`Core::handle_connect_failed`].
    Connect { domain: String },
    /// Take the state of stream `previd` for `requester` from the resume store (it may have to
    /// wait for the live session that holds it), then call [`Core::handle_resume_state`].
    LookupResume { previd: String, requester: BareJid },
    /// Register this session as live under its stream-management id: a resuming connection
    /// may ask it for its state.
    RegisterLive { id: String, owner: BareJid },
    /// A resumption state the server did not take goes back to the store.
    PutBack { id: String, state: Box<Detached> },
    /// A resumption ended: taken by the server, or refused.
    Resumption { ok: bool },
    /// A stream error was sent or received (for the metric).
    StreamError(Condition),
    /// The session started or stopped hiding from someone (`privacy_list` or `silent`).
    Hidden {
        before: Option<&'static str>,
        after: Option<&'static str>,
    },
    /// A resource was bound: its full JID, for the log.
    Bound(String),
}

/// Stanzas by kind from the client (0..4) and from the server (4..8), counted by the core and
/// published by the shell once per read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stanzas(pub [u64; 8]);

/// Where the policy's actions came from, for the stream-management counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// One stanza from the client.
    Client,
    /// One stanza from the server.
    Server,
    /// The proxy itself (session end, resumption).
    Proxy,
}

/// Stream management (XEP-0198) of this session, once the client enabled it.
#[derive(Debug)]
pub(super) struct Sm {
    pub(super) ns: &'static str,
    /// Set when the server enabled resumption.
    pub(super) id: Option<String>,
    /// The client's `<enable/>` awaits the server's answer.
    pub(super) enable_pending: bool,
    pub(super) keep: Duration,
    pub(super) c2s: SmCounter,
    pub(super) s2c: SmCounter,
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

/// What the core needs to know of the proxy's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    pub strategy: Strategy,
    /// The proxy's own stream id for refusals before the server answered.
    pub stream_id: String,
    /// Prefix of the ids of the proxy's own IQs.
    pub id_prefix: String,
}

/// One write queue: bytes in order, and how far the shell has written them.
#[derive(Debug, Default)]
struct Queue {
    bytes: Vec<u8>,
    written: usize,
}

thread_local! {
    /// Empty write queues of this worker thread's quiet sessions, lent to the next session that
    /// writes: a quiet session holds no queue, and a busy one does not pay an allocation per
    /// stanza for it.
    static SPARE_QUEUES: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Spare queues kept per thread, and the largest kept.
const SPARE_MAX: usize = 64;
const SPARE_CAPACITY: usize = 16 * 1024;

impl Queue {
    /// Appends bytes, taking a spare queue if this one holds no memory.
    fn push(&mut self, bytes: &[u8]) {
        if self.bytes.capacity() == 0
            && let Some(spare) = SPARE_QUEUES.with_borrow_mut(|s| s.pop())
        {
            self.bytes = spare;
        }
        self.bytes.extend_from_slice(bytes);
    }

    fn pending(&self) -> &[u8] {
        &self.bytes[self.written..]
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
        if self.written >= self.bytes.len() {
            if self.bytes.capacity() > KEEP_QUEUE {
                self.bytes = Vec::new();
            } else {
                self.bytes.clear();
            }
            self.written = 0;
        }
    }

    fn take(&mut self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.drain(..self.written);
        self.written = 0;
        bytes
    }

    fn release_if_empty(&mut self) {
        if self.bytes.is_empty() && self.bytes.capacity() > 0 {
            let spare = std::mem::take(&mut self.bytes);
            if spare.capacity() <= SPARE_CAPACITY {
                SPARE_QUEUES.with_borrow_mut(|s| {
                    if s.len() < SPARE_MAX {
                        s.push(spare);
                    }
                });
            }
        }
    }
}

/// One session's protocol state.
#[derive(Debug)]
pub struct Core {
    pub(super) phase: Phase,
    cf: Framer,
    sf: Framer,
    pub(super) policy: Policy,
    strategy: Strategy,
    id_prefix: String,
    /// Prefix bindings of the client's and the server's current stream headers.
    client_prefixes: Vec<(String, String)>,
    server_prefixes: Vec<(String, String)>,
    to_client: Queue,
    to_server: Queue,
    pub(super) actions: Vec<Action>,
    pub(super) sm: Option<Sm>,
    domain: String,
    stream_id: String,
    pub(super) events: Vec<Event>,
    stanzas: Stanzas,
    /// The session hides from someone, and how.
    pub(super) hidden: Option<&'static str>,
    jid_known: bool,
    /// Set when the session must end; what was queued before still goes out (see [`Plan`]).
    end: Option<End>,
    c_last_read: usize,
    s_last_read: usize,
}

impl Core {
    /// A session whose client connected over TLS (direct TLS, XEP-0368).
    pub fn new(config: Config) -> Core {
        Core::with_phase(config, Phase::Opening)
    }

    /// A session on a STARTTLS port: the client's first stream is before TLS.
    pub fn new_starttls(config: Config) -> Core {
        Core::with_phase(config, Phase::PreTls(PreTls::Header))
    }

    fn with_phase(config: Config, phase: Phase) -> Core {
        Core {
            phase,
            cf: Framer::with_limits(config.limits),
            // The server is trusted with deeper and wider elements than clients; its size bound stays.
            sf: Framer::with_limits(Limits {
                max_depth: crate::xml::framer::MAX_DEPTH,
                max_attributes: usize::MAX,
                ..config.limits
            }),
            policy: Policy::with_strategy("", &config.id_prefix, config.strategy),
            strategy: config.strategy,
            id_prefix: config.id_prefix,
            client_prefixes: Vec::new(),
            server_prefixes: vec![("stream".into(), ns::STREAMS.into())],
            to_client: Queue::default(),
            to_server: Queue::default(),
            actions: Vec::new(),
            sm: None,
            domain: String::new(),
            stream_id: config.stream_id,
            events: Vec::new(),
            stanzas: Stanzas::default(),
            hidden: None,
            jid_known: false,
            end: None,
            c_last_read: 0,
            s_last_read: 0,
        }
    }

    #[cfg(test)]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The session must end for this reason (the shell then calls [`Core::finish`]).
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Bytes for the client, not yet written.
    pub fn client_out(&self) -> &[u8] {
        self.to_client.pending()
    }

    /// Bytes for the server, not yet written.
    pub fn server_out(&self) -> &[u8] {
        self.to_server.pending()
    }

    /// The shell wrote `n` bytes of [`Core::client_out`].
    pub fn client_written(&mut self, n: usize) {
        self.to_client.advance(n);
    }

    /// The shell wrote `n` bytes of [`Core::server_out`].
    pub fn server_written(&mut self, n: usize) {
        self.to_server.advance(n);
    }

    /// Events wait for the shell.
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next piece of work for the shell.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            return None;
        }
        let event = self.events.remove(0);
        if self.events.is_empty() {
            // Events are rare (a few per session): their queue holds no memory between them.
            self.events = Vec::new();
        }
        Some(event)
    }

    /// Stanzas counted since the last call.
    pub fn take_stanzas(&mut self) -> Stanzas {
        std::mem::take(&mut self.stanzas)
    }

    /// What the policy reported since the last call (the shell counts it).
    pub fn take_reports(&mut self) -> Reports {
        self.policy.take_reports()
    }

    /// The client's stanzas wait for the server (a resumption, or a privacy list, is open), or
    /// for the upstream connection: the shell does not read the client meanwhile, so its bytes
    /// wait in the socket, not in the proxy's memory.
    pub fn client_waits(&self) -> bool {
        matches!(
            self.phase,
            Phase::PreTls(PreTls::Proceed) | Phase::Connecting { .. } | Phase::Resuming { .. }
        ) || self.policy.awaits_server()
    }

    /// Before authentication (the shell's authentication timer runs).
    pub fn authenticating(&self) -> bool {
        matches!(
            self.phase,
            Phase::PreTls(_)
                | Phase::Opening
                | Phase::Connecting { .. }
                | Phase::Negotiating { .. }
        )
    }

    /// Nothing is relayed yet: no upstream, and the client has seen no server's stream header.
    pub fn before_relay(&self) -> bool {
        matches!(
            self.phase,
            Phase::PreTls(_) | Phase::Opening | Phase::Connecting { .. }
        )
    }

    /// The client's stream has no header of the proxy's yet, so a refusal must start with one.
    pub(super) fn owes_header(&self) -> bool {
        matches!(
            self.phase,
            Phase::PreTls(PreTls::Header) | Phase::Opening | Phase::Connecting { .. }
        )
    }

    /// The TLS handshake after `<proceed/>` succeeded: the client starts a new stream over TLS.
    pub fn handle_tls_established(&mut self) {
        if matches!(self.phase, Phase::PreTls(PreTls::Proceed)) {
            self.cf.reset();
            self.phase = Phase::Opening;
        }
    }

    /// Frees the buffers of quiet legs whose output is written.
    pub fn release_quiet(&mut self) {
        if self.c_last_read < QUIET_READ && self.to_server.pending().is_empty() {
            self.cf.release_if_empty();
            self.to_server.release_if_empty();
        }
        if self.s_last_read < QUIET_READ && self.to_client.pending().is_empty() {
            self.sf.release_if_empty();
            self.to_client.release_if_empty();
        }
    }

    /// Bytes from the client.
    pub fn handle_client_bytes(&mut self, bytes: &[u8]) {
        self.c_last_read = bytes.len();
        self.cf.extend(bytes);
        self.client_frames();
    }

    /// Bytes from the server.
    pub fn handle_server_bytes(&mut self, bytes: &[u8]) {
        self.s_last_read = bytes.len();
        self.sf.extend(bytes);
        if self.end.is_some() {
            return;
        }
        if let Err(end) = self.server_frames() {
            self.set_end(end);
        }
        // A resumption or a privacy list may have settled: the client's waiting stanzas go on.
        self.client_frames();
    }

    /// The upstream is connected: the client's header goes first, then whatever it sent
    /// after it (already in the framer).
    pub fn handle_connected(&mut self) {
        let Phase::Connecting { header } = std::mem::replace(&mut self.phase, Phase::Ended) else {
            return;
        };
        self.phase = Phase::Negotiating { sasl_user: None };
        self.to_server.push(&header);
        self.client_frames();
    }

    /// The upstream could not be reached; `server_error`: the stream error the server sent
    /// during the proxy's own negotiation with it, relayed as it is.
    pub fn handle_connect_failed(&mut self, server_error: Option<Bytes>) {
        self.set_end(End::Unreachable(server_error));
    }

    /// The resume store's answer to [`Event::LookupResume`].
    pub fn handle_resume_state(&mut self, state: Option<Detached>) {
        let Phase::Resuming {
            sasl_user,
            step:
                Resume::Lookup {
                    ns,
                    raw,
                    previd: id,
                    h: client_h,
                },
        } = std::mem::replace(&mut self.phase, Phase::Ended)
        else {
            return;
        };
        let Some(state) = state else {
            self.phase = Phase::Authenticated { sasl_user };
            self.refuse_resume(ns, "item-not-found");
            return self.client_frames();
        };
        let server_h = state.s2c.peek_ack(client_h);
        match set_start_tag_attr(&raw, "h", &server_h.to_string()) {
            Ok(rewritten) => {
                self.to_server.push(&rewritten);
                self.phase = Phase::Resuming {
                    sasl_user,
                    step: Resume::Server {
                        id,
                        state: Box::new(state),
                        client_h,
                    },
                };
            }
            Err(_) => {
                self.phase = Phase::Authenticated { sasl_user };
                self.events.push(Event::PutBack {
                    id,
                    state: Box::new(state),
                });
                self.refuse_resume(ns, "bad-request");
                self.client_frames();
            }
        }
    }

    fn set_end(&mut self, end: End) {
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    /// Handles every complete frame from the client.
    fn client_frames(&mut self) {
        while self.end.is_none() && !self.client_waits() {
            let frame = match self.cf.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => return self.set_end(client_error(&e)),
            };
            if let Err(end) = self.client_frame(frame) {
                self.set_end(end);
            }
        }
    }

    fn client_frame(&mut self, frame: Frame) -> Result<(), End> {
        match self.phase {
            Phase::PreTls(step) => return self.client_pre_tls(step, frame),
            Phase::Opening => return self.client_opening(frame),
            _ => {}
        }
        match frame {
            Frame::Whitespace(raw) => self.to_server.push(&raw),
            Frame::StreamHeader(raw) => {
                let header = StreamHeader::parse(&raw)
                    .and_then(|h| h.check_client_namespace().map(|()| h))
                    .map_err(|e| client_error(&e))?;
                self.client_prefixes = header.prefixes;
                self.to_server.push(&raw);
            }
            Frame::StreamEnd(_) => return Err(End::ClientClosed),
            Frame::Element { raw, kind } => {
                self.count(Origin::Client, kind);
                if kind == ElementKind::Other {
                    self.client_stream_element(raw)?;
                } else if Policy::passes_unchanged(kind) {
                    self.to_server.push(&raw);
                    self.cf.recycle(raw);
                    self.forwarded(Origin::Client)?;
                } else {
                    self.policy
                        .from_client(&raw, kind, now_for(kind), &mut self.actions)
                        .map_err(|v| End::ClientError(v.condition, v.reason))?;
                    self.apply_actions(Origin::Client)?;
                }
            }
        }
        Ok(())
    }

    /// The client's stream header, the first frame of each of its streams before the relay.
    fn client_header(frame: Frame) -> Result<Option<(Bytes, StreamHeader, String)>, End> {
        let raw = match frame {
            Frame::Whitespace(_) => return Ok(None),
            Frame::StreamHeader(raw) => raw,
            _ => {
                return Err(End::Refused(
                    Condition::NotWellFormed,
                    "expected a stream header".into(),
                ));
            }
        };
        let header = StreamHeader::parse(&raw)
            .and_then(|h| h.check_client_namespace().map(|()| h))
            .map_err(|e| End::Refused(e.condition(), e.to_string()))?;
        let Some(domain) = header.to.clone().filter(|d| !d.is_empty()) else {
            return Err(End::Refused(
                Condition::HostUnknown,
                "the stream header has no 'to'".into(),
            ));
        };
        Ok(Some((raw, header, domain)))
    }

    /// Before TLS on a STARTTLS port: the proxy answers the client's stream itself.
    fn client_pre_tls(&mut self, step: PreTls, frame: Frame) -> Result<(), End> {
        let required = || {
            End::ClientError(
                Condition::PolicyViolation,
                "TLS is required before anything else".into(),
            )
        };
        match step {
            PreTls::Header => {
                let Some((_, header, domain)) = Core::client_header(frame)? else {
                    return Ok(());
                };
                self.domain = domain;
                // `<starttls/>` may use a prefix the header declared.
                self.client_prefixes = header.prefixes;
                let header = self.own_header();
                self.to_client.push(&header);
                self.to_client.push(
                    format!(
                        "<stream:features><starttls xmlns='{}'><required/></starttls></stream:features>",
                        ns::TLS
                    )
                    .as_bytes(),
                );
                self.phase = Phase::PreTls(PreTls::Starttls);
            }
            PreTls::Starttls => match frame {
                Frame::Whitespace(_) => {}
                Frame::StreamEnd(_) => return Err(End::ClientClosed),
                Frame::Element { raw, .. } => {
                    let element =
                        Element::parse(&raw, ns::CLIENT, &prefix_refs(&self.client_prefixes));
                    if !element.is_ok_and(|e| e.name == "starttls" && e.ns == ns::TLS) {
                        return Err(required());
                    }
                    // The client must wait for <proceed/> before its TLS ClientHello.
                    if self.cf.buffered() != 0 {
                        return Err(End::ClientError(
                            Condition::PolicyViolation,
                            "data after <starttls/> before <proceed/>".into(),
                        ));
                    }
                    self.to_client
                        .push(format!("<proceed xmlns='{}'/>", ns::TLS).as_bytes());
                    self.phase = Phase::PreTls(PreTls::Proceed);
                    self.events.push(Event::StartTls {
                        domain: self.domain.clone(),
                    });
                }
                Frame::StreamHeader(_) => return Err(required()),
            },
            // Not read: the client's next bytes are its TLS handshake.
            PreTls::Proceed => {}
        }
        Ok(())
    }

    /// The client's stream header (over TLS): the shell connects upstream.
    fn client_opening(&mut self, frame: Frame) -> Result<(), End> {
        let Some((raw, header, domain)) = Core::client_header(frame)? else {
            return Ok(());
        };
        self.domain = domain.clone();
        self.policy = Policy::with_strategy(&domain, &self.id_prefix, self.strategy);
        self.client_prefixes = header.prefixes;
        self.phase = Phase::Connecting { header: raw };
        self.events.push(Event::Connect { domain });
        Ok(())
    }

    /// Non-stanza elements from the client: SASL passes (never logged); what would take the
    /// stream out of the proxy's sight is answered by the proxy instead.
    fn client_stream_element(&mut self, raw: Bytes) -> Result<(), End> {
        let element = Element::parse(&raw, ns::CLIENT, &prefix_refs(&self.client_prefixes))
            .map_err(|e| client_error(&e))?;
        match (element.name.as_str(), element.ns.as_str()) {
            ("auth", ns::SASL) => {
                if let Phase::Negotiating { sasl_user } = &mut self.phase {
                    *sasl_user = sasl::auth_user(&element);
                }
                self.to_server.push(&raw);
            }
            ("starttls", ns::TLS) => {
                return Err(End::ClientError(
                    Condition::PolicyViolation,
                    "TLS is already established".into(),
                ));
            }
            ("compress", ns::COMPRESS) => self.to_client.push(
                format!(
                    "<failure xmlns='{}'><setup-failed/></failure>",
                    ns::COMPRESS
                )
                .as_bytes(),
            ),
            ("enable", ns @ (ns::SM2 | ns::SM3)) => {
                if self.sm.is_some() {
                    // Once per stream: a second one would reset the proxy's counts while the
                    // server keeps its own.
                    self.to_client
                        .push(sm_failed(ns, "unexpected-request").as_bytes());
                    return Ok(());
                }
                self.to_server.push(&raw);
                // The server counts the client's stanzas from here on.
                let mut sm = Sm::new(static_ns(ns));
                sm.enable_pending = true;
                sm.c2s.enable();
                self.sm = Some(sm);
            }
            ("resume", ns @ (ns::SM2 | ns::SM3)) => self.client_resume(&element, raw, ns),
            ("a", ns::SM2 | ns::SM3) => {
                // The client's count of what it received, as the server must see it.
                if let Some(sm) = self.sm.as_mut().filter(|sm| sm.s2c.is_enabled()) {
                    let bad_h = || {
                        End::ClientError(
                            Condition::UndefinedCondition,
                            "<a/> without a valid h".into(),
                        )
                    };
                    let h = parse_h(&element).ok_or_else(bad_h)?;
                    let mapped = sm.s2c.ack(h);
                    let rewritten =
                        set_start_tag_attr(&raw, "h", &mapped.to_string()).map_err(|_| bad_h())?;
                    self.to_server.push(&rewritten);
                }
            }
            ("r", ns::SM2 | ns::SM3) => {
                if self.sm.is_some() {
                    self.to_server.push(&raw);
                }
            }
            _ => self.to_server.push(&raw),
        }
        Ok(())
    }

    /// A `<resume/>`: only after SASL on this connection, before a resource is bound, for a
    /// stream of the user who authenticated.
    fn client_resume(&mut self, element: &Element, raw: Bytes, ns: &str) {
        let ns = static_ns(ns);
        let previd = element.attr("previd").unwrap_or_default().to_owned();
        let (Phase::Authenticated { sasl_user }, Some(h), false) =
            (&self.phase, parse_h(element), previd.is_empty())
        else {
            return self.refuse_resume(ns, "unexpected-request");
        };
        let Some(requester) = requester(sasl_user.as_deref(), &self.domain) else {
            return self.refuse_resume(ns, "not-authorized");
        };
        let Phase::Authenticated { sasl_user } = std::mem::replace(&mut self.phase, Phase::Ended)
        else {
            unreachable!("matched just above")
        };
        self.phase = Phase::Resuming {
            sasl_user,
            step: Resume::Lookup {
                ns,
                raw,
                previd: previd.clone(),
                h,
            },
        };
        self.events.push(Event::LookupResume { previd, requester });
    }

    /// The proxy answers a `<resume/>` itself: it does not hold that session's state, so it
    /// will not let the client continue a stream whose invisibility it does not know.
    fn refuse_resume(&mut self, ns: &str, condition: &str) {
        tracing::info!(condition, "resumption refused by the proxy");
        self.events.push(Event::Resumption { ok: false });
        self.to_client.push(sm_failed(ns, condition).as_bytes());
    }

    /// The server resumed the stream: this connection continues the detached session.
    fn resumed(&mut self, raw: &Bytes, element: &Element) -> Result<(), End> {
        let Phase::Resuming {
            step: Resume::Server { .. },
            ..
        } = self.phase
        else {
            return Err(End::ServerUnreadable(
                "<resumed/> without a resumption".into(),
            ));
        };
        let Phase::Resuming {
            sasl_user,
            step:
                Resume::Server {
                    id,
                    mut state,
                    client_h,
                },
        } = std::mem::replace(&mut self.phase, Phase::Ended)
        else {
            unreachable!("matched just above")
        };
        let Some(server_h) = parse_h(element) else {
            // The state goes back to the store: the server's answer cannot be trusted.
            self.events.push(Event::PutBack { id, state });
            self.phase = Phase::Authenticated { sasl_user };
            return Err(End::ServerUnreadable("<resumed/> without a valid h".into()));
        };
        let client_count = state.c2s.peek_ack(server_h);
        let rewritten = set_start_tag_attr(raw, "h", &client_count.to_string())
            .map_err(|e| End::ServerUnreadable(format!("cannot rewrite h: {e}")))?;
        state.c2s.rebase(server_h);
        let lost = state.s2c.rebase(client_h);
        self.to_client.push(&rewritten);
        let Detached {
            policy,
            c2s,
            s2c,
            ns,
            keep,
        } = *state;
        self.set_hidden(None);
        self.policy = policy;
        self.jid_known = false;
        self.phase = Phase::Bound;
        if let Some(owner) = self.policy.jid().map(|j| j.to_bare()) {
            self.events.push(Event::RegisterLive {
                id: id.clone(),
                owner,
            });
        }
        let mut sm = Sm::new(ns);
        sm.id = Some(id);
        sm.keep = keep;
        sm.c2s = c2s;
        sm.s2c = s2c;
        self.sm = Some(sm);
        // Answers of the proxy's own that the client had not received before the break.
        self.actions.extend(lost.into_iter().map(Action::ToClient));
        self.policy.resumed(&mut self.actions);
        self.apply_actions(Origin::Proxy)?;
        self.events.push(Event::Resumption { ok: true });
        tracing::info!(client_h, server_h, "stream resumed");
        Ok(())
    }

    /// Handles every complete frame from the server.
    fn server_frames(&mut self) -> Result<(), End> {
        while self.end.is_none() {
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
                Frame::Whitespace(raw) => self.to_client.push(&raw),
                Frame::StreamHeader(raw) => {
                    let header = StreamHeader::parse(&raw)
                        .map_err(|e| End::ServerUnreadable(e.to_string()))?;
                    self.server_prefixes = header.prefixes;
                    self.to_client.push(&raw);
                }
                Frame::StreamEnd(raw) => {
                    self.to_client.push(&raw);
                    return Err(End::ServerClosed);
                }
                Frame::Element { raw, kind } => {
                    self.count(Origin::Server, kind);
                    if kind == ElementKind::Other {
                        self.server_stream_element(raw)?;
                    } else if Policy::passes_unchanged(kind) {
                        self.to_client.push(&raw);
                        self.sf.recycle(raw);
                        self.forwarded(Origin::Server)?;
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
        Ok(())
    }

    fn server_stream_element(&mut self, raw: Bytes) -> Result<(), End> {
        let element = Element::parse(&raw, ns::CLIENT, &prefix_refs(&self.server_prefixes))
            .map_err(|e| End::ServerUnreadable(e.to_string()))?;
        match (element.name.as_str(), element.ns.as_str()) {
            ("features", ns::STREAMS) => match features::rewrite(&raw, &element) {
                Some(rewritten) => self.to_client.push(&rewritten),
                None => self.to_client.push(&raw),
            },
            ("success", ns::SASL) => {
                self.to_client.push(&raw);
                self.sf.reset();
                self.cf.reset();
                if let Phase::Negotiating { sasl_user } =
                    std::mem::replace(&mut self.phase, Phase::Ended)
                {
                    self.phase = Phase::Authenticated { sasl_user };
                } else {
                    return Err(End::ServerUnreadable(
                        "SASL <success/> outside the negotiation".into(),
                    ));
                }
            }
            ("enabled", ns::SM2 | ns::SM3) => {
                // `location` would send a resuming client around the proxy.
                let rewritten = remove_start_tag_attr(&raw, "location")
                    .map_err(|e| End::ServerUnreadable(e.to_string()))?;
                self.to_client.push(&rewritten);
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
                    self.events.push(Event::RegisterLive {
                        id: id.to_owned(),
                        owner,
                    });
                }
            }
            ("resumed", ns::SM2 | ns::SM3) => self.resumed(&raw, &element)?,
            ("failed", ns::SM2 | ns::SM3) => {
                if let Phase::Resuming {
                    step: Resume::Server { .. },
                    ..
                } = self.phase
                    && let Phase::Resuming {
                        sasl_user,
                        step: Resume::Server { id, state, .. },
                    } = std::mem::replace(&mut self.phase, Phase::Ended)
                {
                    // Refused by the server (expired, or not this user's): the state stays for
                    // its rightful owner until it expires.
                    self.phase = Phase::Authenticated { sasl_user };
                    self.events.push(Event::PutBack { id, state });
                    self.events.push(Event::Resumption { ok: false });
                } else if self.sm.as_ref().is_some_and(|sm| sm.enable_pending) {
                    // The server refused to enable stream management: nothing to count.
                    self.sm = None;
                }
                self.to_client.push(&raw);
            }
            ("a", ns::SM2 | ns::SM3) => match self.sm.as_mut().filter(|sm| sm.c2s.is_enabled()) {
                Some(sm) => {
                    let h = parse_h(&element)
                        .ok_or_else(|| End::ServerUnreadable("<a/> without a valid h".into()))?;
                    let mapped = sm.c2s.ack(h);
                    let rewritten = set_start_tag_attr(&raw, "h", &mapped.to_string())
                        .map_err(|e| End::ServerUnreadable(format!("cannot rewrite h: {e}")))?;
                    self.to_client.push(&rewritten);
                }
                None => self.to_client.push(&raw),
            },
            ("error", ns::STREAMS) => {
                let condition = stream_error_condition(&element);
                self.events.push(Event::StreamError(condition));
                tracing::info!(%condition, "stream error from the server");
                if condition == Condition::SeeOtherHost {
                    // Following the redirect would take the client around the proxy.
                    self.to_client.push(&stream_error(
                        Condition::SystemShutdown,
                        "the server is moving; reconnect later",
                    ));
                    return Err(End::ServerClosed);
                }
                self.to_client.push(&raw);
            }
            _ => self.to_client.push(&raw),
        }
        Ok(())
    }

    fn count(&mut self, origin: Origin, kind: ElementKind) {
        let base = if origin == Origin::Server { 4 } else { 0 };
        self.stanzas.0[base + kind_index(kind)] += 1;
    }

    /// One stanza the policy passes unchanged went on as it came: stream management counts it
    /// on both sides (what [`Core::apply_actions`] does for one action, without the policy).
    fn forwarded(&mut self, origin: Origin) -> Result<(), End> {
        match origin {
            Origin::Client => self.count_sm(origin, 1, 0),
            Origin::Server | Origin::Proxy => self.count_sm(origin, 0, 1),
        }
    }

    /// Stream management's count of one event: the stanza it consumed (from `origin`) and the
    /// stanzas it produced toward each leg.
    fn count_sm(&mut self, origin: Origin, to_server: u64, to_client: u64) -> Result<(), End> {
        let Some(sm) = self.sm.as_mut() else {
            return Ok(());
        };
        let (from_client, from_server) = match origin {
            Origin::Client => (1, 0),
            Origin::Server => (0, 1),
            Origin::Proxy => (0, 0),
        };
        let counted = sm
            .c2s
            .record(from_client, to_server)
            .and(sm.s2c.record(from_server, to_client));
        counted.map_err(|_| {
            End::ClientError(
                Condition::ResourceConstraint,
                "too many unacknowledged stanzas".into(),
            )
        })
    }

    /// Moves the policy's actions into the write queues, counts them for stream management,
    /// and notes changes of visibility and the bound JID.
    pub(super) fn apply_actions(&mut self, origin: Origin) -> Result<(), End> {
        let (mut to_server, mut to_client) = (0u64, 0u64);
        for action in self.actions.drain(..) {
            match action {
                Action::ToServer(b) => {
                    to_server += 1;
                    self.to_server.push(&b);
                }
                Action::ToClient(b) => {
                    to_client += 1;
                    self.to_client.push(&b);
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
        self.count_sm(origin, to_server, to_client)?;
        let hidden = self
            .policy
            .is_hidden()
            .then(|| self.policy.strategy_in_use());
        self.set_hidden(hidden);
        if !self.jid_known
            && let Some(jid) = self.policy.jid()
        {
            self.jid_known = true;
            if matches!(self.phase, Phase::Authenticated { .. }) {
                self.phase = Phase::Bound;
            }
            self.events.push(Event::Bound(jid.to_string()));
        }
        Ok(())
    }

    pub(super) fn set_hidden(&mut self, hidden: Option<&'static str>) {
        if hidden != self.hidden {
            self.events.push(Event::Hidden {
                before: self.hidden,
                after: hidden,
            });
            tracing::info!(
                hidden = hidden.is_some(),
                strategy = hidden,
                "visibility changed"
            );
            self.hidden = hidden;
        }
    }

    /// Whatever is queued for each leg and not yet written, taken out of the core.
    pub(super) fn take_queues(&mut self) -> (Vec<u8>, Vec<u8>) {
        (self.to_client.take(), self.to_server.take())
    }

    /// The proxy's own stream header, owed to a client refused before the server answered.
    pub(super) fn own_header(&self) -> Bytes {
        client_stream_header(&self.stream_id, &self.domain)
    }

    pub(super) fn take_server_framer(&mut self) -> Framer {
        std::mem::replace(&mut self.sf, Framer::new(0))
    }

    /// Ends the session: the ending as a plan of steps on each leg, in order
    /// (see [`super::ending`]).
    pub fn finish(mut self: Box<Self>, end: Option<End>) -> Plan {
        let end = self
            .end
            .take()
            .or(end)
            .unwrap_or(End::ServerGone("no reason given".into()));
        super::ending::plan(*self, end)
    }
}

/// The bare JID the client authenticated as.
fn requester(sasl_user: Option<&str>, domain: &str) -> Option<BareJid> {
    let user = sasl_user?;
    let jid = if user.contains('@') {
        user.to_owned()
    } else {
        format!("{user}@{domain}")
    };
    crate::policy::normalize(&jid).map(|j| j.to_bare())
}

/// The policy reads the time only for presence and IQs; messages skip the clock.
fn now_for(kind: ElementKind) -> u64 {
    if kind == ElementKind::Message {
        0
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
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

/// A stream-management `<failed/>` with a stanza error condition.
fn sm_failed(ns: &str, condition: &str) -> String {
    format!(
        "<failed xmlns='{ns}'><{condition} xmlns='{}'/></failed>",
        ns::STANZAS
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
    if ns == ns::SM2 { ns::SM2 } else { ns::SM3 }
}

fn client_error(e: &FrameError) -> End {
    End::ClientError(e.condition(), e.to_string())
}

/// The condition of a `<stream:error/>`.
pub(super) fn stream_error_condition(error: &Element) -> Condition {
    error
        .elements()
        .find(|e| e.ns == ns::STREAM_ERRORS && e.name != "text")
        .map(|e| Condition::from_name(&e.name))
        .unwrap_or(Condition::UndefinedCondition)
}
