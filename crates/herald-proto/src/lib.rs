//! Herald's shared contract: the things every service must agree on byte for byte.
//!
//! * [`channel`] — Pusher channel names, their kinds and the reversible mapping
//!   to a NATS subject token.
//! * [`subject`] — every NATS subject and stream name Herald uses, derived from
//!   one configurable prefix. No other crate formats a subject by hand.
//! * [`envelope`] — the versioned event envelope stored in JetStream.
//! * [`frame`] — every frame the gateway sends, and the one serializer.
//! * [`pusher`] — Pusher protocol 7 client frames, codes, and the HMAC signatures of the
//!   Pusher HTTP API and channel authorization.
//! * [`id`] — user ids, socket ids and event names, each validated once.
//! * [`token`] — session and channel token claims, grants, single-use
//!   bindings, and the channel names of rooms and direct messages.
//! * [`webhook`] — webhook events, body, headers, streams and subjects.
//! * [`error`] — matchable error kinds shared by all of the above.

pub mod channel;
pub mod control;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod id;
pub mod presence;
pub mod pusher;
pub mod subject;
pub mod token;
pub mod webhook;

pub use channel::{AppId, ChannelKind, ChannelName};
pub use envelope::{Envelope, EventKind};
pub use error::{Error, ErrorKind};
pub use frame::{ServerFrame, SubscriptionErrorKind};
pub use id::{EventName, SocketId, UserId, MAX_USER_ID_LEN, USER_ID_PATTERN};
pub use subject::{ControlVerb, NumberedReplies, Subjects};

/// `value` as JSON in a buffer of `capacity` bytes: serde_json's own
/// `to_vec` starts at 128 bytes and grows, which costs envelopes and frames
/// (a few hundred bytes each, one per publish) two reallocations.
pub(crate) fn json_vec<T: serde::Serialize + ?Sized>(value: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    // Writing Herald's own types (strings, integers, maps with string keys)
    // into a Vec cannot fail.
    if serde_json::to_writer(&mut out, value).is_err() {
        out.clear();
    }
    out
}

/// [`json_vec`] as a `String`.
pub(crate) fn json_string<T: serde::Serialize + ?Sized>(value: &T, capacity: usize) -> String {
    // serde_json writes UTF-8 only; the check is one pass over ASCII.
    String::from_utf8(json_vec(value, capacity)).unwrap_or_default()
}

/// Milliseconds since the Unix epoch, the unit of every Herald timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
