//! The IO shell around one [`Core`]: it reads both legs, writes both legs, keeps the timers and
//! talks to the resume store. It decides nothing about the stream.
//!
//! Full duplex in one task: each poll writes what the core queued for either leg, then reads
//! whichever leg has bytes, so a leg is read while the other is being written. Backpressure is
//! bounded: a leg is only read while the queue toward the other leg is below [`HIGH_WATER`], so
//! a peer that does not read stops the proxy reading its counterpart (whose bytes then wait in
//! its socket), and is cut when its write has made no progress for `--write-timeout`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tracing::Span;

use super::Shared;
use super::core::{Config, Core, Event, Stanzas};
use super::ending::{End, Plan, Step};
use crate::metrics as m;
use crate::policy::report::Reports;
use crate::proxy_protocol::Endpoints;
use crate::resume::Detached;
use crate::stream::errors::Condition;
use crate::stream::upstream::{self, Upstream};
use crate::xml::{Frame, Framer};

/// Time each step of an ending gets (a write, the server's `</stream:stream>`, a close).
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read size: large enough to take a burst of stanzas in one read (and one TLS record).
const READ_CHUNK: usize = 16 * 1024;
/// A leg is read only while the queue toward the other leg holds less than this.
pub const HIGH_WATER: usize = 64 * 1024;
/// Nor while the queue back toward that same leg holds more than this: only the proxy's own
/// answers (to `<compress/>`, refused commands …) grow it, and a peer that sends requests but
/// reads slowly must not make them pile up. Far above what relaying ever leaves there, so two
/// peers that both write before they read still flow.
const ANSWERS_CAP: usize = 4 * HIGH_WATER;

thread_local! {
    /// Where every session of this worker thread reads into: a session waiting for data holds no
    /// read buffer of its own. Only borrowed inside one poll, never across an `.await`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Serves one client whose TLS is established: reads its stream header, connects upstream and
/// relays until either side ends. `auth_deadline`: when the client must have authenticated
/// (counted from its TCP connection). `endpoints`: where the client comes from, for the
/// upstream's PROXY protocol header.
///
/// Memory: thousands of sessions sit idle for hours, so what one holds while it waits is kept
/// small: the opening runs in its own boxed future, freed before the relay starts, and the
/// relay lives in one box.
pub async fn serve<C>(
    mut client: C,
    mut core: Box<Core>,
    auth_deadline: Instant,
    shared: std::sync::Arc<Shared>,
    endpoints: Endpoints,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    core.handle_tls_established();
    let opened = Box::pin(open(
        &mut client,
        &mut core,
        auth_deadline,
        &shared,
        endpoints,
    ))
    .await;
    let counters = Counters::new();
    match opened {
        Ok(Upstream::Plain(up)) => {
            Shell::new(client, up, core, &shared, counters, auth_deadline)
                .run()
                .await
        }
        Ok(Upstream::Tls(up)) => {
            Shell::new(client, *up, core, &shared, counters, auth_deadline)
                .run()
                .await
        }
        Err(end) => {
            let plan = core.finish(Some(end));
            Box::pin(carry_out(
                client,
                None::<tokio::net::TcpStream>,
                plan,
                &shared,
                None,
            ))
            .await
        }
    }
}

/// A new session's core; `starttls`: the client connected to a STARTTLS port, and its first
/// stream is before TLS.
pub fn new_core(conn_id: u64, shared: &Shared, starttls: bool) -> Box<Core> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let config = Config {
        limits: shared.limits,
        strategy: shared.strategy,
        stream_id: format!("xv-{conn_id:x}-{nanos:x}"),
        id_prefix: format!("veil{:x}{conn_id:x}", nanos & 0xffff_ffff),
    };
    Box::new(if starttls {
        Core::new_starttls(config)
    } else {
        Core::new(config)
    })
}

