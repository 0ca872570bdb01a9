//! The resumable boundary scanner: finds where the stream header, each top-level element, each
//! whitespace run and the stream close end, checking the XML syntax on the way.

use memchr::{memchr2, memchr3};

use super::MAX_DEPTH;
use super::chars::{check_qname, decode_ref, is_name_char, is_name_start, is_ws, rest, skip_ws};
use super::error::{FrameError, nwf, restricted};
use super::tag::AttrSpan;

/// Longest entity/character reference body (between `&` and `;`) accepted.
const MAX_REF: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Header,
    Body,
    Ended,
    /// One start tag on its own ([`super::tag::scan_start_tag`]): stops after its `>`, with the
    /// spans of its attributes.
    Tag,
}

/// Scanner state; positions are offsets from the start of the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum St {
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

pub(super) enum Done {
    Header(usize),
    Element(usize),
    Whitespace(usize),
    StreamEnd(usize),
}

#[derive(Debug)]
pub(super) struct Scanner {
    pos: usize,
    st: St,
    pub(super) mode: Mode,
    decl_seen: bool,
    closing_stream: bool,
    /// Name spans of the open elements of the current frame.
    stack: Vec<(usize, usize)>,
    /// Name span of the current frame's top-level start tag.
    pub(super) root: (usize, usize),
    /// Qualified name of the stream root, for matching the stream close tag.
    pub(super) stream_qname: Vec<u8>,
    pub(super) max_depth: usize,
    pub(super) max_attributes: usize,
    /// Attributes of the start tag being scanned.
    attributes: usize,
    /// Where the attribute being scanned starts (before its whitespace), its name, the start of
    /// its value; kept as spans in [`Mode::Tag`] only.
    lead: usize,
    attr_name: (usize, usize),
    value_start: usize,
    pub(super) spans: Vec<AttrSpan>,
}

impl Scanner {
    pub(super) fn new() -> Scanner {
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
            lead: 0,
            attr_name: (0, 0),
            value_start: 0,
            spans: Vec::new(),
        }
    }

    /// A scanner for one start tag: `buf` will begin with `<` and a name start character.
    pub(super) fn one_tag() -> Scanner {
        let mut sc = Scanner::new();
        sc.mode = Mode::Tag;
        sc.st = St::Lt;
        sc.pos = 1;
        sc
    }

    /// Forget the partial frame (its bytes were returned or taken away).
    pub(super) fn restart_frame(&mut self) {
        self.pos = 0;
        self.stack.clear();
        self.closing_stream = false;
        self.root = (0, 0);
        self.st = match self.mode {
            Mode::Header => {
                self.decl_seen = false;
                St::HeaderLead
            }
            Mode::Body | Mode::Ended | Mode::Tag => St::FrameStart,
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
    pub(super) fn scan(&mut self, buf: &[u8]) -> Result<Option<Done>, FrameError> {
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
                // A tag right after a tag (`<message><body>`) needs no search.
                St::Content if buf.get(pos) == Some(&b'<') => {
                    pos += 1;
                    st = St::Lt;
                }
                St::Content => match memchr2(b'<', b'&', rest(buf, pos)) {
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
                    // The stream root and a tag on its own have no content to nest.
                    if matches!(self.mode, Mode::Body | Mode::Ended) {
                        if self.stack.len() >= self.max_depth {
                            return Err(FrameError::Limit("elements nested too deeply"));
                        }
                        self.stack.push((start, pos));
                    }
                    self.attributes = 0;
                    st = St::TagBody { ws: false };
                }
                St::TagBody { ws } => {
                    if !ws {
                        self.lead = pos;
                    }
                    let p = skip_ws(buf, pos);
                    let ws = ws || p > pos;
                    pos = p;
                    st = St::TagBody { ws };
                    let Some(&c) = buf.get(pos) else { need_more!() };
                    match c {
                        b'>' => {
                            pos += 1;
                            match self.mode {
                                Mode::Header => return Ok(Some(Done::Header(pos))),
                                // The end of the one tag.
                                Mode::Tag => return Ok(Some(Done::Element(pos))),
                                Mode::Body | Mode::Ended => st = St::Content,
                            }
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
                    self.attr_name = (start, pos);
                    // The usual `name='value'`, straight to the value.
                    if let Some(&[b'=', q @ (b'\'' | b'"')]) = buf.get(pos..pos + 2) {
                        pos += 2;
                        self.value_start = pos;
                        st = St::AttrValue { quote: q };
                        continue;
                    }
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
                    self.value_start = pos;
                    st = St::AttrValue { quote: c };
                }
                St::AttrValue { quote } => match memchr3(quote, b'<', b'&', rest(buf, pos)) {
                    Some(i) => {
                        pos += i;
                        match buf.get(pos) {
                            Some(&b'<') => return Err(nwf("'<' in attribute value")),
                            Some(&b'&') => st = St::Ref { amp: pos, quote },
                            _ => {
                                if self.mode == Mode::Tag {
                                    self.spans.push(AttrSpan {
                                        lead: self.lead,
                                        name: self.attr_name.0..self.attr_name.1,
                                        value: self.value_start..pos,
                                        end: pos + 1,
                                    });
                                }
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
