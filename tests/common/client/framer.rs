//! Splits the byte stream into stream header, top-level elements and stream end (the test
//! client's own, independent of the proxy's framer).

use quick_xml::Reader;
use quick_xml::errors::IllFormedError;
use quick_xml::events::Event;

use super::stanza::attrs_of;

#[derive(Debug)]
pub(super) enum Item {
    /// `<stream:stream …>` with its attributes.
    Open(Vec<(String, String)>),
    /// A complete top-level element.
    Element(String),
    /// `</stream:stream>`.
    Close,
}

#[derive(Default)]
pub(super) struct Framer {
    pub(super) buf: Vec<u8>,
}

impl Framer {
    pub(super) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete item, `Ok(None)` if more input is needed.
    pub(super) fn next(&mut self) -> Result<Option<Item>, String> {
        'outer: loop {
            let ws = self
                .buf
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            self.buf.drain(..ws);
            if self.buf.is_empty() {
                return Ok(None);
            }
            // An end tag at the top level can only be the stream's own
            // (quick-xml rejects it as unmatched, so handle it here).
            if self.buf.starts_with(b"</") {
                let Some(end) = self.buf.iter().position(|&b| b == b'>') else {
                    return Ok(None);
                };
                let tag = String::from_utf8_lossy(&self.buf[2..end])
                    .trim()
                    .to_string();
                if tag.rsplit(':').next() != Some("stream") {
                    return Err(format!("unexpected top-level end tag </{tag}>"));
                }
                self.buf.drain(..=end);
                return Ok(Some(Item::Close));
            }
            let mut r = Reader::from_reader(&self.buf[..]);
            r.config_mut().check_end_names = false;
            let mut depth = 0usize;
            let mut start = 0usize;
            loop {
                let before = r.buffer_position() as usize;
                let ev = match r.read_event() {
                    Ok(ev) => ev,
                    // Input ends inside a tag, comment, CDATA, entity...: wait for more.
                    Err(
                        quick_xml::Error::Syntax(_)
                        | quick_xml::Error::IllFormed(
                            IllFormedError::UnclosedReference | IllFormedError::MissingEndTag(_),
                        ),
                    ) => return Ok(None),
                    Err(e) => {
                        return Err(format!(
                            "XML error at byte {}: {e}; input: {}",
                            r.error_position(),
                            String::from_utf8_lossy(&self.buf)
                        ));
                    }
                };
                let after = r.buffer_position() as usize;
                match ev {
                    Event::Eof => return Ok(None),
                    Event::Start(e) if depth == 0 => {
                        if e.local_name().as_ref() == "stream" {
                            let attrs = attrs_of(&e)?;
                            self.buf.drain(..after);
                            return Ok(Some(Item::Open(attrs)));
                        }
                        depth = 1;
                        start = before;
                    }
                    Event::Start(_) => depth += 1,
                    Event::Empty(_) if depth == 0 => {
                        let raw = String::from_utf8_lossy(&self.buf[before..after]).into_owned();
                        self.buf.drain(..after);
                        return Ok(Some(Item::Element(raw)));
                    }
                    Event::End(_) => {
                        depth -= 1;
                        if depth == 0 {
                            let raw = String::from_utf8_lossy(&self.buf[start..after]).into_owned();
                            self.buf.drain(..after);
                            return Ok(Some(Item::Element(raw)));
                        }
                    }
                    _ if depth == 0 => {
                        // XML declaration, whitespace keepalives, comments, PIs.
                        self.buf.drain(..after);
                        continue 'outer;
                    }
                    _ => {}
                }
            }
        }
    }

    pub(super) fn pending(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// The complete top-level items in a piece of XML written by the test (up to
/// the first incomplete or malformed one).
pub(super) fn top_level_items(xml: &str) -> Vec<Item> {
    let mut f = Framer::default();
    f.push(xml.as_bytes());
    let mut out = Vec::new();
    while let Ok(Some(item)) = f.next() {
        out.push(item);
    }
    out
}

/// Feeds `chunks` one after another to the stream splitter, as the reader
/// task does, and describes what comes out (`open`, `close`, or the raw
/// element); for testing the harness itself.
pub fn frame_chunks(chunks: &[&[u8]]) -> Result<Vec<String>, String> {
    let mut f = Framer::default();
    let mut out = Vec::new();
    for c in chunks {
        f.push(c);
        while let Some(item) = f.next()? {
            out.push(match item {
                Item::Open(_) => "open".to_string(),
                Item::Element(raw) => raw,
                Item::Close => "close".to_string(),
            });
        }
    }
    if !f.buf.is_empty() {
        out.push(format!("pending:{}", f.pending()));
    }
    Ok(out)
}
