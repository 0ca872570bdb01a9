//! Sans-IO framer: turns the bytes of an XMPP stream into its top-level pieces (stream header,
//! depth-1 elements, whitespace keepalives, stream close) without building any tree.
//!
//! The scanner is a resumable state machine over [`BytesMut`]: it keeps the offset it has reached
//! and the state it was in, so feeding a large element one byte at a time costs O(n) in total.
//! Text runs and attribute values are skipped with `memchr`; only tag syntax is looked at byte by
//! byte. UTF-8 and XML 1.0 character validity are checked once per completed frame.
//!
//! Decisions the RFC leaves open, fixed here:
//! - A stream root whose local name is not `stream`, or whose prefix is not bound to
//!   `http://etherx.jabber.org/streams` in the root tag itself, is `InvalidNamespace`
//!   (RFC 6120 §4.9.3.10). A self-closing root is `NotWellFormed`.
//! - Whitespace between top-level elements is returned as soon as it is buffered, so a run split
//!   across reads comes back as several [`Frame::Whitespace`] (their concatenation is the run).
//!   A single piece is at most `max_element` bytes.
//! - After [`Frame::StreamEnd`], whitespace is still returned as [`Frame::Whitespace`]; any other
//!   byte is `NotWellFormed`.
//! - Elements nested deeper than the configured depth (at most [`MAX_DEPTH`]) and elements with
//!   more attributes than configured are [`FrameError::Limit`], a `policy-violation`: the XML is
//!   well formed, the proxy's limit refuses it (the bound keeps every later consumer, including
//!   recursive drops of parsed trees, safe).
//! - An XML declaration is accepted once, before the root, even after leading whitespace.
//! - Duplicate attributes are not detected here; `StartTag::parse` and `Element::parse` reject
//!   them, and the stream root is checked with the same start-tag parser.
//!
//! Layout: [`scan`] the resumable boundary scanner, [`tag`] the start-tag grammar, [`chars`] byte
//! classes, references and the character check, [`error`] the errors.

mod chars;
mod error;
mod scan;
mod tag;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub(crate) use chars::{check_chars, decode_ref, is_valid_qname, local_name};
pub use error::FrameError;
pub(crate) use tag::{scan_start_tag, unescape_attr};

use scan::{Done, Mode, Scanner};

/// Deepest element nesting accepted inside one top-level element (the top-level element is 1).
pub const MAX_DEPTH: usize = 256;

/// What one top-level element may be: its size in bytes, how deeply elements nest in it, and
/// how many attributes one element has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_element: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
}

/// Which stanza a top-level element is, by local name only (any prefix or namespace), so that a
/// stanza in an unexpected namespace is still inspected as what the server may treat it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementKind {
    Message,
    Presence,
    Iq,
    Other,
}

impl ElementKind {
    fn from_qname(qname: &[u8]) -> ElementKind {
        match local_name(qname) {
            b"message" => ElementKind::Message,
            b"presence" => ElementKind::Presence,
            b"iq" => ElementKind::Iq,
            _ => ElementKind::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Optional `<?xml …?>` declaration + whitespace + the `<stream:stream …>` open tag; raw
    /// bytes of all of it.
    StreamHeader(Bytes),
    /// A complete top-level (depth-1) element, exact original bytes.
    Element { raw: Bytes, kind: ElementKind },
    /// Whitespace between top-level elements (keepalives); forwarded as is.
    Whitespace(Bytes),
    /// The closing `</stream:stream>` (with whatever prefix the header bound to the streams ns).
    StreamEnd(Bytes),
}

// ---------------------------------------------------------------------------------------------
// Framer

/// Incremental framer for one direction of an XMPP c2s stream.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    limit: usize,
    sc: Scanner,
    failed: Option<FrameError>,
}

thread_local! {
    /// Empty receive buffers of this thread's quiet framers, lent to the next framer that
    /// receives bytes: an idle connection holds no buffer, and a busy one does not pay an
    /// allocation per read for it.
    static SPARE_BUFFERS: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Spare buffers kept per thread, and the largest kept.
const SPARE_MAX: usize = 64;
const SPARE_CAPACITY: usize = 32 * 1024;

impl Framer {
    /// `max_element`: largest stream header or top-level element accepted, in bytes.
    pub fn new(max_element: usize) -> Self {
        Framer {
            // Grown by the reader as data arrives: an idle session should hold little memory.
            buf: BytesMut::new(),
            limit: max_element,
            sc: Scanner::new(),
            failed: None,
        }
    }

    /// A framer with every limit set (depth at most [`MAX_DEPTH`]).
    pub fn with_limits(limits: Limits) -> Self {
        let mut framer = Framer::new(limits.max_element);
        framer.sc.max_depth = limits.max_depth.clamp(1, MAX_DEPTH);
        framer.sc.max_attributes = limits.max_attributes;
        framer
    }

    /// Append received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0
            && let Some(spare) = SPARE_BUFFERS.with_borrow_mut(|s| s.pop())
        {
            self.buf = spare;
        }
        self.buf.extend_from_slice(data);
    }

    /// Takes back the memory of a frame that was the whole buffer (see `take`), once its bytes
    /// are used up: the next read needs no allocation.
    pub fn recycle(&mut self, frame: Bytes) {
        if self.buf.capacity() == 0
            && let Ok(mut spare) = frame.try_into_mut()
        {
            spare.clear();
            self.buf = spare;
        }
    }

    /// The receive buffer, for reading straight into it (`read_buf`). Only append to it, and call
    /// [`next_frame`](Self::next_frame) after every read: it fails with `TooLarge` as soon as an
    /// incomplete frame exceeds `max_element`, which is what bounds the buffer.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Next complete frame, `Ok(None)` if more bytes are needed. After an `Err`, the framer is
    /// poisoned and keeps returning that error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.step().inspect_err(|e| self.failed = Some(e.clone()))
    }

