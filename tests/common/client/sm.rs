//! XEP-0198 Stream Management in the test client: counting stanzas both ways, answering the
//! peer's `<r/>` (a separate task writes the `<a/>`), and what the tests read of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::framer::{Item, top_level_items};
use super::recorder::Shared;
use super::transport::{trace_on, ts};
use super::{Client, NS_CLIENT, NS_SM, Stanza, Writer};

/// XEP-0198 bookkeeping (all counters mod 2^32).
#[derive(Default)]
pub(super) struct SmState {
    /// Counting and answering `<r/>` (after `<enabled/>` or `<resumed/>`).
    pub(super) active: bool,
    pub(super) id: Option<String>,
    pub(super) enabled: Option<Stanza>,
    pub(super) resumed: Option<Stanza>,
    /// Stanzas received while active (plus the `h` resumed from).
    pub(super) inbound: u32,
    /// Stanzas sent while active (plus the server's `<resumed h=…/>`).
    pub(super) outbound: u32,
    /// Latest `h` the peer acknowledged (`<a/>` or `<resumed/>`).
    pub(super) last_ack: Option<u32>,
    /// `h` of every `<a/>` received, in order.
    pub(super) acks_from_peer: Vec<u32>,
    /// `<r/>` sent by [`Client::request_ack`].
    pub(super) requests_sent: usize,
    /// For every `<r/>` from the peer: its log index and the `h` answered.
    pub(super) answered: Vec<(usize, u32)>,
    /// `<a/>` actually written.
    pub(super) answers_written: usize,
    /// Sent stanzas not yet acknowledged: (outbound count after it, raw XML).
    pub(super) unacked: VecDeque<(u32, String)>,
    /// `</stream:stream>` was sent: write nothing more.
    pub(super) closing: bool,
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
    pub(super) fn peer_acked(&mut self, h: u32) {
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
    pub(super) fn count_outbound(&mut self, xml: &str) {
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
pub(super) fn is_sm_stanza(s: &Stanza) -> bool {
    s.ns == NS_CLIENT && matches!(s.name.as_str(), "message" | "presence" | "iq")
}

/// XEP-0198 bookkeeping for one received element (in order, before the next).
pub(super) fn sm_inbound(sm: &mut SmState, s: &Stanza, acks: Option<&mpsc::UnboundedSender<u32>>) {
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
pub(super) async fn acker_task(
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

impl Client {
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
        self.wait_until("<a/>", timeout, |st| {
            st.sm.acks_from_peer.get(want).copied()
        })
        .await
    }
}