/// The exchange before TLS on a STARTTLS port, carried out for the core: `Some` once
/// `<proceed/>` is written and the TLS handshake may start, for the domain the client asked
/// for; `None` when the client left or was refused (it has been told why).
pub async fn pre_tls(
    tcp: &mut tokio::net::TcpStream,
    mut core: Box<Core>,
    shared: &Shared,
) -> Option<(Box<Core>, String)> {
    let end = loop {
        let out = core.client_out();
        if !out.is_empty() {
            let n = out.len();
            if write_out(tcp, out).await.is_err() {
                break End::ClientGone;
            }
            core.client_written(n);
        }
        while let Some(event) = core.poll_event() {
            match event {
                Event::StartTls { domain } => return Some((core, domain)),
                event => account(event, shared),
            }
        }
        if core.end().is_some() {
            break End::ClientGone;
        }
        match read_with(tcp, |b| core.handle_client_bytes(b)).await {
            Ok(0) | Err(_) => break End::ClientGone,
            Ok(_) => {}
        }
    };
    let plan = core.finish(Some(end));
    carry_out(tcp, None::<tokio::net::TcpStream>, plan, shared, None).await;
    None
}

/// Reads the client's stream header and connects upstream; on `Err` the session ends before
/// anything was relayed.
async fn open<C>(
    client: &mut C,
    core: &mut Core,
    auth_deadline: Instant,
    shared: &Shared,
    endpoints: Endpoints,
) -> Result<Upstream, End>
where
    C: AsyncRead + Unpin,
{
    let domain = 'connect: loop {
        while let Some(event) = core.poll_event() {
            match event {
                Event::Connect { domain } => break 'connect domain,
                event => account(event, shared),
            }
        }
        if core.end().is_some() {
            return Err(End::ClientGone);
        }
        let read = tokio::time::timeout_at(
            auth_deadline,
            read_with(client, |b| core.handle_client_bytes(b)),
        )
        .await;
        match read {
            Err(_) => {
                return Err(End::Refused(
                    Condition::ConnectionTimeout,
                    "no stream header in time".into(),
                ));
            }
            Ok(Ok(0) | Err(_)) => return Err(End::ClientGone),
            Ok(Ok(_)) => {}
        }
    };
    let connected = tokio::time::timeout(
        shared.connect_timeout,
        upstream::connect(&shared.upstream, &domain, Some(&endpoints)),
    )
    .await;
    match connected {
        Ok(Ok(upstream)) => {
            tracing::debug!("upstream connected");
            core.handle_connected();
            Ok(upstream)
        }
        Ok(Err(e)) => {
            tracing::warn!(reason = %e.reason, "upstream unavailable");
            core.handle_connect_failed(e.server_error);
            Err(End::Unreachable(None))
        }
        Err(_) => {
            tracing::warn!(timeout = ?shared.connect_timeout, "upstream connect timed out");
            core.handle_connect_failed(None);
            Err(End::Unreachable(None))
        }
    }
}

/// The write side of one leg.
#[derive(Default)]
struct Writer {
    /// Bytes were written since the last flush (a TLS stream may hold records back until then).
    unflushed: bool,
    /// Set while the leg has output it cannot write: fires `--write-timeout` after the last
    /// progress. Made only for a blocked write, so an idle or fast leg holds no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

/// Why a leg's write failed.
enum WriteFailed {
    Io(std::io::Error),
    Stalled,
}

impl Writer {
    /// Writes as much of `out` as the leg takes now; returns how much it wrote, and whether the
    /// leg is blocked (its waker is then registered: trying again before it fires is useless).
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        out: &[u8],
        cx: &mut Context<'_>,
        limit: Duration,
    ) -> Result<(usize, bool), WriteFailed> {
        let mut written = 0;
        while written < out.len() {
            match Pin::new(&mut *io).poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Err(WriteFailed::Io(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(WriteFailed::Io(e)),
                Poll::Pending => break,
            }
        }
        if written == out.len() && self.unflushed {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(WriteFailed::Io(e)),
                Poll::Pending => {}
            }
        }
        let blocked = written < out.len() || self.unflushed;
        if blocked {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            if written > 0 {
                timer.as_mut().reset(Instant::now() + limit);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Err(WriteFailed::Stalled);
            }
        } else {
            self.timer = None;
        }
        Ok((written, blocked))
    }
}

struct Shell<'a, C, U> {
    client: C,
    upstream: U,
    core: Box<Core>,
    shared: &'a Shared,
    counters: Counters,
    to_client: Writer,
    to_server: Writer,
    /// Takeover requests from a connection that resumes this session.
    takeover: Option<mpsc::Receiver<oneshot::Sender<Detached>>>,
    /// The connection that took this session over, waiting for its state.
    taker: Option<oneshot::Sender<Detached>>,
    /// A resumption's lookup in the resume store (it may wait for another session to detach).
    lookup: Option<Pin<Box<dyn Future<Output = Option<Detached>> + Send + 'a>>>,
    auth_deadline: Instant,
}

