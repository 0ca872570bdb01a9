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
//! - Elements nested deeper than [`MAX_DEPTH`] are `NotWellFormed` (keeps every later consumer,
//!   including recursive drops of parsed trees, safe).
//! - An XML declaration is accepted once, before the root, even after leading whitespace.
//! - Duplicate attributes are not detected here; `StartTag::parse` and `Element::parse` reject
//!   them, and the stream root is checked with the same start-tag parser.

use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use memchr::{memchr2, memchr3};

use crate::stream::errors::Condition;

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

/// Longest entity/character reference body (between `&` and `;`) accepted.
const MAX_REF: usize = 32;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    NotWellFormed(&'static str),
    RestrictedXml(&'static str),
    TooLarge {
        limit: usize,
    },
    InvalidNamespace(&'static str),
    /// A configured limit other than the size: nesting depth, attributes per element.
    Limit(&'static str),
}

impl FrameError {
    /// RFC 6120 stream error condition for this error.
    pub fn condition(&self) -> Condition {
        match self {
            FrameError::NotWellFormed(_) => Condition::NotWellFormed,
            FrameError::RestrictedXml(_) => Condition::RestrictedXml,
            FrameError::TooLarge { .. } | FrameError::Limit(_) => Condition::PolicyViolation,
            FrameError::InvalidNamespace(_) => Condition::InvalidNamespace,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NotWellFormed(why)
            | FrameError::RestrictedXml(why)
            | FrameError::InvalidNamespace(why)
            | FrameError::Limit(why) => write!(f, "{}: {}", self.condition(), why),
            FrameError::TooLarge { limit } => {
                write!(
                    f,
                    "{}: element larger than {} bytes",
                    self.condition(),
                    limit
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

fn nwf(why: &'static str) -> FrameError {
    FrameError::NotWellFormed(why)
}

fn restricted(why: &'static str) -> FrameError {
    FrameError::RestrictedXml(why)
}

// ---------------------------------------------------------------------------------------------
// Byte classes

const fn build_class(start: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        // Non-ASCII bytes are accepted in names; UTF-8 validity is checked per frame.
        let s = c.is_ascii_alphabetic() || c == b'_' || c == b':' || c >= 0x80;
        t[i] = if start {
            s
        } else {
            s || c.is_ascii_digit() || c == b'-' || c == b'.'
        };
        i += 1;
    }
    t
}

static NAME_START: [bool; 256] = build_class(true);
static NAME_CHAR: [bool; 256] = build_class(false);

#[inline(always)]
fn is_name_start(c: u8) -> bool {
    NAME_START[c as usize]
}

#[inline(always)]
fn is_name_char(c: u8) -> bool {
    NAME_CHAR[c as usize]
}

#[inline(always)]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline(always)]
fn rest(buf: &[u8], pos: usize) -> &[u8] {
    buf.get(pos..).unwrap_or_default()
}

#[inline(always)]
fn skip_ws(buf: &[u8], pos: usize) -> usize {
    pos + rest(buf, pos).iter().take_while(|&&c| is_ws(c)).count()
}

/// Bytes looked at one by one before handing a span to `memchr`: most spans in a stanza (an
/// attribute value, the gap between two tags) are shorter, and a plain loop beats memchr's setup
/// on them.
const SHORT_SPAN: usize = 24;

/// First `a` or `b` in `hay`.
#[inline(always)]
fn find2(a: u8, b: u8, hay: &[u8]) -> Option<usize> {
    let head = hay.get(..SHORT_SPAN).unwrap_or(hay);
    match head.iter().position(|&c| c == a || c == b) {
        Some(i) => Some(i),
        None => memchr2(a, b, rest(hay, head.len())).map(|i| i + head.len()),
    }
}

/// First `a`, `b` or `c` in `hay`.
#[inline(always)]
fn find3(a: u8, b: u8, c: u8, hay: &[u8]) -> Option<usize> {
    let head = hay.get(..SHORT_SPAN).unwrap_or(hay);
    match head.iter().position(|&x| x == a || x == b || x == c) {
        Some(i) => Some(i),
        None => memchr3(a, b, c, rest(hay, head.len())).map(|i| i + head.len()),
    }
}

/// Part of a qualified name after the prefix.
pub(crate) fn local_name(qname: &[u8]) -> &[u8] {
    match qname.iter().position(|&c| c == b':') {
        Some(i) => qname.get(i + 1..).unwrap_or_default(),
        None => qname,
    }
}

/// `NCName` or `NCName:NCName` made of name characters (caller guarantees the characters).
fn check_qname(name: &[u8]) -> Result<(), FrameError> {
    let first = name.first().copied().unwrap_or(b'-');
    if !is_name_start(first) {
        return Err(nwf("invalid name"));
    }
    if let Some(i) = name.iter().position(|&c| c == b':') {
        let local = name.get(i + 1..).unwrap_or_default();
        let ok = i > 0
            && local
                .first()
                .is_some_and(|&c| is_name_start(c) && c != b':')
            && !local.contains(&b':');
        if !ok {
            return Err(nwf("invalid qualified name"));
        }
    }
    Ok(())
}

/// Valid `name` for an element or attribute (used by the element helpers on caller input).
pub(crate) fn is_valid_qname(name: &[u8]) -> bool {
    name.iter().all(|&c| is_name_char(c))
        && std::str::from_utf8(name).is_ok()
        && check_qname(name).is_ok()
}

fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Resolve the body of a reference (between `&` and `;`): the five predefined entities and
/// character references. Any other well-formed name is a (forbidden) entity reference.
pub(crate) fn decode_ref(body: &[u8]) -> Result<char, FrameError> {
    match body {
        b"lt" => return Ok('<'),
        b"gt" => return Ok('>'),
        b"amp" => return Ok('&'),
        b"quot" => return Ok('"'),
        b"apos" => return Ok('\''),
        _ => {}
    }
    let (digits, radix) = match body {
        [b'#', b'x', hex @ ..] => (hex, 16),
        [b'#', dec @ ..] => (dec, 10),
        [first, ..] if is_name_start(*first) && body.iter().all(|&c| is_name_char(c)) => {
            return Err(restricted("entity reference"));
        }
        _ => return Err(nwf("invalid reference")),
    };
    if digits.is_empty() {
        return Err(nwf("invalid character reference"));
    }
    let mut v: u32 = 0;
    for &d in digits {
        let dv = (d as char)
            .to_digit(radix)
            .ok_or(nwf("invalid character reference"))?;
        // Saturate: anything past U+10FFFF is rejected below anyway.
        v = v.saturating_mul(radix).saturating_add(dv).min(0x11_0000);
    }
    if !is_xml_char(v) {
        return Err(nwf("character reference to an illegal character"));
    }
    char::from_u32(v).ok_or(nwf("invalid character reference"))
}

/// UTF-8 plus XML 1.0 `Char` production (no C0 controls except TAB/LF/CR, no U+FFFE/U+FFFF;
/// surrogates and values past U+10FFFF are rejected as invalid UTF-8).
///
/// One pass instead of `str::from_utf8` + a separate character check: `from_utf8` drops to
/// byte-at-a-time work around every non-ASCII character, which chat text is full of.
pub(crate) fn check_chars(b: &[u8]) -> Result<(), FrameError> {
    const HI: u64 = 0x8080_8080_8080_8080;
    const SPACES: u64 = 0x2020_2020_2020_2020;
    let mut i = 0;
    while i < b.len() {
        // Skip plain ASCII a word at a time. The mask flags bytes >= 0x80 and bytes < 0x20
        // (TAB/LF/CR included); borrows can only add false flags above a true one, so the
        // lowest flag is exact.
        while let Some(word) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
            let w = u64::from_le_bytes(*word);
            let odd = (w | (w.wrapping_sub(SPACES) & !w)) & HI;
            if odd != 0 {
                i += (odd.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        if i >= b.len() {
            break;
        }
        i = check_char_at(b, i)?;
    }
    Ok(())
}

/// Validate the character starting at `i`; returns the index after it.
#[inline]
fn check_char_at(b: &[u8], i: usize) -> Result<usize, FrameError> {
    let bad = || nwf("invalid UTF-8");
    let at = |k: usize| b.get(i + k).copied().unwrap_or(0);
    let cont = |c: u8| (0x80..=0xBF).contains(&c);
    let c0 = at(0);
    let width = match c0 {
        0x20..=0x7F | b'\t' | b'\n' | b'\r' => 1,
        0x00..=0x1F => return Err(nwf("illegal character")),
        0xC2..=0xDF if cont(at(1)) => 2,
        0xE0 if (0xA0..=0xBF).contains(&at(1)) && cont(at(2)) => 3,
        0xE1..=0xEC | 0xEE..=0xEF if cont(at(1)) && cont(at(2)) => {
            // U+FFFE / U+FFFF
            if c0 == 0xEF && at(1) == 0xBF && at(2) >= 0xBE {
                return Err(nwf("illegal character"));
            }
            3
        }
        0xED if (0x80..=0x9F).contains(&at(1)) && cont(at(2)) => 3,
        0xF0 if (0x90..=0xBF).contains(&at(1)) && cont(at(2)) && cont(at(3)) => 4,
        0xF1..=0xF3 if cont(at(1)) && cont(at(2)) && cont(at(3)) => 4,
        0xF4 if (0x80..=0x8F).contains(&at(1)) && cont(at(2)) && cont(at(3)) => 4,
        _ => return Err(bad()),
    };
    Ok(i + width)
}

// ---------------------------------------------------------------------------------------------
// Start tag helper shared with `element.rs`

/// Byte spans of one attribute inside a start tag.
#[derive(Debug, Clone)]
pub(crate) struct AttrSpan {
    /// From the end of the previous token (so removing `lead..end` drops the separating space).
    pub lead: usize,
    pub name: Range<usize>,
    /// Raw value, without the quotes.
    pub value: Range<usize>,
    /// Just past the closing quote.
    pub end: usize,
}

/// Byte spans of a start tag (`raw` begins with `<`).
#[derive(Debug, Clone)]
pub(crate) struct TagSpans {
    pub name: Range<usize>,
    pub attrs: Vec<AttrSpan>,
}

/// Parse the start tag at the beginning of `raw`, checking its syntax (names, quoting, `<` in
/// values, references) and rejecting duplicate attribute names.
pub(crate) fn scan_start_tag(raw: &[u8]) -> Result<TagSpans, FrameError> {
    if raw.first() != Some(&b'<') {
        return Err(nwf("expected a start tag"));
    }
    let name_end = 1 + rest(raw, 1)
        .iter()
        .take_while(|&&c| is_name_char(c))
        .count();
    let name = 1..name_end;
    check_qname(raw.get(name.clone()).unwrap_or_default())?;
    let mut attrs: Vec<AttrSpan> = Vec::new();
    let mut pos = name_end;
    loop {
        let lead = pos;
        pos = skip_ws(raw, pos);
        match raw.get(pos) {
            Some(b'>') => {
                return finish_tag(raw, name, attrs);
            }
            Some(b'/') => {
                if raw.get(pos + 1) != Some(&b'>') {
                    return Err(nwf("expected '>' after '/'"));
                }
                return finish_tag(raw, name, attrs);
            }
            Some(&c) if is_name_start(c) => {
                if pos == lead {
                    return Err(nwf("missing whitespace before attribute"));
                }
            }
            Some(_) => return Err(nwf("invalid character in tag")),
            None => return Err(nwf("unterminated start tag")),
        }
        let an_start = pos;
        pos += rest(raw, pos)
            .iter()
            .take_while(|&&c| is_name_char(c))
            .count();
        let an = an_start..pos;
        check_qname(raw.get(an.clone()).unwrap_or_default())?;
        pos = skip_ws(raw, pos);
        if raw.get(pos) != Some(&b'=') {
            return Err(nwf("expected '=' after attribute name"));
        }
        pos = skip_ws(raw, pos + 1);
        let quote = match raw.get(pos) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(nwf("unquoted attribute value")),
        };
        let v_start = pos + 1;
        let v_len = memchr::memchr(quote, rest(raw, v_start)).ok_or(nwf("unterminated value"))?;
        let value = v_start..v_start + v_len;
        check_attr_value(raw.get(value.clone()).unwrap_or_default())?;
        pos = value.end + 1;
        attrs.push(AttrSpan {
            lead,
            name: an,
            value,
            end: pos,
        });
    }
}

fn finish_tag(
    raw: &[u8],
    name: Range<usize>,
    attrs: Vec<AttrSpan>,
) -> Result<TagSpans, FrameError> {
    let key = |a: &AttrSpan| raw.get(a.name.clone()).unwrap_or_default();
    let dup = if attrs.len() <= 16 {
        attrs
            .iter()
            .enumerate()
            .any(|(i, a)| attrs.iter().skip(i + 1).any(|b| key(a) == key(b)))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(attrs.len());
        !attrs.iter().all(|a| seen.insert(key(a)))
    };
    if dup {
        return Err(nwf("duplicate attribute"));
    }
    Ok(TagSpans { name, attrs })
}

/// A raw attribute value: no `<`, only valid references.
fn check_attr_value(v: &[u8]) -> Result<(), FrameError> {
    if memchr::memchr(b'<', v).is_some() {
        return Err(nwf("'<' in attribute value"));
    }
    let mut pos = 0;
    while let Some(i) = memchr::memchr(b'&', rest(v, pos)) {
        let body_start = pos + i + 1;
        let len = memchr::memchr(b';', rest(v, body_start)).ok_or(nwf("bare '&'"))?;
        decode_ref(v.get(body_start..body_start + len).unwrap_or_default())?;
        pos = body_start + len + 1;
    }
    Ok(())
}

/// Unescape a raw attribute value with XML attribute-value normalization (TAB/CR/LF → space,
/// CRLF → one space).
pub(crate) fn unescape_attr(v: &[u8]) -> Result<String, FrameError> {
    let s = std::str::from_utf8(v).map_err(|_| nwf("invalid UTF-8"))?;
    let mut out = String::with_capacity(s.len());
    let mut rest_s = s;
    while let Some(i) = rest_s.find(['&', '\t', '\n', '\r']) {
        let (head, tail) = rest_s.split_at(i);
        out.push_str(head);
        let mut chars = tail.chars();
        match chars.next() {
            Some('&') => {
                let semi = tail.find(';').ok_or(nwf("bare '&'"))?;
                let body = tail.get(1..semi).unwrap_or_default();
                out.push(decode_ref(body.as_bytes())?);
                rest_s = tail.get(semi + 1..).unwrap_or_default();
            }
            Some('\r') => {
                out.push(' ');
                let t = chars.as_str();
                rest_s = t.strip_prefix('\n').unwrap_or(t);
            }
            _ => {
                out.push(' ');
                rest_s = chars.as_str();
            }
        }
    }
    out.push_str(rest_s);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Scanner

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Header,
    Body,
    Ended,
}

/// Scanner state; positions are offsets from the start of the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Before the stream root: whitespace, an XML declaration, then `<`.
    HeaderLead,
    /// Inside `<?xml … ?>`.
    HeaderDecl,
    /// At the start of a frame between top-level elements.
    FrameStart,
    /// Character data inside an element.
    Content,
    /// Just after `<`.
    Lt,
    StartName {
        start: usize,
    },
    /// Between attributes; `ws` = whitespace seen since the last token.
    TagBody {
        ws: bool,
    },
    /// After `/` in a start tag.
    EmptyEnd,
    AttrName {
        start: usize,
    },
    AttrEq,
    AttrQuote,
    AttrValue {
        quote: u8,
    },
    /// At `&`; `quote` is 0 in content, else the attribute value's quote.
    Ref {
        amp: usize,
        quote: u8,
    },
    EndName {
        start: usize,
    },
    EndTail,
    CData,
}

enum Done {
    Header(usize),
    Element(usize),
    Whitespace(usize),
    StreamEnd(usize),
}

#[derive(Debug)]
struct Scanner {
    pos: usize,
    st: St,
    mode: Mode,
    decl_seen: bool,
    closing_stream: bool,
    /// Name spans of the open elements of the current frame.
    stack: Vec<(usize, usize)>,
    /// Name span of the current frame's top-level start tag.
    root: (usize, usize),
    /// Qualified name of the stream root, for matching the stream close tag.
    stream_qname: Vec<u8>,
    max_depth: usize,
    max_attributes: usize,
    /// Attributes of the start tag being scanned.
    attributes: usize,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            pos: 0,
            st: St::HeaderLead,
            mode: Mode::Header,
            decl_seen: false,
            closing_stream: false,
            stack: Vec::new(),
            root: (0, 0),
            stream_qname: Vec::new(),
            max_depth: MAX_DEPTH,
            max_attributes: usize::MAX,
            attributes: 0,
        }
    }

    /// Forget the partial frame (its bytes were returned or taken away).
    fn restart_frame(&mut self) {
        self.pos = 0;
        self.stack.clear();
        self.closing_stream = false;
        self.root = (0, 0);
        self.st = match self.mode {
            Mode::Header => {
                self.decl_seen = false;
                St::HeaderLead
            }
            Mode::Body | Mode::Ended => St::FrameStart,
        };
    }

    fn pop_close(&mut self, pos: usize) -> (St, Option<Done>) {
        self.stack.pop();
        if self.stack.is_empty() {
            (St::Content, Some(Done::Element(pos)))
        } else {
            (St::Content, None)
        }
    }

    /// Advance over `buf` (the current frame's bytes so far). `Ok(None)`: need more bytes.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<Done>, FrameError> {
        let mut pos = self.pos;
        let mut st = self.st;
        macro_rules! need_more {
            () => {{
                self.pos = pos;
                self.st = st;
                return Ok(None);
            }};
        }
        loop {
            match st {
                St::Content => match find2(b'<', b'&', rest(buf, pos)) {
                    Some(i) => {
                        pos += i;
                        if buf.get(pos) == Some(&b'<') {
                            pos += 1;
                            st = St::Lt;
                        } else {
                            st = St::Ref { amp: pos, quote: 0 };
                        }
                    }
                    None => {
                        pos = buf.len();
                        need_more!()
                    }
                },
                St::Lt => {
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    if is_name_start(c) {
                        st = St::StartName { start: pos };
                        pos += 1;
                        continue;
                    }
                    match c {
                        b'/' => {
                            if self.mode == Mode::Header {
                                return Err(nwf("close tag before stream header"));
                            }
                            pos += 1;
                            st = St::EndName { start: pos };
                        }
                        b'?' => return Err(restricted("processing instruction")),
                        b'!' => {
                            let Some(&d) = buf.get(pos + 1) else {
                                need_more!()
                            };
                            match d {
                                b'-' => return Err(restricted("comment")),
                                b'D' => return Err(restricted("doctype")),
                                b'[' => {
                                    if self.stack.is_empty() {
                                        return Err(nwf("CDATA outside an element"));
                                    }
                                    const OPEN: &[u8] = b"![CDATA[";
                                    let r = rest(buf, pos);
                                    if r.len() < OPEN.len() {
                                        if OPEN.starts_with(r) {
                                            need_more!()
                                        }
                                        return Err(nwf("invalid markup"));
                                    }
                                    if !r.starts_with(OPEN) {
                                        return Err(nwf("invalid markup"));
                                    }
                                    pos += OPEN.len();
                                    st = St::CData;
                                }
                                _ => return Err(restricted("markup declaration")),
                            }
                        }
                        _ => return Err(nwf("invalid tag name")),
                    }
                }
                St::StartName { start } => {
                    let Some(i) = rest(buf, pos).iter().position(|&c| !is_name_char(c)) else {
                        pos = buf.len();
                        need_more!()
                    };
                    pos += i;
                    check_qname(buf.get(start..pos).unwrap_or_default())?;
                    if self.stack.is_empty() {
                        self.root = (start, pos);
                    }
                    if self.mode != Mode::Header {
                        if self.stack.len() >= self.max_depth {
                            return Err(FrameError::Limit("elements nested too deeply"));
                        }
                        self.stack.push((start, pos));
                    }
                    self.attributes = 0;
                    st = St::TagBody { ws: false };
                }
                St::TagBody { ws } => {
                    let p = skip_ws(buf, pos);
                    let ws = ws || p > pos;
                    pos = p;
                    st = St::TagBody { ws };
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    match c {
                        b'>' => {
                            pos += 1;
                            if self.mode == Mode::Header {
                                return Ok(Some(Done::Header(pos)));
                            }
                            st = St::Content;
                        }
                        b'/' => {
                            pos += 1;
                            st = St::EmptyEnd;
                        }
                        c if is_name_start(c) => {
                            if !ws {
                                return Err(nwf("missing whitespace before attribute"));
                            }
                            self.attributes += 1;
                            if self.attributes > self.max_attributes {
                                return Err(FrameError::Limit(
                                    "too many attributes in one element",
                                ));
                            }
                            st = St::AttrName { start: pos };
                            pos += 1;
                        }
                        _ => return Err(nwf("invalid character in tag")),
                    }
                }
                St::EmptyEnd => {
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    if c != b'>' {
                        return Err(nwf("expected '>' after '/'"));
                    }
                    if self.mode == Mode::Header {
                        return Err(nwf("self-closing stream header"));
                    }
                    pos += 1;
                    let (next, done) = self.pop_close(pos);
                    if done.is_some() {
                        return Ok(done);
                    }
                    st = next;
                }
                St::AttrName { start } => {
                    let Some(i) = rest(buf, pos).iter().position(|&c| !is_name_char(c)) else {
                        pos = buf.len();
                        need_more!()
                    };
                    pos += i;
                    check_qname(buf.get(start..pos).unwrap_or_default())?;
                    st = St::AttrEq;
                }
                St::AttrEq => {
                    pos = skip_ws(buf, pos);
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    if c != b'=' {
                        return Err(nwf("expected '=' after attribute name"));
                    }
                    pos += 1;
                    st = St::AttrQuote;
                }
                St::AttrQuote => {
                    pos = skip_ws(buf, pos);
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    if c != b'\'' && c != b'"' {
                        return Err(nwf("unquoted attribute value"));
                    }
                    pos += 1;
                    st = St::AttrValue { quote: c };
                }
                St::AttrValue { quote } => match find3(quote, b'<', b'&', rest(buf, pos)) {
                    Some(i) => {
                        pos += i;
                        match buf.get(pos) {
                            Some(&b'<') => return Err(nwf("'<' in attribute value")),
                            Some(&b'&') => st = St::Ref { amp: pos, quote },
                            _ => {
                                pos += 1;
                                st = St::TagBody { ws: false };
                            }
                        }
                    }
                    None => {
                        pos = buf.len();
                        need_more!()
                    }
                },
                St::Ref { amp, quote } => {
                    let body = rest(buf, amp + 1);
                    let scanned = body.get(..MAX_REF + 1).unwrap_or(body);
                    let Some(i) = scanned
                        .iter()
                        .position(|&c| !(is_name_char(c) || c == b'#'))
                    else {
                        if body.len() > MAX_REF {
                            return Err(nwf("reference too long"));
                        }
                        // `pos` stays at `&`: the reference is re-read (at most MAX_REF bytes).
                        need_more!()
                    };
                    if i == 0 || body.get(i) != Some(&b';') {
                        return Err(nwf("bare '&'"));
                    }
                    decode_ref(body.get(..i).unwrap_or_default())?;
                    pos = amp + 1 + i + 1;
                    st = if quote == 0 {
                        St::Content
                    } else {
                        St::AttrValue { quote }
                    };
                }
                St::EndName { start } => {
                    let Some(i) = rest(buf, pos).iter().position(|&c| !is_name_char(c)) else {
                        pos = buf.len();
                        need_more!()
                    };
                    pos += i;
                    let name = buf.get(start..pos).unwrap_or_default();
                    check_qname(name)?;
                    match self.stack.last() {
                        Some(&(s, e)) => {
                            if buf.get(s..e) != Some(name) {
                                return Err(nwf("mismatched close tag"));
                            }
                        }
                        None => {
                            if name != self.stream_qname.as_slice() {
                                return Err(nwf("unexpected close tag at stream level"));
                            }
                            self.closing_stream = true;
                        }
                    }
                    st = St::EndTail;
                }
                St::EndTail => {
                    pos = skip_ws(buf, pos);
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    if c != b'>' {
                        return Err(nwf("invalid close tag"));
                    }
                    pos += 1;
                    if self.closing_stream {
                        return Ok(Some(Done::StreamEnd(pos)));
                    }
                    let (next, done) = self.pop_close(pos);
                    if done.is_some() {
                        return Ok(done);
                    }
                    st = next;
                }
                St::CData => match memchr::memmem::find(rest(buf, pos), b"]]>") {
                    Some(i) => {
                        pos += i + 3;
                        st = St::Content;
                    }
                    None => {
                        // Keep two bytes: the terminator may straddle the next read.
                        pos = pos.max(buf.len().saturating_sub(2));
                        need_more!()
                    }
                },
                St::FrameStart => {
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    if is_ws(c) {
                        return Ok(Some(Done::Whitespace(skip_ws(buf, pos))));
                    }
                    match (c, self.mode) {
                        (b'<', Mode::Body) => {
                            pos += 1;
                            st = St::Lt;
                        }
                        (_, Mode::Ended) => return Err(nwf("data after stream end")),
                        _ => return Err(nwf("text at stream level")),
                    }
                }
                St::HeaderLead => {
                    pos = skip_ws(buf, pos);
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    if c != b'<' {
                        return Err(nwf("text before stream header"));
                    }
                    let Some(&d) = buf.get(pos + 1) else {
                        need_more!()
                    };
                    if d != b'?' {
                        pos += 1;
                        st = St::Lt;
                        continue;
                    }
                    let Some(head) = buf.get(pos..pos + 6) else {
                        if b"<?xml".starts_with(rest(buf, pos)) {
                            need_more!()
                        }
                        return Err(restricted("processing instruction"));
                    };
                    match head {
                        [b'<', b'?', b'x', b'm', b'l', w] if is_ws(*w) && !self.decl_seen => {
                            self.decl_seen = true;
                            pos += 6;
                            st = St::HeaderDecl;
                        }
                        _ => return Err(restricted("processing instruction")),
                    }
                }
                St::HeaderDecl => match memchr2(b'?', b'<', rest(buf, pos)) {
                    Some(i) => {
                        pos += i;
                        if buf.get(pos) == Some(&b'<') {
                            return Err(nwf("'<' in XML declaration"));
                        }
                        match buf.get(pos + 1) {
                            None => need_more!(),
                            Some(&b'>') => {
                                pos += 2;
                                st = St::HeaderLead;
                            }
                            Some(_) => pos += 1,
                        }
                    }
                    None => {
                        pos = buf.len();
                        need_more!()
                    }
                },
            }
        }
    }
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
        self.buf.extend_from_slice(data);
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
        self.buf.split_to(end.min(self.buf.len())).freeze()
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
            self.buf = BytesMut::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 64 * 1024;

    const STREAM: &[u8] = b"<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version=\"1.0\">\
<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
</stream:features>\
<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>\n\
<message to='juliet@example.com/balcony' from=\"romeo@example.net/orchard\" type='chat' \
id='m1' x-note='a > b / c \"q\"'><body>Wherefore &amp; why? 1 &lt; 2 &#x263A; &#9731; &gt; \
&quot;&apos;</body><x xmlns='urn:x'><![CDATA[<not> a & tag ]] ]>]]></x>\
<active xmlns='http://jabber.org/protocol/chatstates'/></message> \
<presence><show>away</show><status xml:lang='en'>caf\xc3\xa9</status></presence>\
<x:presence xmlns:x='jabber:client' type='unavailable'/>\n \t\r\n\
<iq type = 'result' id = \"r2\" ></iq ></stream:stream>";

    /// Drain all frames; panics (tests only) on an error.
    fn drain(f: &mut Framer, out: &mut Vec<Frame>) {
        while let Some(fr) = f.next_frame().expect("frame error") {
            out.push(fr);
        }
    }

    /// Merge adjacent whitespace frames (their split depends on read boundaries by design).
    fn normalize(frames: Vec<Frame>) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        for f in frames {
            if let (Some(Frame::Whitespace(prev)), Frame::Whitespace(cur)) = (out.last_mut(), &f) {
                let mut v = prev.to_vec();
                v.extend_from_slice(cur);
                *prev = Bytes::from(v);
                continue;
            }
            out.push(f);
        }
        out
    }

    fn frames_chunked(input: &[u8], cuts: &[usize]) -> Vec<Frame> {
        let mut f = Framer::new(LIMIT);
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            f.extend(&input[last..c]);
            drain(&mut f, &mut out);
            last = c;
        }
        f.extend(&input[last..]);
        drain(&mut f, &mut out);
        assert_eq!(f.buffered(), 0);
        normalize(out)
    }

    fn one_shot() -> Vec<Frame> {
        frames_chunked(STREAM, &[])
    }

    fn err_of(input: &[u8]) -> FrameError {
        let mut f = Framer::new(LIMIT);
        f.extend(input);
        loop {
            match f.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error for {:?}", String::from_utf8_lossy(input)),
                Err(e) => {
                    assert_eq!(f.next_frame(), Err(e.clone()), "poisoned");
                    return e;
                }
            }
        }
    }

    const HDR: &str = "<stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams'>";

    fn body_err(body: &str) -> FrameError {
        err_of(format!("{HDR}{body}").as_bytes())
    }

    #[test]
    fn realistic_stream_frames() {
        let frames = one_shot();
        let kinds: Vec<String> = frames
            .iter()
            .map(|f| match f {
                Frame::StreamHeader(_) => "H".into(),
                Frame::Element { kind, .. } => format!("{kind:?}"),
                Frame::Whitespace(_) => "W".into(),
                Frame::StreamEnd(_) => "E".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "H", "Other", "Iq", "W", "Message", "W", "Presence", "Presence", "W", "Iq", "E"
            ]
        );
        let joined: Vec<u8> = frames
            .iter()
            .flat_map(|f| match f {
                Frame::StreamHeader(b)
                | Frame::Whitespace(b)
                | Frame::StreamEnd(b)
                | Frame::Element { raw: b, .. } => b.to_vec(),
            })
            .collect();
        assert_eq!(joined, STREAM);
        assert!(matches!(&frames[0], Frame::StreamHeader(b) if b.starts_with(b"<?xml")));
        assert_eq!(
            frames[10],
            Frame::StreamEnd(Bytes::from_static(b"</stream:stream>"))
        );
    }

    #[test]
    fn split_at_every_offset() {
        let expected = one_shot();
        for cut in 0..=STREAM.len() {
            assert_eq!(frames_chunked(STREAM, &[cut]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_chunks() {
        let cuts: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(frames_chunked(STREAM, &cuts), one_shot());
    }

    proptest! {
        #[test]
        fn random_rechunking(mut cuts in proptest::collection::vec(0..STREAM.len(), 0..40)) {
            cuts.sort_unstable();
            prop_assert_eq!(frames_chunked(STREAM, &cuts), one_shot());
        }

        #[test]
        fn check_chars_matches_reference(
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'a'), 0x80u8..0xC0, Just(0xEF), Just(0xBF)],
                0..200,
            ),
            prefix in 0usize..70,
        ) {
            // Prefix of ASCII so the odd bytes land at every offset of the block scan.
            let mut input = vec![b'x'; prefix];
            input.extend_from_slice(&data);
            let reference = std::str::from_utf8(&input)
                .map(|s| s.chars().all(|c| is_xml_char(c as u32)))
                .unwrap_or(false);
            prop_assert_eq!(check_chars(&input).is_ok(), reference);
        }

        /// The fuzz target's core property on stable: for arbitrary input (mostly XML-ish
        /// bytes after a valid header), how it is cut into reads changes nothing — the same
        /// frames (whitespace merged) and the same first error, which then stays.
        #[test]
        fn arbitrary_input_is_independent_of_chunking(
            data in proptest::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'<'), Just(b'>'), Just(b'/'), Just(b'\''), Just(b'='), Just(b' '),
                    Just(b'a'), Just(b'&'), Just(b';'), Just(b'!'), Just(b'?'), Just(b'['),
                ],
                0..400,
            ),
            mut cuts in proptest::collection::vec(0usize..600, 0..12),
        ) {
            let mut input = HDR.as_bytes().to_vec();
            input.extend_from_slice(&data);
            for c in cuts.iter_mut() {
                *c = (*c).min(input.len());
            }
            cuts.sort_unstable();
            let run = |cuts: &[usize]| {
                let mut f = Framer::new(128);
                let mut frames = Vec::new();
                let mut error = None;
                let mut last = 0;
                for &c in cuts.iter().chain(std::iter::once(&input.len())) {
                    f.extend(&input[last..c]);
                    last = c;
                    loop {
                        match f.next_frame() {
                            Ok(Some(fr)) => frames.push(fr),
                            Ok(None) => break,
                            Err(e) => {
                                error.get_or_insert(e);
                                break;
                            }
                        }
                    }
                    if error.is_some() {
                        break;
                    }
                }
                if let Some(e) = &error {
                    assert_eq!(f.next_frame().as_ref().err(), Some(e), "errors stay");
                }
                (normalize(frames), error)
            };
            let (whole_frames, whole_error) = run(&[]);
            let (cut_frames, cut_error) = run(&cuts);
            // An oversize element may be reported before or after a later syntax error
            // depending on when the bytes arrive; both must fail, and frames before agree.
            let common = whole_frames.len().min(cut_frames.len());
            prop_assert_eq!(&whole_frames[..common], &cut_frames[..common]);
            prop_assert_eq!(whole_error.is_some(), cut_error.is_some());
            let too_large = |e: &Option<FrameError>| matches!(e, Some(FrameError::TooLarge { .. }));
            if !too_large(&whole_error) && !too_large(&cut_error) {
                prop_assert_eq!(whole_frames, cut_frames);
                prop_assert_eq!(whole_error, cut_error);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300),
                                       split in 0usize..300) {
            let mut input = HDR.as_bytes().to_vec();
            input.extend_from_slice(&data);
            let mut f = Framer::new(256);
            let split = split.min(input.len());
            f.extend(&input[..split]);
            while let Ok(Some(_)) = f.next_frame() {}
            f.extend(&input[split..]);
            while let Ok(Some(_)) = f.next_frame() {}
        }
    }

    #[test]
    fn restricted_constructs() {
        assert_eq!(body_err("<!-- hi -->"), restricted("comment"));
        assert_eq!(
            body_err("<message><!-- hi --></message>"),
            restricted("comment")
        );
        assert_eq!(
            body_err("<message><?php x ?></message>"),
            restricted("processing instruction")
        );
        assert_eq!(body_err("<?foo?>"), restricted("processing instruction"));
        assert_eq!(
            err_of(b"<!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream>"),
            restricted("doctype")
        );
        assert_eq!(
            body_err("<message><!ENTITY x 'y'></message>"),
            restricted("markup declaration")
        );
        assert_eq!(
            body_err("<message><body>&lol;</body></message>"),
            restricted("entity reference")
        );
        assert_eq!(
            body_err("<message a='&xxe;'/>"),
            restricted("entity reference")
        );
        // A second declaration is a processing instruction.
        assert_eq!(
            err_of(b"<?xml version='1.0'?><?xml version='1.0'?>"),
            restricted("processing instruction")
        );
        assert_eq!(
            err_of(b"<?xml-stylesheet href='x'?>"),
            restricted("processing instruction")
        );
    }

    #[test]
    fn not_well_formed() {
        let cases = [
            "<message><body></message>",
            "<message></body>",
            "<message><a></A></message>",
            "<message to='a<b'/>",
            "hello",
            "</foo>",
            "</stream:streamx>",
            "<message>a & b</message>",
            "<message>&#0;</message>",
            "<message>&#xD800;</message>",
            "<message>&;</message>",
            "< message/>",
            "<message a='1'b='2'/>",
            "<message a=1/>",
            "<message a/>",
            "<message/ >",
            "<1message/>",
            "<a:b:c/>",
            "<:a/>",
            "<a: b='1'/>",
            "<![CDATA[x]]>",
            "<message><![CDATX[x]]></message>",
            "<message>\u{1}</message>",
            "<message>\u{FFFE}</message>",
            "<message a='\0'/>",
        ];
        for c in cases {
            assert!(
                matches!(body_err(c), FrameError::NotWellFormed(_)),
                "{c}: {:?}",
                body_err(c)
            );
        }
        assert!(matches!(
            body_err("<message>\u{1}</message>"),
            FrameError::NotWellFormed(_)
        ));
        let mut bad_utf8 = format!("{HDR}<message><body>").into_bytes();
        bad_utf8.extend_from_slice(b"\xff\xfe</body></message>");
        assert_eq!(err_of(&bad_utf8), nwf("invalid UTF-8"));
        assert_eq!(
            err_of(b"hi<stream:stream>"),
            nwf("text before stream header")
        );
        assert_eq!(
            err_of(format!("{HDR}</stream:stream><iq/>").as_bytes()),
            nwf("data after stream end")
        );
    }

    #[test]
    fn specific_errors() {
        assert_eq!(body_err("hello"), nwf("text at stream level"));
        assert_eq!(body_err(" \n x"), nwf("text at stream level"));
        assert_eq!(body_err("&amp;"), nwf("text at stream level"));
        assert_eq!(body_err("<a><b></a></b>"), nwf("mismatched close tag"));
        assert_eq!(body_err("<a></b>"), nwf("mismatched close tag"));
        assert_eq!(body_err("<a x='1<2'/>"), nwf("'<' in attribute value"));
        assert_eq!(body_err("<a x=\"<\"/>"), nwf("'<' in attribute value"));
        assert_eq!(
            body_err("</iq>"),
            nwf("unexpected close tag at stream level")
        );
        assert_eq!(body_err("<a>x & y</a>"), nwf("bare '&'"));
        assert_eq!(body_err("<a x='&'/>"), nwf("bare '&'"));
        assert_eq!(
            body_err("<a>&#x1;</a>"),
            nwf("character reference to an illegal character")
        );
        assert_eq!(
            body_err(&format!("<a>&#{};</a>", "0".repeat(40))),
            nwf("reference too long")
        );
        assert_eq!(body_err("<a\0/>"), nwf("invalid character in tag"));
    }

    #[test]
    fn deep_nesting_rejected() {
        let body = "<a>".repeat(MAX_DEPTH + 1);
        assert_eq!(
            body_err(&body),
            FrameError::Limit("elements nested too deeply")
        );
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        let mut f = Framer::new(LIMIT);
        f.extend(format!("{HDR}{ok}").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
    }

    #[test]
    fn stream_namespace_checks() {
        let ns = |s: &str| err_of(s.as_bytes());
        assert_eq!(
            ns("<stream:stream xmlns:stream='jabber:client'>"),
            FrameError::InvalidNamespace("stream namespace")
        );
        assert_eq!(
            ns("<stream:stream xmlns='http://etherx.jabber.org/streams'>"),
            FrameError::InvalidNamespace("stream namespace")
        );
        assert_eq!(
            ns("<s:stream xmlns:stream='http://etherx.jabber.org/streams'>"),
            FrameError::InvalidNamespace("stream namespace")
        );
        assert_eq!(
            ns("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"),
            FrameError::InvalidNamespace("stream element name")
        );
        assert_eq!(
            ns("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>"),
            nwf("self-closing stream header")
        );
        for cond in [
            "<stream:stream xmlns:stream='jabber:client'>",
            "<stream xmlns='jabber:client'>",
        ] {
            assert_eq!(ns(cond).condition(), Condition::InvalidNamespace);
        }
    }

    fn header_then_end(input: &str, end: &str) {
        let mut f = Framer::new(LIMIT);
        f.extend(input.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(
            f.next_frame(),
            Ok(Some(Frame::Element {
                kind: ElementKind::Presence,
                ..
            }))
        ));
        assert_eq!(
            f.next_frame(),
            Ok(Some(Frame::StreamEnd(Bytes::copy_from_slice(
                end.as_bytes()
            ))))
        );
    }

    #[test]
    fn other_stream_prefixes() {
        header_then_end(
            "<s:stream xmlns:s='http://etherx.jabber.org/streams'><presence/></s:stream>",
            "</s:stream>",
        );
        header_then_end(
            "<stream xmlns='http://etherx.jabber.org/streams'><presence/></stream >",
            "</stream >",
        );
        header_then_end(
            "<stream:stream xmlns:stream=\"http&#x3a;//etherx.jabber.org/streams\">\
<presence/></stream:stream>",
            "</stream:stream>",
        );
    }

    #[test]
    fn kinds_by_local_name() {
        let mut f = Framer::new(LIMIT);
        f.extend(
            format!(
                "{HDR}<x:presence xmlns:x='jabber:client'/><y:message xmlns:y='urn:evil'></y:message>\
<iq/><stream:error/><iqx/>"
            )
            .as_bytes(),
        );
        let mut out = Vec::new();
        drain(&mut f, &mut out);
        let kinds: Vec<ElementKind> = out
            .iter()
            .filter_map(|f| match f {
                Frame::Element { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect();
        use ElementKind::*;
        assert_eq!(kinds, [Presence, Message, Iq, Other, Other]);
    }

    #[test]
    fn oversize_element_in_one_byte_chunks() {
        let limit = 1024;
        let mut f = Framer::new(limit);
        f.extend(HDR.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        let big = format!("<message><body>{}</body></message>", "x".repeat(4000));
        let mut err = None;
        for b in big.as_bytes() {
            f.extend(std::slice::from_ref(b));
            match f.next_frame() {
                Ok(None) => {}
                Ok(Some(fr)) => panic!("unexpected frame {fr:?}"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
            assert!(f.buffered() <= limit + 1);
        }
        assert_eq!(err, Some(FrameError::TooLarge { limit }));
        assert_eq!(err.map(|e| e.condition()), Some(Condition::PolicyViolation));
    }

    #[test]
    fn oversize_in_one_read_and_exact_fit() {
        let limit = 100;
        let elem = format!("<message>{}</message>", "y".repeat(limit - 19));
        assert_eq!(elem.len(), limit);
        // The header counts too.
        let mut f = Framer::new(HDR.len() - 1);
        f.extend(HDR.as_bytes());
        assert_eq!(
            f.next_frame(),
            Err(FrameError::TooLarge {
                limit: HDR.len() - 1
            })
        );

        let mut f = Framer::new(limit);
        f.extend(b"<stream xmlns='http://etherx.jabber.org/streams'>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        f.extend(elem.as_bytes());
        f.extend(b"<a>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        assert_eq!(f.next_frame(), Ok(None));
        f.extend(format!("{}</a>", "z".repeat(200)).as_bytes());
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit }));
    }

    #[test]
    fn whitespace_bounded() {
        let limit = 64;
        let mut f = Framer::new(limit);
        f.extend(b"<stream xmlns='http://etherx.jabber.org/streams'>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        f.extend(&[b' '; 200]);
        let mut total = 0;
        while let Ok(Some(Frame::Whitespace(w))) = f.next_frame() {
            assert!(w.len() <= limit);
            total += w.len();
        }
        assert_eq!(total, 200);
    }

    #[test]
    fn reset_then_second_header() {
        let mut f = Framer::new(LIMIT);
        f.extend(
            format!(
                "<?xml version='1.0'?>{HDR}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><presence/>"
            )
            .as_bytes(),
        );
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        f.reset();
        match f.next_frame() {
            Ok(Some(Frame::StreamHeader(h))) => assert!(h.starts_with(b"<?xml")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            f.next_frame(),
            Ok(Some(Frame::Element {
                kind: ElementKind::Presence,
                ..
            }))
        ));
        assert_eq!(f.next_frame(), Ok(None));
        // Without a reset, a second header is just an element named stream:stream … that
        // never closes; with a reset mid-buffer the partial element is rescanned as a header.
        f.extend(b"<stream:str");
        assert_eq!(f.next_frame(), Ok(None));
        f.reset();
        f.extend(b"eam xmlns:stream='http://etherx.jabber.org/streams'>");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
    }

    #[test]
    fn take_buffered_returns_rest() {
        let mut f = Framer::new(LIMIT);
        f.extend(format!("{HDR}<proceed/>\x16\x03\x01binary").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        assert_eq!(&f.take_buffered()[..], b"\x16\x03\x01binary");
        assert_eq!(f.buffered(), 0);
        f.reset();
        f.extend(HDR.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
    }

    #[test]
    fn whitespace_after_end_and_errors_display() {
        let mut f = Framer::new(LIMIT);
        f.extend(format!("{HDR}</stream:stream>\n").as_bytes());
        let mut out = Vec::new();
        drain(&mut f, &mut out);
        assert!(matches!(out.last(), Some(Frame::Whitespace(_))));
        assert_eq!(nwf("x").to_string(), "not-well-formed: x",);
        assert_eq!(
            FrameError::TooLarge { limit: 5 }.to_string(),
            "policy-violation: element larger than 5 bytes"
        );
    }

    #[test]
    fn large_stanza_one_byte_chunks_is_linear() {
        // 200 KiB attribute value + 200 KiB text, fed byte by byte.
        let big = format!(
            "<message a='{}'><body>{}</body></message>",
            "v".repeat(200 * 1024),
            "t&amp;".repeat(40 * 1024)
        );
        let mut f = Framer::new(1 << 20);
        f.extend(HDR.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        let start = std::time::Instant::now();
        let mut got = None;
        for b in big.as_bytes() {
            f.extend(std::slice::from_ref(b));
            if let Some(fr) = f.next_frame().expect("ok") {
                got = Some(fr);
            }
        }
        assert!(matches!(got, Some(Frame::Element { raw, .. }) if raw.len() == big.len()));
        // Quadratic rescanning would take minutes here.
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn check_chars_cases() {
        let long = "a".repeat(100);
        for ok in [
            "",
            "abc\t\r\n",
            "café 😀 \u{FFFD} \u{10FFFF} \u{E000}",
            &long,
        ] {
            assert_eq!(check_chars(ok.as_bytes()), Ok(()), "{ok:?}");
            assert_eq!(check_chars(format!("{long}{ok}{long}").as_bytes()), Ok(()));
        }
        let bad: [&[u8]; 10] = [
            b"\0",
            b"\x1f",
            b"\xef\xbf\xbe",
            b"\xef\xbf\xbf",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"\xe2\x82",
            b"\xff",
            b"\x80",
        ];
        for b in bad {
            assert!(check_chars(b).is_err(), "{b:?}");
            let mut padded = long.as_bytes().to_vec();
            padded.extend_from_slice(b);
            padded.extend_from_slice(long.as_bytes());
            assert!(check_chars(&padded).is_err(), "{b:?}");
        }
    }

    #[test]
    fn decode_refs() {
        assert_eq!(decode_ref(b"#x41"), Ok('A'));
        assert_eq!(decode_ref(b"#65"), Ok('A'));
        assert_eq!(
            decode_ref(b"#x110000"),
            Err(nwf("character reference to an illegal character"))
        );
        assert_eq!(
            decode_ref(b"#99999999999999999999"),
            Err(nwf("character reference to an illegal character"))
        );
        assert_eq!(decode_ref(b"#xZ"), Err(nwf("invalid character reference")));
        assert_eq!(decode_ref(b"nbsp"), Err(restricted("entity reference")));
        assert_eq!(unescape_attr(b"a&amp;b\r\nc\td").as_deref(), Ok("a&b c d"));
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    const HEADER: &str =
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    fn first_error(limits: Limits, body: &str) -> Option<FrameError> {
        let mut f = Framer::with_limits(limits);
        f.extend(format!("{HEADER}{body}").as_bytes());
        loop {
            match f.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    }

    const LIMITS: Limits = Limits {
        max_element: 4096,
        max_depth: 4,
        max_attributes: 3,
    };

    #[test]
    fn depth_limit_is_a_policy_violation() {
        assert_eq!(first_error(LIMITS, "<a><b><c><d/></c></b></a>"), None);
        let e = first_error(LIMITS, "<a><b><c><d><e/></d></c></b></a>").unwrap();
        assert_eq!(e, FrameError::Limit("elements nested too deeply"));
        assert_eq!(e.condition(), Condition::PolicyViolation);
    }

    #[test]
    fn attribute_limit_is_per_element() {
        assert_eq!(
            first_error(LIMITS, "<a x='1' y='2' z='3'><b x='1' y='2' z='3'/></a>"),
            None
        );
        let e = first_error(LIMITS, "<a><b w='0' x='1' y='2' z='3'/></a>").unwrap();
        assert_eq!(e, FrameError::Limit("too many attributes in one element"));
    }

    #[test]
    fn limits_survive_a_stream_restart() {
        let mut f = Framer::with_limits(LIMITS);
        f.extend(format!("{HEADER}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Element { .. }))));
        f.reset();
        f.extend(format!("{HEADER}<a><b><c><d><e/></d></c></b></a>").as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamHeader(_)))));
        assert_eq!(
            f.next_frame(),
            Err(FrameError::Limit("elements nested too deeply"))
        );
    }
}
