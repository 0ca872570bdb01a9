//! Byte classes, names, references and the character check: what the scanner and the start-tag
//! grammar look at byte by byte.

use super::error::{FrameError, nwf, restricted};

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
pub(super) fn is_name_start(c: u8) -> bool {
    NAME_START[c as usize]
}

#[inline(always)]
pub(super) fn is_name_char(c: u8) -> bool {
    NAME_CHAR[c as usize]
}

#[inline(always)]
pub(super) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline(always)]
pub(super) fn rest(buf: &[u8], pos: usize) -> &[u8] {
    buf.get(pos..).unwrap_or_default()
}

#[inline(always)]
pub(super) fn skip_ws(buf: &[u8], pos: usize) -> usize {
    pos + rest(buf, pos).iter().take_while(|&&c| is_ws(c)).count()
}

/// Part of a qualified name after the prefix.
pub(crate) fn local_name(qname: &[u8]) -> &[u8] {
    match qname.iter().position(|&c| c == b':') {
        Some(i) => qname.get(i + 1..).unwrap_or_default(),
        None => qname,
    }
}

/// `NCName` or `NCName:NCName` made of name characters (caller guarantees the characters).
pub(super) fn check_qname(name: &[u8]) -> Result<(), FrameError> {
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

pub(super) fn is_xml_char(c: u32) -> bool {
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
        let odd = |w: u64| (w | (w.wrapping_sub(SPACES) & !w)) & HI;
        // Two words per step while both are plain, then the word with the first odd byte.
        while let Some(pair) = b.get(i..).and_then(|r| r.first_chunk::<16>()) {
            let (lo, hi) = pair.split_at(8);
            let lo = u64::from_le_bytes(lo.try_into().unwrap_or_default());
            let hi = u64::from_le_bytes(hi.try_into().unwrap_or_default());
            if odd(lo) | odd(hi) != 0 {
                break;
            }
            i += 16;
        }
        while let Some(word) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
            let o = odd(u64::from_le_bytes(*word));
            if o != 0 {
                i += (o.trailing_zeros() / 8) as usize;
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
