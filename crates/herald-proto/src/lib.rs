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

/// Append `s` to `out` as a JSON string literal, quotes included, byte for
/// byte as serde_json writes it.
///
/// Why not serde_json alone: it escapes one byte at a time, and the strings
/// of a publish (ids, channel and event names, the payload) are written
/// twice per acknowledged publish. Most need no escape at all: one pass
/// without an early exit (so the compiler vectorizes it) finds that out and
/// the bytes are copied. A string that does need escaping goes through
/// serde_json, so the output never differs from it.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if is_plain(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Append `s` as the JSON string literal it would be inside JSON that is
/// itself carried as a string (Pusher's `data`): the literal, escaped again,
/// without the outer quotes. `abc` becomes `\"abc\"`.
pub(crate) fn push_json_str_in_str(out: &mut Vec<u8>, s: &str) {
    if is_plain(s) {
        out.reserve(s.len() + 4);
        out.extend_from_slice(br#"\""#);
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(br#"\""#);
    } else {
        let literal = serde_json::to_string(s).unwrap_or_default();
        let escaped = serde_json::to_string(&literal).unwrap_or_default();
        // Between the quotes the second encoding added.
        out.extend_from_slice(&escaped.as_bytes()[1..escaped.len() - 1]);
    }
}

/// Whether JSON needs no escape inside `s`: no quote, backslash or control
/// character (the bytes serde_json escapes; everything else, non-ASCII
/// included, it writes as is).
fn is_plain(s: &str) -> bool {
    !s.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Append an integer as JSON.
pub(crate) fn push_json_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds since the Unix epoch, the unit of every Herald timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings that need no escape, and each kind that does.
    pub(crate) fn awkward_strings() -> Vec<String> {
        let mut strings: Vec<String> = (0u8..=0x7f).map(|b| char::from(b).to_string()).collect();
        strings.extend(
            [
                "",
                "plain text, 0-9 and punctuation !#$%&'()*+,-./:;<=>?@[]^_`{|}~",
                "a \"quoted\" word",
                r"back\slash",
                "line\nbreak\tand tab",
                "\u{7f}delete and \u{1f}unit separator",
                "héllo wörld ✓ 🚀",
                "\u{2028}line separator\u{2029}",
                "{\"json\":[1,2,{\"x\":\"y\\\\z\"}]}",
            ]
            .map(str::to_owned),
        );
        strings.push("x".repeat(1000) + "\"" + &"y".repeat(33));
        strings
    }

    #[test]
    fn a_json_string_is_written_as_serde_json_writes_it() {
        for s in awkward_strings() {
            let mut out = b"prefix".to_vec();
            push_json_str(&mut out, &s);
            let expected = format!("prefix{}", serde_json::to_string(&s).unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "for {s:?}");
        }
    }

    #[test]
    fn a_json_string_inside_a_string_is_the_literal_escaped_again() {
        for s in awkward_strings() {
            let mut out = Vec::new();
            push_json_str_in_str(&mut out, &s);
            let twice = serde_json::to_string(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                twice[1..twice.len() - 1],
                "for {s:?}"
            );
        }
    }
}