impl<'a, C, U> Shell<'a, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn new(
        client: C,
        upstream: U,
        core: Box<Core>,
        shared: &'a Shared,
        counters: Counters,
        auth_deadline: Instant,
    ) -> Box<Self> {
        Box::new(Shell {
            client,
            upstream,
            core,
            shared,
            counters,
            to_client: Writer::default(),
            to_server: Writer::default(),
            takeover: None,
            taker: None,
            lookup: None,
            auth_deadline,
        })
    }

    /// Boxed `self`: the session's state stays in its one allocation instead of being moved
    /// into this future.
    async fn run(mut self: Box<Self>) {
        // This session's own token: polling the shared token's future takes a lock that every
        // session shares. Made once, outside the loop.
        let shutdown = self.shared.shutdown.child_token();
        let cancelled = shutdown.cancelled();
        let auth_timer = tokio::time::sleep_until(self.auth_deadline);
        tokio::pin!(cancelled, auth_timer);
        let end = std::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(End::Shutdown));
            }
            if self.core.authenticating() && auth_timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(End::ClientError(
                    Condition::ConnectionTimeout,
                    "authentication took too long".into(),
                )));
            }
            self.poll_relay(cx)
        })
        .await;
        self.counters
            .publish(self.core.take_stanzas(), self.core.take_reports());
        let Shell {
            client,
            upstream,
            core,
            shared,
            taker,
            ..
        } = *self;
        let plan = core.finish(end);
        // Boxed: the ending's state is only needed once, at the end.
        Box::pin(carry_out(client, Some(upstream), plan, shared, taker)).await;
    }

    /// One turn of the relay: `Ready` when the session must end (`None`: the core knows why).
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<End>> {
        let limit = self.shared.write_timeout;
        // Legs that said "not now" in this turn: their wakers are registered, and asking again
        // before they fire costs a poll of the TLS stack for nothing.
        let (mut client_readable, mut server_readable) = (true, true);
        let (mut client_writable, mut server_writable) = (true, true);
        loop {
            let mut progress = false;
            if let Some(rx) = &mut self.takeover
                && let Poll::Ready(Some(taker)) = rx.poll_recv(cx)
            {
                self.taker = Some(taker);
                return Poll::Ready(Some(End::TakenOver));
            }
            // Not once the session ends: an unfinished lookup is dropped with the shell, and the
            // live session it waits for then keeps its state in the store.
            if self.core.end().is_none()
                && let Some(lookup) = &mut self.lookup
                && let Poll::Ready(state) = lookup.as_mut().poll(cx)
            {
                self.lookup = None;
                self.core.handle_resume_state(state);
            }
            progress |= self.events();
            if self.core.end().is_some() {
                return Poll::Ready(None);
            }

            // Writes first: what was queued goes out before more is read.
            let out = self.core.client_out();
            if client_writable && (!out.is_empty() || self.to_client.unflushed) {
                match self.to_client.poll_write(&mut self.client, out, cx, limit) {
                    Ok((n, blocked)) => {
                        progress |= n > 0;
                        client_writable = !blocked;
                        self.core.client_written(n);
                    }
                    Err(WriteFailed::Io(_)) => return Poll::Ready(Some(End::ClientGone)),
                    Err(WriteFailed::Stalled) => return Poll::Ready(Some(End::ClientStalled)),
                }
            }
            let out = self.core.server_out();
            if server_writable && (!out.is_empty() || self.to_server.unflushed) {
                match self
                    .to_server
                    .poll_write(&mut self.upstream, out, cx, limit)
                {
                    Ok((n, blocked)) => {
                        progress |= n > 0;
                        server_writable = !blocked;
                        self.core.server_written(n);
                    }
                    Err(WriteFailed::Io(e)) => {
                        return Poll::Ready(Some(End::ServerGone(format!("write: {e}"))));
                    }
                    Err(WriteFailed::Stalled) => {
                        return Poll::Ready(Some(End::ServerGone(
                            "the server does not read".into(),
                        )));
                    }
                }
            }

            // Then reads, each only while the other leg's queue has room.
            if client_readable
                && !self.core.client_waits()
                && self.core.server_out().len() < HIGH_WATER
                && self.core.client_out().len() < ANSWERS_CAP
            {
                let core = &mut self.core;
                match poll_read_with(&mut self.client, cx, |b| core.handle_client_bytes(b)) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Some(End::ClientGone)),
                    Poll::Ready(Ok(n)) => {
                        self.counters.bytes[0] += n as u64;
                        progress = true;
                    }
                    Poll::Pending => client_readable = false,
                }
            }
            if server_readable
                && self.core.end().is_none()
                && self.core.client_out().len() < HIGH_WATER
                && self.core.server_out().len() < ANSWERS_CAP
            {
                let core = &mut self.core;
                match poll_read_with(&mut self.upstream, cx, |b| core.handle_server_bytes(b)) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Some(End::ServerGone(
                            "the server closed the connection".into(),
                        )));
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Some(End::ServerGone(format!("read: {e}"))));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.counters.bytes[1] += n as u64;
                        progress = true;
                    }
                    Poll::Pending => server_readable = false,
                }
            }
            if !progress {
                // Waiting: the counts go out, and quiet legs give their buffers back.
                self.counters
                    .publish(self.core.take_stanzas(), self.core.take_reports());
                self.core.release_quiet();
                return Poll::Pending;
            }
        }
    }

    /// Carries out the core's events; true if there were any.
    fn events(&mut self) -> bool {
        if !self.core.has_events() {
            return false;
        }
        let mut any = false;
        while let Some(event) = self.core.poll_event() {
            any = true;
            match event {
                Event::LookupResume { previd, requester } => {
                    let store = &self.shared.resume;
                    self.lookup = Some(Box::pin(
                        async move { store.take(&previd, &requester).await },
                    ));
                }
                Event::RegisterLive { id, owner } => {
                    self.takeover = Some(self.shared.resume.register_live(&id, owner));
                }
                event => account(event, self.shared),
            }
        }
        any
    }
}

