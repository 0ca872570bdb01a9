//! XML stream handling without I/O: [`framer`] finds top-level elements, [`element`] parses the few
//! that the proxy inspects.
pub mod element;
pub mod framer;

pub use element::{Element, Node, StartTag};
pub use framer::{ElementKind, Frame, FrameError, Framer, Limits};
