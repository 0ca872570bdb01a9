//! Stream negotiation on each leg, and the stream-level rewrites the proxy must make.
//!
//! - [`upstream`]: the connection to the server (plain, STARTTLS negotiated by the proxy, direct TLS);
//! - [`features`]: what is removed from the server's stream features;
//! - [`errors`]: RFC 6120 stream errors and the proxy's own stream headers.

pub mod errors;
pub mod features;
pub mod sasl;
pub mod sm;
pub mod upstream;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::xml::{Frame, FrameError, Framer, StartTag};

/// What the proxy needs from a stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    /// The default namespace (`jabber:client` on a c2s stream).
    pub default_ns: Option<String>,
    /// Prefix bindings declared on the header (`stream` → the streams namespace, …), which the
    /// top-level elements of the stream inherit.
    pub prefixes: Vec<(String, String)>,
}

impl StreamHeader {
    pub fn parse(raw: &[u8]) -> Result<StreamHeader, FrameError> {
        let tag = StartTag::parse(skip_declaration(raw))?;
        let get = |k: &str| tag.attr(k).map(str::to_owned);
        let prefixes = tag
            .attrs
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("xmlns:").map(|p| (p.to_owned(), v.clone())))
            .collect();
        Ok(StreamHeader {
            to: get("to"),
            from: get("from"),
            default_ns: get("xmlns"),
            prefixes,
        })
    }

    /// A c2s stream: default namespace `jabber:client`.
    pub fn check_client_namespace(&self) -> Result<(), FrameError> {
        match self.default_ns.as_deref() {
            Some(crate::ns::CLIENT) => Ok(()),
            _ => Err(FrameError::InvalidNamespace(
                "the stream's default namespace must be jabber:client",
            )),
        }
    }

    pub fn prefix_refs(&self) -> Vec<(&str, &str)> {
        self.prefixes
            .iter()
            .map(|(p, n)| (p.as_str(), n.as_str()))
            .collect()
    }
}

/// The stream root's start tag, without the XML declaration and white space before it.
fn skip_declaration(raw: &[u8]) -> &[u8] {
    let mut rest = raw.trim_ascii_start();
    if rest.starts_with(b"<?")
        && let Some(end) = rest.windows(2).position(|w| w == b"?>")
    {
        rest = rest[end + 2..].trim_ascii_start();
    }
    rest
}

/// Why reading a frame stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection (or it broke) before a complete frame.
    Closed,
    /// The bytes are not an acceptable XMPP stream.
    Frame(FrameError),
}

/// Reads until the framer yields one frame (pre-relay negotiation only; the relay reads in its loop).
pub async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    framer: &mut Framer,
) -> Result<Frame, ReadError> {
    loop {
        match framer.next_frame() {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Frame(e)),
        }
        let buf = framer.buffer_mut();
        buf.reserve(4096);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

/// Like [`read_frame`], skipping white space between top-level elements.
pub async fn read_element<S: AsyncRead + Unpin>(
    io: &mut S,
    framer: &mut Framer,
) -> Result<Frame, ReadError> {
    loop {
        match read_frame(io, framer).await? {
            Frame::Whitespace(_) => continue,
            frame => return Ok(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_with_declaration() {
        let h = StreamHeader::parse(
            b"<?xml version='1.0'?>\n<stream:stream to='example.org' xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        )
        .unwrap();
        assert_eq!(h.to.as_deref(), Some("example.org"));
        assert!(h.check_client_namespace().is_ok());
        assert_eq!(
            h.prefixes,
            vec![("stream".to_owned(), crate::ns::STREAMS.to_owned())]
        );
    }

    #[test]
    fn wrong_default_namespace() {
        let h = StreamHeader::parse(
            b"<stream:stream to='x' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .unwrap();
        assert_eq!(
            h.check_client_namespace().unwrap_err().condition(),
            errors::Condition::InvalidNamespace
        );
    }
}