    fn step(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.is_empty() {
            // Every frame needs a byte; the scanner would find nothing to do.
            return Ok(None);
        }
        let window = self.buf.len().min(self.limit);
        let done = {
            let Some(view) = self.buf.get(..window) else {
                return Ok(None);
            };
            match self.sc.scan(view)? {
                Some(d) => d,
                None if self.buf.len() > self.limit => {
                    return Err(FrameError::TooLarge { limit: self.limit });
                }
                None => return Ok(None),
            }
        };
        let frame = match done {
            Done::Whitespace(end) => Frame::Whitespace(self.take(end)),
            Done::StreamEnd(end) => {
                self.sc.mode = Mode::Ended;
                Frame::StreamEnd(self.take(end))
            }
            Done::Element(end) => {
                check_chars(self.buf.get(..end).unwrap_or_default())?;
                let (s, e) = self.sc.root;
                let kind = ElementKind::from_qname(self.buf.get(s..e).unwrap_or_default());
                Frame::Element {
                    raw: self.take(end),
                    kind,
                }
            }
            Done::Header(end) => {
                let all = self.buf.get(..end).unwrap_or_default();
                check_chars(all)?;
                let tag = all
                    .get(self.sc.root.0.saturating_sub(1)..)
                    .unwrap_or_default();
                self.sc.stream_qname = stream_root_qname(tag)?;
                self.sc.mode = Mode::Body;
                Frame::StreamHeader(self.take(end))
            }
        };
        Ok(Some(frame))
    }

    /// Split off the finished frame and start scanning the next one.
    fn take(&mut self, end: usize) -> Bytes {
        self.sc.restart_frame();
        if end >= self.buf.len() {
            // The whole buffer (one stanza per read, the usual case): handed over as it is,
            // without the shared header `split_to` would allocate.
            return std::mem::take(&mut self.buf).freeze();
        }
        self.buf.split_to(end).freeze()
    }

    /// Stream restart: the next frame must be a new stream header. Bytes already buffered but
    /// not yet returned are kept (they belong to the new stream). Does not clear a poisoned
    /// framer.
    pub fn reset(&mut self) {
        self.sc.mode = Mode::Header;
        self.sc.stream_qname.clear();
        self.sc.restart_frame();
    }

    /// Gives the receive buffer's memory back when nothing is buffered (an idle connection
    /// should not hold a read buffer).
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            let spare = std::mem::take(&mut self.buf);
            if spare.capacity() <= SPARE_CAPACITY {
                SPARE_BUFFERS.with_borrow_mut(|s| {
                    if s.len() < SPARE_MAX {
                        s.push(spare);
                    }
                });
            }
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take the unconsumed bytes out (before a TLS handshake takes over the socket). Scanning
    /// of any partial frame starts over with the next bytes.
    pub fn take_buffered(&mut self) -> BytesMut {
        self.sc.restart_frame();
        self.buf.split()
    }
}

/// Check the stream root tag (`tag` starts at its `<`) and return its qualified name.
fn stream_root_qname(tag: &[u8]) -> Result<Vec<u8>, FrameError> {
    let spans = scan_start_tag(tag)?;
    let qname = tag.get(spans.name.clone()).unwrap_or_default();
    if local_name(qname) != b"stream" {
        return Err(FrameError::InvalidNamespace("stream element name"));
    }
    let decl: Vec<u8> = match qname.iter().position(|&c| c == b':') {
        Some(i) => [b"xmlns:", qname.get(..i).unwrap_or_default()].concat(),
        None => b"xmlns".to_vec(),
    };
    let bound = spans
        .attrs
        .iter()
        .find(|a| tag.get(a.name.clone()) == Some(&decl[..]));
    match bound {
        Some(a)
            if unescape_attr(tag.get(a.value.clone()).unwrap_or_default())?
                == crate::ns::STREAMS =>
        {
            Ok(qname.to_vec())
        }
        _ => Err(FrameError::InvalidNamespace("stream namespace")),
    }
}