/// The events that only touch metrics, the log and the resume store.
fn account(event: Event, shared: &Shared) {
    match event {
        Event::PutBack { id, state } => shared.resume.put(&id, *state),
        Event::Resumption { ok } => {
            let result = if ok { "ok" } else { "failed" };
            metrics::counter!(m::SM_RESUMPTIONS, "result" => result).increment(1);
        }
        Event::StreamError(condition) => {
            metrics::counter!(m::STREAM_ERRORS_TOTAL, "condition" => condition.as_str())
                .increment(1);
        }
        Event::Hidden { before, after } => set_hidden_gauges(before, after),
        Event::Bound(jid) => {
            Span::current().record("jid", tracing::field::display(&jid));
            tracing::info!("resource bound");
        }
        // Only asked before the relay, or of the relay itself.
        Event::StartTls { .. }
        | Event::Connect { .. }
        | Event::LookupResume { .. }
        | Event::RegisterLive { .. } => {}
    }
}

/// Carries out an ending, step by step, each bounded: either leg may be gone or stalled.
async fn carry_out<C, U>(
    mut client: C,
    mut upstream: Option<U>,
    plan: Plan,
    shared: &Shared,
    taker: Option<oneshot::Sender<Detached>>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Plan {
        end,
        events,
        steps,
        told,
        untold,
        mut server_framer,
        reports,
    } = plan;
    for (report, n) in reports {
        m::count_policy_report(report, n);
    }
    for event in events {
        account(event, shared);
    }
    log_end(&end, told, untold);
    let last_words = shared.write_timeout.max(CLOSE_GRACE);
    let mut taker = taker;
    for step in steps {
        match step {
            // What was queued for the server, then the last words: as long as any write to it
            // may take, as before the ending (the `unavailable`s are at the end).
            Step::ToServer(bytes) => {
                if let Some(up) = upstream.as_mut() {
                    let _ = tokio::time::timeout(last_words, write_out(up, &bytes)).await;
                }
            }
            // A client that stopped reading gets a short chance only.
            Step::ToClient(bytes) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, write_out(&mut client, &bytes)).await;
            }
            Step::CloseClient => {
                let _ = tokio::time::timeout(CLOSE_GRACE, client.shutdown()).await;
            }
            Step::DrainServer => {
                if let Some(up) = upstream.as_mut() {
                    let _ = tokio::time::timeout(
                        CLOSE_GRACE,
                        drain_until_closed(up, &mut server_framer),
                    )
                    .await;
                }
            }
            Step::CloseServer => {
                if let Some(up) = upstream.as_mut() {
                    let _ = tokio::time::timeout(CLOSE_GRACE, up.shutdown()).await;
                }
            }
            // Dropped, not shut down: no close_notify, no </stream:stream>.
            Step::DropServer => drop(upstream.take()),
            Step::Detach { id, state } => {
                tracing::info!(told, "client gone; stream kept for resumption");
                match taker.take() {
                    Some(taker) => {
                        if let Err(state) = taker.send(*state) {
                            shared.resume.put(&id, state);
                        }
                    }
                    None => shared.resume.put(&id, *state),
                }
            }
            Step::Forget { id } => shared.resume.forget(&id),
        }
    }
    tracing::info!(?end, "session ended");
}

