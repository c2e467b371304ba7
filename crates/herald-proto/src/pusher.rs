//! Pusher Channels protocol 7: its version and error codes, the frames a
//! client sends, and the HMAC-SHA256 signatures of the HTTP API and of
//! channel authorization. (The frames the server sends are
//! [`crate::frame::ServerFrame`].)
//!
//! Clients may send `data` as an object or a string and both are accepted.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::Sha256;
use std::borrow::Cow;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The Pusher protocol version Herald speaks.
pub const PROTOCOL_VERSION: u32 = 7;
/// Oldest protocol version pusher clients in the wild still use that we accept.
pub const MIN_PROTOCOL_VERSION: u32 = 5;

/// Pusher's error and close codes used by Herald.
pub mod codes {
    /// The app key is not known to this cluster.
    pub const APP_NOT_FOUND: u16 = 4001;
    /// The app has reached its connection quota.
    pub const OVER_CONNECTION_QUOTA: u16 = 4004;
    /// The URL path is not `/app/{key}`.
    pub const PATH_NOT_FOUND: u16 = 4005;
    /// The `protocol` query parameter is not a number.
    pub const INVALID_VERSION_FORMAT: u16 = 4006;
    /// The protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No `protocol` query parameter was given.
    pub const NO_PROTOCOL_VERSION: u16 = 4008;
    /// The connection is no longer authorized: `terminate_connections`, a
    /// failed sign-in.
    pub const UNAUTHORIZED: u16 = 4009;
    /// The server is over capacity: try again later (another server).
    pub const OVER_CAPACITY: u16 = 4100;
    /// Generic "reconnect later" error.
    pub const GENERIC_RECONNECT: u16 = 4200;
    /// The client did not answer a ping in time.
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// The client was closed after inactivity.
    pub const CLOSED_AFTER_INACTIVITY: u16 = 4202;
    /// Client event rejected: rate limit exceeded.
    pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;
}

/// A frame as a client sends it: `{"event": ..., "data": ..., "channel": ...}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientFrame {
    /// The event name, e.g. `pusher:subscribe`.
    pub event: String,
    /// The payload: an object for `pusher:*` events, anything for client events.
    #[serde(default)]
    pub data: Value,
    /// The channel, for client events.
    #[serde(default)]
    pub channel: Option<String>,
}

impl ClientFrame {
    /// `data` as an object, accepting both an object and a JSON-encoded string
    /// (some Pusher clients double-encode). An object is borrowed, not copied:
    /// every `herald:publish` reads its fields here.
    pub fn data_object(&self) -> Option<Cow<'_, serde_json::Map<String, Value>>> {
        match &self.data {
            Value::Object(map) => Some(Cow::Borrowed(map)),
            Value::String(s) => serde_json::from_str::<Value>(s).ok().and_then(|v| match v {
                Value::Object(map) => Some(Cow::Owned(map)),
                _ => None,
            }),
            _ => None,
        }
    }
}

/// A client frame read without building a tree of its `data`: the event
/// name, the channel and `data` as raw JSON text, borrowed from the
/// message. The gateway reads `herald:publish` (one per publish, the one
/// frame read at volume) straight from it, as [`PublishFields`]; every
/// other frame becomes a [`ClientFrame`]. It accepts exactly the messages
/// [`ClientFrame`] accepts.
#[derive(Debug, Deserialize)]
pub struct RawClientFrame<'a> {
    /// The event name.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The payload's JSON text; `None` when absent or `null`.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    /// The channel, for client events.
    #[serde(default)]
    pub channel: Option<String>,
}

impl<'a> RawClientFrame<'a> {
    /// Read a message as a frame.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// `data` as the fields of a `herald:publish`, when it is an object
    /// whose fields have the types they should. `None` otherwise (a field
    /// of another type or with an escape, a repeated key, `data` sent as
    /// a string): such a frame is read through [`ClientFrame`], whose
    /// reading says which field is wrong.
    pub fn publish_fields(&self) -> Option<PublishFields<'a>> {
        #[derive(Deserialize)]
        struct Borrowed<'a> {
            #[serde(default)]
            channel: Option<&'a str>,
            #[serde(default)]
            event: Option<&'a str>,
            #[serde(default)]
            data: Option<&'a RawValue>,
            #[serde(default)]
            client_id: Option<&'a str>,
        }
        let fields: Borrowed<'a> = serde_json::from_str(self.data?.get()).ok()?;
        let data = match fields.data {
            None => None,
            Some(raw) => Some(stored_payload(raw.get())?),
        };
        Some(PublishFields {
            channel: fields.channel,
            event: fields.event,
            data,
            client_id: fields.client_id,
        })
    }

    /// The frame with its `data` parsed.
    pub fn into_frame(self) -> Result<ClientFrame, serde_json::Error> {
        Ok(ClientFrame {
            event: self.event.into_owned(),
            data: match self.data {
                Some(raw) => serde_json::from_str(raw.get())?,
                None => Value::Null,
            },
            channel: self.channel,
        })
    }
}

