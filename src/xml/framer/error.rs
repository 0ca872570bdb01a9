//! The framer's errors and the RFC 6120 stream error each one ends the stream with.

use std::fmt;

use crate::stream::errors::Condition;

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

pub(super) fn nwf(why: &'static str) -> FrameError {
    FrameError::NotWellFormed(why)
}

pub(super) fn restricted(why: &'static str) -> FrameError {
    FrameError::RestrictedXml(why)
}