fn log_end(end: &End, told: usize, untold: usize) {
    match end {
        End::ServerGone(reason) | End::ServerUnreadable(reason) => {
            tracing::warn!(reason, "upstream lost");
        }
        End::Refused(condition, reason) | End::ClientError(condition, reason) => {
            tracing::info!(%condition, reason, "stream error to the client");
        }
        _ => tracing::info!(?end, "session ending"),
    }
    if told > 0 {
        tracing::info!(told, "unavailable sent for the ending session");
    }
    if untold > 0 {
        tracing::warn!(
            entities = untold,
            "upstream gone: entities shown this resource by directed presence cannot be told unavailable"
        );
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

/// Per-session handles of the hot-path counters (one registry lookup per session, not per
/// stanza); what is counted is added once per turn of the relay: each add is an atomic on a
/// cache line that every session of the process shares.
struct Counters {
    /// Stanzas by kind, from the client then from the server.
    stanzas: [Counter; 8],
    /// Bytes read from the client, then from the server.
    bytes_total: [Counter; 2],
    bytes: [u64; 2],
}

impl Counters {
    fn new() -> Self {
        let kinds = |dir: &'static str| {
            ["message", "presence", "iq", "other"]
                .map(|kind| metrics::counter!(m::STANZAS_TOTAL, "direction" => dir, "kind" => kind))
        };
        let [c0, c1, c2, c3] = kinds("c2s");
        let [s0, s1, s2, s3] = kinds("s2c");
        Counters {
            stanzas: [c0, c1, c2, c3, s0, s1, s2, s3],
            bytes_total: [
                metrics::counter!(m::BYTES_TOTAL, "direction" => "c2s"),
                metrics::counter!(m::BYTES_TOTAL, "direction" => "s2c"),
            ],
            bytes: [0; 2],
        }
    }

    fn publish(&mut self, stanzas: Stanzas, reports: Reports) {
        if !reports.is_empty() {
            for (report, n) in reports {
                m::count_policy_report(report, n);
            }
        }
        if self.bytes == [0, 0] && stanzas == Stanzas::default() {
            return;
        }
        for (handle, n) in self.stanzas.iter().zip(stanzas.0) {
            if n > 0 {
                handle.increment(n);
            }
        }
        for (handle, n) in self.bytes_total.iter().zip(self.bytes.iter_mut()) {
            if *n > 0 {
                handle.increment(std::mem::take(n));
            }
        }
    }
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
        match read_with(upstream, |b| framer.extend(b)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Polls one read into this thread's [`SCRATCH`] and hands the bytes to `f`.
fn poll_read_with<R: AsyncRead + Unpin>(
    r: &mut R,
    cx: &mut Context<'_>,
    f: impl FnOnce(&[u8]),
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut rb = ReadBuf::new(scratch);
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n > 0 {
                    f(rb.filled());
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Reads what `r` has ready and hands it to `f`.
async fn read_with<R: AsyncRead + Unpin>(
    r: &mut R,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_with(r, cx, &mut f)).await
}

/// Writes and flushes: a TLS stream may keep encrypted records back after `write_all` until it
/// is flushed.
async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