/// The fields of a `herald:publish`'s `data`, however they were read:
/// borrowed from the frame ([`RawClientFrame::publish_fields`]; names and
/// ids only when they hold no escape, which they never normally do), or
/// from `data` parsed as an object ([`PublishFields::from_map`]).
#[derive(Debug, Default)]
pub struct PublishFields<'a> {
    /// The channel to publish on.
    pub channel: Option<&'a str>,
    /// The event name.
    pub event: Option<&'a str>,
    /// The payload as stored: a string as is, any other JSON value as its
    /// compact text; `None` when absent or `null`.
    pub data: Option<Cow<'a, str>>,
    /// The publisher's idempotency key.
    pub client_id: Option<&'a str>,
}

impl<'a> PublishFields<'a> {
    /// From `data` read as a JSON object: a field of another type counts
    /// as absent.
    pub fn from_map(fields: &'a serde_json::Map<String, Value>) -> Self {
        Self {
            channel: fields.get("channel").and_then(Value::as_str),
            event: fields.get("event").and_then(Value::as_str),
            data: match fields.get("data") {
                Some(Value::String(s)) => Some(Cow::Borrowed(s)),
                None | Some(Value::Null) => None,
                Some(other) => Some(Cow::Owned(other.to_string())),
            },
            client_id: fields.get("client_id").and_then(Value::as_str),
        }
    }
}

/// A payload's raw JSON text as [`PublishFields::from_map`] stores it: a
/// string unescaped (borrowed when it holds no escape), anything else as
/// its compact text.
fn stored_payload(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.starts_with('"') {
        let value: Value = serde_json::from_str(raw).ok()?;
        Some(Cow::Owned(value.to_string()))
    } else if raw.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        serde_json::from_str::<&str>(raw).ok().map(Cow::Borrowed)
    }
}

/// Hex MD5 of an HTTP request body, as in Pusher's `body_md5`.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

fn hmac_hex(secret: &str, message: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("hmac accepts any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `X-Pusher-Signature` of a webhook: the hex HMAC-SHA256 of the body
/// with the app secret.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("hmac accepts any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time equality of two strings (length may leak, content does not).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The string an HTTP API request signs: method, path and the query
/// parameters (lower-cased keys, sorted, `auth_signature` left out) joined as
/// `k=v` with `&`, each line separated by `\n`.
pub fn api_string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}\n{}\n{}", method.to_ascii_uppercase(), path, query)
}

/// Sign an HTTP API request the way Pusher's server SDKs do.
pub fn sign_api_request<'a>(
    secret: &str,
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    hmac_hex(secret, &api_string_to_sign(method, path, params))
}

/// The signature part of a channel `auth` string.
pub fn channel_signature(
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    hmac_hex(secret, &message)
}

/// A full channel `auth` string, `key:hex(signature)`, as an app server makes it.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    format!(
        "{key}:{}",
        channel_signature(secret, socket_id, channel, channel_data)
    )
}

/// Check a channel `auth` string in constant time.
pub fn verify_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some((given_key, given_sig)) = auth.split_once(':') else {
        return false;
    };
    let expected = channel_signature(secret, socket_id, channel, channel_data);
    // Evaluate both comparisons so timing does not reveal which one failed.
    let key_ok = constant_time_eq(given_key, key);
    let sig_ok = constant_time_eq(given_sig, &expected);
    key_ok & sig_ok
}

