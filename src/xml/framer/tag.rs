//! One start tag on its own, as spans: for the stream root and [`crate::xml::element`]. The
//! grammar is the scanner's ([`super::scan`]), run in its one-tag mode; duplicate attributes
//! are checked here.

use std::ops::Range;

use super::chars::{decode_ref, is_name_start};
use super::error::{FrameError, nwf};
use super::scan::{Done, Scanner};

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
/// values, references) with the framer's own scanner, and rejecting duplicate attribute names.
pub(crate) fn scan_start_tag(raw: &[u8]) -> Result<TagSpans, FrameError> {
    if raw.first() != Some(&b'<') {
        return Err(nwf("expected a start tag"));
    }
    if !raw.get(1).is_some_and(|&c| is_name_start(c)) {
        return Err(nwf("invalid name"));
    }
    let mut sc = Scanner::one_tag();
    match sc.scan(raw)? {
        Some(Done::Element(_)) => {}
        _ => return Err(nwf("unterminated start tag")),
    }
    let (start, end) = sc.root;
    finish_tag(raw, start..end, std::mem::take(&mut sc.spans))
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
