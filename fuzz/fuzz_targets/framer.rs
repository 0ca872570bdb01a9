//! The framer on arbitrary bytes, fed in arbitrary chunks, with `reset()` and `take_buffered()`
//! at arbitrary points.
//!
//! Input layout (see `Plan::decode`):
//!
//! | byte    | meaning                                                                    |
//! |---------|----------------------------------------------------------------------------|
//! | 0       | `max_element`: `< 0x80` → `1 + 8·(b & 0x7f)` (1..=1017), else 64 KiB       |
//! | 1       | `max_depth`: 0 → `MAX_DEPTH`, else `b` (the framer clamps to `MAX_DEPTH`)  |
//! | 2       | `max_attributes`: 0 → unlimited, else `b - 1`                              |
//! | 3       | `n`, the number of chunk bytes that follow                                 |
//! | 4..4+n  | chunk bytes, used in turn and cycled: length `1 + v²` (`v` = low 6 bits),  |
//! |         | and in the top 2 bits what follows the chunk: 0 nothing, 1 `reset()`      |
//! |         | after draining, 2 `reset()` before draining, 3 `take_buffered()`           |
//! | rest    | the stream bytes; with `n = 0` they are fed in one piece                    |
//!
//! Chunks go in alternately through `extend()` and through `buffer_mut()` (reserve, append: what
//! the session's `read_buf` does), and `release_if_empty()` follows each one, as in the session.
//!
//! What is checked, and why it is guaranteed (src/xml/framer.rs, src/xml/element.rs):
//!
//! 1. No panic, and no hang (libFuzzer's timeout).
//! 2. The raw bytes of the frames, plus what `take_buffered()` returned, are exactly the prefix of
//!    the input fed so far that is no longer buffered (`fed.len() - buffered()`).
//! 3. After an error every later `next_frame()` returns the same error, whatever is fed, reset
//!    or taken in between ("poisoned").
//! 4. The buffer is bounded: right after `extend(chunk)` it holds at most
//!    `max_element + chunk.len()`, and after `next_frame()` returns `Ok(None)` at most
//!    `max_element` (the scan window is `max_element`; `Ok(None)` with more is `TooLarge`).
//!    `TooLarge` carries the configured `max_element`.
//! 5. Every frame is at most `max_element` bytes (it ends inside the scan window) and valid
//!    UTF-8 (headers and elements go through `check_chars`; whitespace is ASCII; a stream end
//!    repeats the checked header's name).
//! 6. Frame order: after `new()`/`reset()` only a `StreamHeader`; then elements, whitespace and
//!    one `StreamEnd`; after it only whitespace.
//! 7. Shapes: whitespace is non-empty XML whitespace; an element starts with `<` and ends with
//!    `>`; a header's start tag (the part from its last `<`, since neither the declaration nor
//!    attribute values may contain one) passes `StartTag::parse` (the framer ran the same
//!    `scan_start_tag` on it), its local name is `stream` and it binds its prefix to the streams
//!    namespace; a stream end is `</` + the header's qualified name + whitespace + `>`.
//! 8. Elements: `StartTag::parse` succeeds, except for duplicate attributes (the framer does not
//!    look for them; that is documented), and its local name gives the frame's `kind`.
//!    `Element::parse(raw, "jabber:client", [stream])` may refuse (unbound prefixes, duplicate
//!    attributes) but only with `NotWellFormed`: the framer already refused every comment,
//!    PI, doctype and entity reference (`RestrictedXml`), and nesting is within `MAX_DEPTH`.
//!    When it succeeds, the root's local name is the start tag's.
//! 9. Chunking does not matter: without reset/take points, the frames (adjacent whitespace
//!    merged, since its split follows the reads by design) and the final outcome (error, or the
//!    number of bytes left buffered) are those of feeding the whole input at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_veil::xml::framer::{MAX_DEPTH, STREAMS_NS};
use xmpp_veil::xml::{Element, ElementKind, Frame, FrameError, Framer, Limits, StartTag};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    ResetAfterDrain,
    ResetBeforeDrain,
    TakeBuffered,
}

struct Plan<'a> {
    limits: Limits,
    chunks: &'a [u8],
    data: &'a [u8],
}