/// The signature of a `pusher:signin` `user_data` string.
pub fn user_signature(secret: &str, socket_id: &str, user_data: &str) -> String {
    hmac_hex(secret, &format!("{socket_id}::user::{user_data}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages a client may send, good and bad.
    const MESSAGES: [&str; 16] = [
        r#"{"event":"pusher:ping","data":{}}"#,
        r#"{"event":"pusher:ping"}"#,
        r#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}"#,
        r#"{"event":"client-x","channel":"private-a","data":{"n":[1,2.5,"\u00e9"]}}"#,
        r#"{"event":"client-x","channel":"private-a","data":"text"}"#,
        r#"{"event":"client-x","channel":"private-a","data":null}"#,
        r#"{"event":"herald:publish","data":{"channel":"private-a","event":"e","data":"d","client_id":"c"}}"#,
        r#"{"data":{"client_id":"c"},"event":"herald:publish"}"#,
        r#"{"event":"herald:publish","data":"{\"channel\":\"private-a\"}"}"#,
        r#"{"event":5}"#,
        r#"{"event":"client-x","channel":5}"#,
        r#"{"data":{}}"#,
        r#"{"event":"e","event":"f"}"#,
        r#"["event"]"#,
        r#"{"event":"e"} trailing"#,
        r#"{"event":"e\n","data":{"a":1},"extra":true}"#,
    ];

    #[test]
    fn a_raw_frame_accepts_what_a_client_frame_accepts_and_reads_the_same() {
        for text in MESSAGES {
            let frame = serde_json::from_str::<ClientFrame>(text);
            let raw = RawClientFrame::parse(text);
            assert_eq!(frame.is_ok(), raw.is_ok(), "for {text}");
            if let (Ok(frame), Ok(raw)) = (frame, raw) {
                let read = raw.into_frame().unwrap();
                assert_eq!(
                    (read.event, read.data, read.channel),
                    (frame.event, frame.data, frame.channel),
                    "for {text}"
                );
            }
        }
    }

    #[test]
    fn publish_fields_are_read_when_they_have_their_types_and_left_to_the_frame_otherwise() {
        let fields = |data: &str| {
            let text = format!(r#"{{"event":"herald:publish","data":{data}}}"#);
            let raw = RawClientFrame::parse(&text).unwrap();
            raw.publish_fields().map(|f| {
                (
                    f.channel.map(str::to_owned),
                    f.event.map(str::to_owned),
                    f.data.map(Cow::into_owned),
                    f.client_id.map(str::to_owned),
                )
            })
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            fields(
                r#"{"channel":"private-a","event":"e","data":"d \"q\" \u00e9","client_id":"c"}"#
            ),
            Some((some("private-a"), some("e"), some("d \"q\" é"), some("c")))
        );
        // Data that is not a string is stored as its compact JSON text.
        assert_eq!(
            fields(r#"{"data":{ "b" : [1, 2] },"extra":1}"#),
            Some((None, None, some(r#"{"b":[1,2]}"#), None))
        );
        assert_eq!(fields(r#"{"data":null}"#), Some((None, None, None, None)));
        assert_eq!(fields(r#"{"data":7}"#), Some((None, None, some("7"), None)));
        // Left to the Value-based reading, which names the bad field.
        for bad in [
            r#"{"channel":5}"#,
            r#"{"client_id":["c"]}"#,
            r#"{"event":"e\u00e9"}"#,
            r#"{"channel":"a","channel":"b"}"#,
            r#""{\"channel\":\"private-a\"}""#,
            r#"[1]"#,
            r#"null"#,
        ] {
            assert_eq!(fields(bad), None, "for {bad}");
        }
    }

    #[test]
    fn api_signatures_match_pushers_documented_example() {
        // The worked example from Pusher's HTTP API reference.
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = body_md5(body.as_bytes());
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let params = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", md5.as_str()),
        ];
        let sig = sign_api_request("7ad3773142a6692b25b8", "POST", "/apps/3/events", params);
        assert_eq!(
            sig,
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn the_string_to_sign_sorts_lowercases_and_drops_the_signature() {
        let s = api_string_to_sign(
            "get",
            "/apps/1/channels",
            [("b", "2"), ("A", "1"), ("auth_signature", "x")],
        );
        assert_eq!(s, "GET\n/apps/1/channels\na=1&b=2");
    }

    #[test]
    fn channel_auth_matches_pushers_documented_example() {
        let auth = channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1234",
            "private-foobar",
            None,
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(verify_channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1234",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!verify_channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1235",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!verify_channel_auth(
            "k",
            "s",
            "1.1",
            "private-x",
            None,
            "no-colon"
        ));
    }

    #[test]
    fn client_frames_accept_object_or_string_data() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"event":"pusher:subscribe","data":{"channel":"a"}}"#).unwrap();
        assert_eq!(f.data_object().unwrap()["channel"], "a");
        let f: ClientFrame =
            serde_json::from_str(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#)
                .unwrap();
        assert_eq!(f.data_object().unwrap()["channel"], "a");
    }
}
