//! What a client received: the reader task records every top-level element into a log, and
//! the assertions search it ([`Client::wait_for`], [`Client::expect_none`], ...).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, ReadHalf};
use tokio::sync::{mpsc, watch};

use super::framer::{Framer, Item};
use super::sm::{SmState, sm_inbound};
use super::stanza::Scope;
use super::transport::{BoxIo, trace_on, ts};
use super::{Client, Stanza};

#[derive(Default)]
pub(super) struct State {
    pub(super) log: Vec<Stanza>,
    /// Peer sent `</stream:stream>`.
    pub(super) stream_closed: bool,
    /// TCP EOF or read error.
    pub(super) eof: bool,
    pub(super) close_reason: Option<String>,
    pub(super) parse_error: Option<String>,
    pub(super) pending: String,
    pub(super) sm: SmState,
}

impl State {
    pub(super) fn closed(&self) -> bool {
        self.stream_closed || self.eof || self.parse_error.is_some()
    }
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) changed: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
    }
}

pub(super) async fn reader_task(
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

impl Client {
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
        self.wait_until(what, timeout, |st| {
            st.log.iter().skip(mark).find(|s| pred(s)).cloned()
        })
        .await
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
        let found = self
            .watch(quiet, |st| {
                st.log.iter().skip(mark).find(|s| pred(s)).cloned()
            })
            .await;
        if let Some(s) = found {
            panic!(
                "[{}] expected no {what}, but got #{}: {}\n{}",
                self.label,
                s.index,
                s.raw,
                self.dump()
            );
        }
    }

    /// Sends an IQ and waits for the `result`/`error` with this id; `None` if none came within
    /// `timeout` (for a peer that may not answer yet, asked again by the caller).
    pub async fn try_iq(&self, xml_with_id: &str, id: &str, timeout: Duration) -> Option<Stanza> {
        let mark = self.mark();
        self.send(xml_with_id).await;
        self.watch(timeout, |st| {
            st.log
                .iter()
                .skip(mark)
                .find(|s| s.is_iq_reply(id))
                .cloned()
        })
        .await
    }

    /// Waits until the peer closed the stream or the connection; `false` on timeout.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let closed = self.watch(timeout, |st| st.closed().then_some(())).await;
        closed.is_some() || self.closed()
    }

    /// Looks at the state now and after every change until `look` finds what it wants;
    /// `None` once `timeout` has passed.
    async fn watch<T>(
        &self,
        timeout: Duration,
        mut look: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            if let Some(found) = look(&self.shared.state.lock().unwrap()) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Like [`Client::watch`], but panics with `what` and the log on timeout, or if the
    /// connection closes before `look` has found it.
    pub(super) async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut look: impl FnMut(&State) -> Option<T>,
    ) -> T {
        let found = self
            .watch(timeout, |st| match look(st) {
                Some(found) => Some(Ok(found)),
                None => st.closed().then_some(Err(())),
            })
            .await;
        match found {
            Some(Ok(found)) => found,
            Some(Err(())) => panic!(
                "[{}] connection closed while waiting for {what}\n{}",
                self.label,
                self.dump()
            ),
            None => panic!(
                "[{}] timed out after {timeout:?} waiting for {what}\n{}",
                self.label,
                self.dump()
            ),
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
