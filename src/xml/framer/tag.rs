//! The start-tag grammar on a complete tag: names, quoting, `<` in values, references, duplicate
//! attributes. Used for the stream root and by [`crate::xml::element`].

use std::ops::Range;

use super::chars::{check_qname, decode_ref, is_name_char, is_name_start, rest, skip_ws};
use super::error::{FrameError, nwf};

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
