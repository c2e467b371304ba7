//! One error type for the shared crate, with a matchable [`ErrorKind`] so that
//! callers branch on the kind rather than on message text (the nats.rs style).

use std::fmt;

/// What went wrong, in a form callers can `match` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A channel name is empty, too long or has a character Pusher forbids.
    InvalidChannelName,
    /// An app id cannot be used as a subject token.
    InvalidAppId,
    /// A subject does not belong to the layout this prefix describes.
    InvalidSubject,
    /// A user id is empty or too long.
    InvalidUserId,
    /// A socket id is not two integers joined by a dot.
    InvalidSocketId,
    /// An event name is empty or too long.
    InvalidEventName,
    /// An envelope could not be decoded (bad JSON, missing field).
    InvalidEnvelope,
    /// An envelope carries a version this build does not know.
    UnsupportedVersion,
}

/// An error from the shared crate: a kind plus a human-readable message that
/// is safe to show to a client (it never contains secrets or internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The matchable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The client-safe message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
