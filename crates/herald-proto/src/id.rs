//! Domain identifiers, each validated in exactly one place: [`UserId`],
//! [`SocketId`] and [`EventName`]. Parsing one of these is the only way to
//! get it, so code that holds one never re-checks it.

use crate::error::{Error, ErrorKind};
use std::fmt;
use std::sync::Arc;

/// Longest user id Herald accepts, in characters (Pusher documents no
/// limit; this bounds keys, subjects and member lists). Characters, not
/// bytes, so that API documents (JSON Schema `maxLength`) state it exactly.
pub const MAX_USER_ID_LEN: usize = 128;

/// A user id as a regular expression, for API documents (OpenAPI
/// `pattern`, with `minLength` 1 and `maxLength` [`MAX_USER_ID_LEN`]): any
/// text but NUL. [`UserId::parse`] is the rule, this its description.
pub const USER_ID_PATTERN: &str = r"^[^\u0000]+$";

/// Longest event name, in bytes (Pusher's limit).
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// An app's user id: 1 to [`MAX_USER_ID_LEN`] characters of any text but
/// NUL (hex-encoded wherever it becomes part of a key or subject). NUL is
/// refused because user ids are stored in Postgres `TEXT` columns, which
/// cannot hold it: refusing it here, where every service parses ids, turns
/// what would be a database error into a clear client error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Validate a user id.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if raw.is_empty() || raw.chars().count() > MAX_USER_ID_LEN {
            return Err(Error::new(
                ErrorKind::InvalidUserId,
                format!("user id must be 1-{MAX_USER_ID_LEN} characters"),
            ));
        }
        if raw.contains('\0') {
            return Err(Error::new(
                ErrorKind::InvalidUserId,
                "user id must not contain NUL (U+0000)",
            ));
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        UserId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A Pusher socket id: two decimal integers joined by a dot (`123.456`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SocketId(Arc<str>);

impl SocketId {
    /// Validate a socket id given by a client or an API caller.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let ok = raw.len() <= 41
            && raw.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            });
        if !ok {
            return Err(Error::new(
                ErrorKind::InvalidSocketId,
                format!("invalid socket id {raw:?} (expected two integers joined by a dot)"),
            ));
        }
        Ok(Self(Arc::from(raw)))
    }

    /// A new random socket id, as a gateway gives each connection.
    pub fn random() -> Self {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        Self(Arc::from(format!(
            "{}.{}",
            rng.gen_range(1..u32::MAX),
            rng.gen_range(1..u32::MAX)
        )))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for cheap clones into frames and maps.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

/// An event name: 1 to [`MAX_EVENT_NAME_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EventName(String);

impl EventName {
    /// Validate an event name.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if raw.is_empty() || raw.len() > MAX_EVENT_NAME_LEN {
            return Err(Error::new(
                ErrorKind::InvalidEventName,
                format!("event name must be 1-{MAX_EVENT_NAME_LEN} bytes"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Whether this is a client event (`client-*`).
    pub fn is_client_event(&self) -> bool {
        self.0.starts_with("client-")
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    )*};
}
display_as_str!(UserId, SocketId, EventName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_one_to_128_characters_of_any_text() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("ünïcödé 42").is_ok());
        assert!(UserId::parse(&"ü".repeat(MAX_USER_ID_LEN)).is_ok());
        assert!(UserId::parse(&"x".repeat(MAX_USER_ID_LEN)).is_ok());
        for bad in ["".to_owned(), "x".repeat(MAX_USER_ID_LEN + 1)] {
            let err = UserId::parse(&bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUserId);
        }
        let v: Result<UserId, _> = serde_json::from_str("\"\"");
        assert!(v.is_err());
    }

    #[test]
    fn user_ids_refuse_nul_anywhere() {
        for bad in ["\0", "a\0", "\0a", "a\0b"] {
            let err = UserId::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUserId, "{bad:?}");
            assert!(err.to_string().contains("NUL"), "{err}");
        }
        let v: Result<UserId, _> = serde_json::from_str("\"a\\u0000\"");
        assert!(v.is_err());
        // Other control characters are text like any other.
        assert!(UserId::parse("a\u{1}b\tc").is_ok());
        // The documents' pattern says the same.
        let re = regex::Regex::new(USER_ID_PATTERN).unwrap();
        for id in ["alice", "a\u{1}b", "ü"] {
            assert!(re.is_match(id), "{id:?}");
        }
        for id in ["", "\0", "a\0b"] {
            assert!(!re.is_match(id), "{id:?}");
        }
    }

    #[test]
    fn socket_ids_are_two_integers_joined_by_a_dot() {
        assert!(SocketId::parse("123.456").is_ok());
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "1.-2", "1 .2"] {
            assert_eq!(
                SocketId::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidSocketId,
                "{bad:?}"
            );
        }
        let id = SocketId::random();
        assert!(SocketId::parse(id.as_str()).is_ok());
    }

    #[test]
    fn event_names_are_one_to_200_bytes() {
        assert!(EventName::parse("my-event").is_ok());
        assert!(EventName::parse("client-typing").unwrap().is_client_event());
        assert!(!EventName::parse("my-event").unwrap().is_client_event());
        assert!(EventName::parse("").is_err());
        assert!(EventName::parse(&"e".repeat(201)).is_err());
    }
}
