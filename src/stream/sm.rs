//! XEP-0198 stream management through a filter that drops and injects stanzas.
//!
//! Each direction has a [`Counter`]: "in" counts the stanzas the sender wrote to the proxy,
//! "out" the stanzas the proxy wrote to the receiver. The receiver acknowledges "out" counts;
//! the sender must see "in" counts. The mapping between the two changes wherever the proxy
//! dropped a stanza or injected some, so the counter keeps those points until they are acked:
//!
//! | proxy did | in | out | an ack that covers it means |
//! |---|---|---|---|
//! | forwarded one stanza (possibly rewritten) | +1 | +1 | that stanza handled |
//! | consumed a stanza (XEP-0186 IQ, `invisible` presence, withheld presence) | +1 | 0 | handled as soon as everything before it is acked |
//! | fanned one stanza out to k directed copies | +1 | +k | handled when all k are acked |
//! | injected stanzas of its own (roster query, probes, `unavailable`s, IQ answers) | 0 | +k | not the sender's: never counted for it |
//!
//! All counts are kept as u64 since `<enable/>` and sent modulo 2^32, as the XEP wraps them.

use std::collections::VecDeque;

use bytes::Bytes;

/// Points kept per direction before the session is refused: a peer that never acknowledges
/// anything must not make the proxy remember without bound.
pub const MAX_POINTS: usize = 16_384;

#[derive(Debug, Clone, Default)]
pub struct Counter {
    enabled: bool,
    total_in: u64,
    total_out: u64,
    /// (in, out) at the edges of every non-1:1 step not yet acked, oldest first; the front is
    /// the last acked point.
    points: VecDeque<(u64, u64)>,
    /// The sender count of the newest ack: acks never move backwards.
    acked_in: u64,
    /// Stanzas the proxy itself wrote to the receiver, with their "out" position, until acked:
    /// they are the proxy's to deliver again after a resumption.
    injected: VecDeque<(u64, Bytes)>,
}

/// The peer stopped acknowledging: too much to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow;