impl<'a> Plan<'a> {
    fn decode(input: &'a [u8]) -> Option<Plan<'a>> {
        let (&[l, d, a, n], rest) = input.split_first_chunk::<4>()?;
        let max_element = if l < 0x80 {
            1 + 8 * usize::from(l)
        } else {
            64 * 1024
        };
        let max_depth = if d == 0 { MAX_DEPTH } else { usize::from(d) };
        let max_attributes = if a == 0 {
            usize::MAX
        } else {
            usize::from(a) - 1
        };
        let n = usize::from(n).min(rest.len());
        let (chunks, data) = rest.split_at(n);
        Some(Plan {
            limits: Limits {
                max_element,
                max_depth,
                max_attributes,
            },
            chunks,
            data,
        })
    }

    /// The pieces of `data`, each with what follows it.
    fn pieces(&self) -> Vec<(&'a [u8], After)> {
        if self.chunks.is_empty() {
            return vec![(self.data, After::Nothing)];
        }
        let mut out = Vec::new();
        let mut rest = self.data;
        let mut i = 0;
        while !rest.is_empty() {
            let c = self.chunks[i % self.chunks.len()];
            i += 1;
            let v = usize::from(c & 0x3f);
            let (piece, tail) = rest.split_at((1 + v * v).min(rest.len()));
            rest = tail;
            let after = match c >> 6 {
                0 => After::Nothing,
                1 => After::ResetAfterDrain,
                2 => After::ResetBeforeDrain,
                _ => After::TakeBuffered,
            };
            out.push((piece, after));
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    Body,
    Ended,
}

/// A framer under observation: every call goes through here and is checked.
struct Checked {
    f: Framer,
    limits: Limits,
    fed: Vec<u8>,
    /// Bytes of `fed` given back (frames and `take_buffered`).
    consumed: usize,
    failed: Option<FrameError>,
    phase: Phase,
    /// Qualified name of the last stream header.
    stream_qname: Vec<u8>,
    frames: Vec<Frame>,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

impl Checked {
    fn new(limits: Limits) -> Checked {
        Checked {
            f: Framer::with_limits(limits),
            limits,
            fed: Vec::new(),
            consumed: 0,
            failed: None,
            phase: Phase::Header,
            stream_qname: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// Feed `chunk`: through `extend`, or (`via_buffer`) the way the session reads, by
    /// reserving room in `buffer_mut()` and appending to it.
    fn extend(&mut self, chunk: &[u8], via_buffer: bool) {
        let before = self.f.buffered();
        if via_buffer {
            let buf = self.f.buffer_mut();
            buf.reserve(chunk.len());
            buf.extend_from_slice(chunk);
        } else {
            self.f.extend(chunk);
        }
        self.fed.extend_from_slice(chunk);
        assert_eq!(self.f.buffered(), before + chunk.len());
        if self.failed.is_none() {
            // (4) What was left after the previous drain, plus this chunk.
            assert!(
                self.f.buffered() <= self.limits.max_element + chunk.len(),
                "buffer {} > max_element {} + chunk {}",
                self.f.buffered(),
                self.limits.max_element,
                chunk.len()
            );
        }
    }

    fn reset(&mut self) {
        self.f.reset();
        self.phase = Phase::Header;
        self.check_prefix();
    }

    /// What the session does after each read: give an empty buffer's memory back.
    fn release_if_empty(&mut self) {
        let before = self.f.buffered();
        self.f.release_if_empty();
        assert_eq!(self.f.buffered(), before);
    }

    fn take_buffered(&mut self) {
        let taken = self.f.take_buffered();
        self.give_back(&taken);
        assert_eq!(self.f.buffered(), 0);
    }

    fn give_back(&mut self, raw: &[u8]) {
        let end = self.consumed + raw.len();
        assert!(
            self.fed.get(self.consumed..end) == Some(raw),
            "returned bytes are not the next input bytes"
        );
        self.consumed = end;
    }

    /// (2)
    fn check_prefix(&self) {
        assert_eq!(
            self.fed.len() - self.f.buffered(),
            self.consumed,
            "consumed prefix and buffer do not add up"
        );
    }

    /// `next_frame()` until it has nothing more (or fails).
    fn drain(&mut self) {
        loop {
            let r = self.f.next_frame();
            if let Some(e) = &self.failed {
                // (3)
                assert_eq!(r.as_ref(), Err(e), "a poisoned framer recovered");
                return;
            }
            match r {
                Ok(Some(frame)) => {
                    self.check_frame(&frame);
                    self.frames.push(frame);
                }
                Ok(None) => {
                    self.check_prefix();
                    // (4)
                    assert!(
                        self.f.buffered() <= self.limits.max_element,
                        "Ok(None) with {} bytes buffered, max_element {}",
                        self.f.buffered(),
                        self.limits.max_element
                    );
                    return;
                }
                Err(e) => {
                    if let FrameError::TooLarge { limit } = e {
                        assert_eq!(limit, self.limits.max_element);
                    }
                    self.failed = Some(e);
                }
            }
        }
    }

    fn check_frame(&mut self, frame: &Frame) {
        let raw: &[u8] = match frame {
            Frame::StreamHeader(r) | Frame::Whitespace(r) | Frame::StreamEnd(r) => r,
            Frame::Element { raw, .. } => raw,
        };
        self.give_back(raw);
        self.check_prefix();
        // (5)
        assert!(
            raw.len() <= self.limits.max_element,
            "frame of {} bytes, max_element {}",
            raw.len(),
            self.limits.max_element
        );
        assert!(std::str::from_utf8(raw).is_ok(), "frame is not UTF-8");
        match frame {
            Frame::StreamHeader(raw) => {
                assert_eq!(self.phase, Phase::Header, "header out of order");
                self.phase = Phase::Body;
                self.stream_qname = check_header(raw);
            }
            Frame::Whitespace(raw) => {
                assert_ne!(
                    self.phase,
                    Phase::Header,
                    "whitespace frame before the header"
                );
                assert!(!raw.is_empty() && raw.iter().all(|&c| is_ws(c)));
            }
            Frame::StreamEnd(raw) => {
                assert_eq!(self.phase, Phase::Body, "stream end out of order");
                self.phase = Phase::Ended;
                let name = raw
                    .strip_prefix(b"</")
                    .and_then(|r| r.strip_suffix(b">"))
                    .expect("stream end shape");
                let (qname, tail) = name.split_at(self.stream_qname.len().min(name.len()));
                assert_eq!(qname, &self.stream_qname[..], "stream end name");
                assert!(tail.iter().all(|&c| is_ws(c)), "stream end tail");
            }
            Frame::Element { raw, kind } => {
                assert_eq!(self.phase, Phase::Body, "element out of order");
                check_element(raw, *kind);
            }
        }
    }
}

/// (7) Returns the header's qualified name.
fn check_header(raw: &[u8]) -> Vec<u8> {
    assert_eq!(raw.last(), Some(&b'>'));
    let lt = raw.iter().rposition(|&c| c == b'<').expect("a start tag");
    let tag_raw = &raw[lt..];
    let tag = StartTag::parse(tag_raw).unwrap_or_else(|e| panic!("header start tag: {e}"));
    assert_eq!(tag.name, "stream");
    let qname: Vec<u8> = tag_raw[1..]
        .iter()
        .copied()
        .take_while(|&c| !is_ws(c) && c != b'>' && c != b'/')
        .collect();
    let decl = match qname.iter().position(|&c| c == b':') {
        Some(i) => format!("xmlns:{}", String::from_utf8_lossy(&qname[..i])),
        None => "xmlns".to_owned(),
    };
    assert_eq!(tag.attr(&decl), Some(STREAMS_NS), "header namespace");
    qname
}

/// (7), (8)
fn check_element(raw: &[u8], kind: ElementKind) {
    assert_eq!(raw.first(), Some(&b'<'));
    assert_eq!(raw.last(), Some(&b'>'));
    let name = match StartTag::parse(raw) {
        Ok(tag) => {
            let expected = match tag.name.as_str() {
                "message" => ElementKind::Message,
                "presence" => ElementKind::Presence,
                "iq" => ElementKind::Iq,
                _ => ElementKind::Other,
            };
            assert_eq!(kind, expected, "kind of <{}>", tag.name);
            Some(tag.name)
        }
        Err(FrameError::NotWellFormed("duplicate attribute")) => None,
        Err(e) => panic!("framed element refused by StartTag::parse: {e}"),
    };
    match Element::parse(raw, "jabber:client", &[("stream", STREAMS_NS)]) {
        Ok(el) => {
            if let Some(name) = name {
                assert_eq!(el.name, name, "Element::parse root name");
            }
        }
        Err(FrameError::NotWellFormed(_)) => {}
        Err(e) => panic!("framed element refused by Element::parse with {e:?}"),
    }
}

/// Adjacent whitespace frames merged into one.
fn normalize(frames: &[Frame]) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for f in frames {
        if let (Some(Frame::Whitespace(prev)), Frame::Whitespace(cur)) = (out.last_mut(), f) {
            let mut v = prev.to_vec();
            v.extend_from_slice(cur);
            *prev = v.into();
            continue;
        }
        out.push(f.clone());
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::decode(input) else {
        return;
    };
    let pieces = plan.pieces();
    let mut c = Checked::new(plan.limits);
    for (i, &(piece, after)) in pieces.iter().enumerate() {
        c.extend(piece, i % 2 == 1);
        if after == After::ResetBeforeDrain {
            c.reset();
        }
        c.drain();
        match after {
            After::ResetAfterDrain => {
                c.reset();
                c.drain();
            }
            After::TakeBuffered => {
                c.take_buffered();
                c.drain();
            }
            After::Nothing | After::ResetBeforeDrain => {}
        }
        c.release_if_empty();
    }
    c.drain();

    // (9)
    if pieces.len() > 1 && pieces.iter().all(|&(_, a)| a == After::Nothing) {
        let mut whole = Checked::new(plan.limits);
        whole.extend(plan.data, false);
        whole.drain();
        assert_eq!(
            normalize(&c.frames),
            normalize(&whole.frames),
            "chunked and one-shot frames differ"
        );
        assert_eq!(
            c.failed, whole.failed,
            "chunked and one-shot outcome differ"
        );
        if c.failed.is_none() {
            assert_eq!(c.f.buffered(), whole.f.buffered());
        }
    }

    // (3) Poisoning survives more input, a reset and a take.
    if let Some(e) = c.failed.clone() {
        c.extend(
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
            true,
        );
        c.f.reset();
        assert_eq!(c.f.next_frame(), Err(e.clone()));
        c.f.take_buffered();
        c.f.extend(b" ");
        assert_eq!(c.f.next_frame(), Err(e));
    }
});