impl Counter {
    /// Counting starts (both counts zero).
    pub fn enable(&mut self) {
        *self = Counter {
            enabled: true,
            points: VecDeque::from([(0, 0)]),
            ..Counter::default()
        };
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn totals(&self) -> (u64, u64) {
        (self.total_in, self.total_out)
    }

    /// One step: `consumed` stanzas (0 or 1) read from the sender, `produced` written to the receiver.
    pub fn record(&mut self, consumed: u64, produced: u64) -> Result<(), Overflow> {
        if !self.enabled || (consumed == 0 && produced == 0) {
            return Ok(());
        }
        if consumed == 1 && produced == 1 {
            self.total_in += 1;
            self.total_out += 1;
            return Ok(());
        }
        let before = (self.total_in, self.total_out);
        if self.points.back() != Some(&before) {
            self.points.push_back(before);
        }
        self.total_in += consumed;
        self.total_out += produced;
        self.points.push_back((self.total_in, self.total_out));
        if self.points.len() > MAX_POINTS {
            return Err(Overflow);
        }
        Ok(())
    }

    /// Remembers a stanza the proxy injected (already counted by [`Counter::record`]) for
    /// delivery again after a resumption, at "out" position `pos` (1-based).
    pub fn remember_injected(&mut self, pos: u64, stanza: Bytes) {
        if self.enabled {
            self.injected.push_back((pos, stanza));
            if self.injected.len() > MAX_POINTS {
                self.injected.pop_front();
            }
        }
    }

    /// The receiver acknowledged `h` ("out", modulo 2^32): the count the sender must see.
    /// Forgets what that ack covers.
    pub fn ack(&mut self, h: u32) -> u32 {
        let h = self.widen_out(h);
        let sender = self.map_out_to_in(h).max(self.acked_in);
        self.acked_in = sender;
        while self.points.len() > 1 && self.points.get(1).is_some_and(|p| p.1 <= h) {
            self.points.pop_front();
        }
        while self.injected.front().is_some_and(|(pos, _)| *pos <= h) {
            self.injected.pop_front();
        }
        sender as u32
    }

    /// Like [`Counter::ack`] without forgetting: for a `<resume h/>` that the server may refuse.
    pub fn peek_ack(&self, h: u32) -> u32 {
        self.map_out_to_in(self.widen_out(h)).max(self.acked_in) as u32
    }

    /// After a resumption: the receiver has `h` ("out"), the sender continues from the mapped
    /// "in" count. Returns the injected stanzas the receiver did not get, to be written again.
    pub fn rebase(&mut self, h: u32) -> Vec<Bytes> {
        let h = self.widen_out(h);
        let sender = self.map_out_to_in(h);
        let lost: Vec<Bytes> = self
            .injected
            .iter()
            .filter(|(p, _)| *p > h)
            .map(|(_, b)| b.clone())
            .collect();
        self.total_in = sender;
        self.total_out = h;
        self.acked_in = sender;
        self.points = VecDeque::from([(sender, h)]);
        self.injected.clear();
        lost
    }

    /// Interprets a 32-bit "out" count as the nearest u64 at or below the total.
    fn widen_out(&self, h: u32) -> u64 {
        let behind = (self.total_out as u32).wrapping_sub(h) as u64;
        self.total_out.saturating_sub(behind)
    }

    /// The largest "in" count whose stanzas all lie within the first `h` "out" stanzas.
    fn map_out_to_in(&self, h: u64) -> u64 {
        let mut prev = match self.points.front() {
            Some(p) => *p,
            None => return h.min(self.total_in),
        };
        if h < prev.1 {
            // Older than what was already acknowledged: nothing new.
            return prev.0;
        }
        for &next in self.points.iter().skip(1) {
            if next.1 <= h {
                prev = next;
                continue;
            }
            let (din, dout) = (next.0 - prev.0, next.1 - prev.1);
            return if din == dout {
                prev.0 + (h - prev.1) // a run of 1:1 steps
            } else {
                prev.0 // a step whose output is not all acknowledged yet
            };
        }
        prev.0 + (h - prev.1).min(self.total_in - prev.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> Counter {
        let mut c = Counter::default();
        c.enable();
        c
    }

    #[test]
    fn one_to_one_maps_identically() {
        let mut c = counter();
        for _ in 0..10 {
            c.record(1, 1).unwrap();
        }
        assert_eq!(c.ack(7), 7);
        assert_eq!(c.ack(10), 10);
    }

    #[test]
    fn consumed_stanza_is_handled_once_everything_before_it_is_acked() {
        let mut c = counter();
        c.record(1, 1).unwrap(); // in 1 → out 1
        c.record(1, 0).unwrap(); // in 2 consumed
        c.record(1, 1).unwrap(); // in 3 → out 2
        assert_eq!(c.peek_ack(0), 0);
        assert_eq!(c.peek_ack(1), 2);
        assert_eq!(c.ack(2), 3);
    }

    #[test]
    fn fan_out_counts_when_all_copies_are_acked() {
        let mut c = counter();
        c.record(1, 1).unwrap(); // in 1 → out 1
        c.record(1, 3).unwrap(); // in 2 → out 2..4
        c.record(1, 1).unwrap(); // in 3 → out 5
        assert_eq!(c.peek_ack(1), 1);
        assert_eq!(c.peek_ack(3), 1);
        assert_eq!(c.peek_ack(4), 2);
        assert_eq!(c.ack(5), 3);
    }

    #[test]
    fn injections_never_count_for_the_sender() {
        let mut c = counter();
        c.record(0, 2).unwrap(); // proxy's own: out 1, 2
        c.record(1, 1).unwrap(); // in 1 → out 3
        c.record(1, 1).unwrap(); // in 2 → out 4
        c.record(0, 1).unwrap(); // out 5
        assert_eq!(c.peek_ack(2), 0);
        assert_eq!(c.peek_ack(3), 1);
        assert_eq!(c.peek_ack(5), 2);
        assert_eq!(c.ack(4), 2);
        assert_eq!(c.ack(5), 2);
    }

    #[test]
    fn acks_prune_the_points_and_old_acks_do_not_go_backwards() {
        let mut c = counter();
        for i in 0..100 {
            c.record(1, if i % 2 == 0 { 0 } else { 2 }).unwrap();
        }
        let (_, out) = c.totals();
        assert_eq!(c.ack(out as u32), 100);
        assert!(c.points.len() <= 2, "{:?}", c.points);
        assert_eq!(c.ack(0), 100);
    }

    #[test]
    fn counts_wrap_at_2_pow_32() {
        let mut c = counter();
        c.total_in = u32::MAX as u64 - 1;
        c.total_out = u32::MAX as u64 + 5; // the proxy injected 6 more than it got
        c.points = VecDeque::from([(c.total_in, c.total_out)]);
        c.record(1, 1).unwrap();
        c.record(1, 1).unwrap();
        c.record(1, 1).unwrap();
        // out total = 2^32 + 7 → on the wire 7; in total = 2^32 + 1 → on the wire 1.
        assert_eq!(c.ack(7), 1);
        // An ack ahead of anything sent moves nothing.
        assert_eq!(c.ack(8), 1);
    }

    #[test]
    fn rebase_returns_the_injected_stanzas_the_receiver_missed() {
        let mut c = counter();
        c.record(1, 1).unwrap();
        c.record(0, 1).unwrap();
        c.remember_injected(2, Bytes::from_static(b"<iq type='result' id='a'/>"));
        c.record(1, 1).unwrap();
        c.record(0, 1).unwrap();
        c.remember_injected(4, Bytes::from_static(b"<iq type='result' id='b'/>"));
        let lost = c.rebase(2);
        assert_eq!(
            lost,
            vec![Bytes::from_static(b"<iq type='result' id='b'/>")]
        );
        assert_eq!(c.totals(), (1, 2));
    }

    #[test]
    fn a_peer_that_never_acks_is_bounded() {
        let mut c = counter();
        let mut result = Ok(());
        for _ in 0..(MAX_POINTS + 10) {
            result = result.and(c.record(1, 0));
        }
        assert_eq!(result, Err(Overflow));
    }
}
