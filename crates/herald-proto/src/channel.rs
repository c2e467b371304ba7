//! Pusher channel names and their mapping onto NATS subject tokens.
//!
//! Pusher allows `[A-Za-z0-9_\-=@,.;]` in a channel name, up to 164 bytes.
//! Of these only `.` is special to NATS (the token separator). The mapping
//! replaces `.` with `~`, a byte Pusher never allows in a name, so it is a
//! bijection between valid channel names and the tokens it produces: it is
//! injective and [`ChannelName::from_token`] reverses it exactly. Property
//! tests below prove both over the whole alphabet.

use crate::error::{Error, ErrorKind};
use std::fmt;

/// Pusher's maximum channel name length, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = 164;
/// Longest app id Herald accepts; it is a subject token, so keep it short.
pub const MAX_APP_ID_LEN: usize = 64;
/// A channel name as a regular expression, for API documents (OpenAPI
/// `pattern`); [`ChannelName::parse`] is the rule, this its description.
pub const CHANNEL_NAME_PATTERN: &str = r"^[A-Za-z0-9_\-=@,.;]+$";
/// A presence channel name as a regular expression.
pub const PRESENCE_CHANNEL_PATTERN: &str = r"^presence-[A-Za-z0-9_\-=@,.;]*$";
/// A channel that has members to manage (private, private-encrypted or
/// presence: what [`ChannelKind::requires_auth`] says) as a regular
/// expression; with `minLength` 8 (`private-`) and `maxLength`
/// [`MAX_CHANNEL_NAME_LEN`].
pub const MEMBER_CHANNEL_PATTERN: &str = r"^(private|presence)-[A-Za-z0-9_\-=@,.;]*$";
/// The shortest name [`MEMBER_CHANNEL_PATTERN`] matches (`private-`).
pub const MIN_MEMBER_CHANNEL_LEN: usize = 8;
/// A session-token grant (`crate::token::validate_grant`) as a regular
/// expression: a channel name, or a name prefix followed by `*`; with
/// `maxLength` [`MAX_GRANT_LEN`].
pub const GRANT_PATTERN: &str = r"^[A-Za-z0-9_\-=@,.;]+\*?$";
/// Longest grant: a channel name of [`MAX_CHANNEL_NAME_LEN`] and the `*`.
pub const MAX_GRANT_LEN: usize = MAX_CHANNEL_NAME_LEN + 1;
/// An app id as a regular expression (see [`AppId::parse`]).
pub const APP_ID_PATTERN: &str = r"^[A-Za-z0-9_-]+$";
/// The byte that stands for `.` inside a subject token.
const DOT_ESCAPE: char = '~';

/// Name prefixes of the channel kinds, defined here and nowhere else.
pub mod prefix {
    /// Private channels.
    pub const PRIVATE: &str = "private-";
    /// Private channels with end-to-end encrypted payloads.
    pub const PRIVATE_ENCRYPTED: &str = "private-encrypted-";
    /// Presence channels.
    pub const PRESENCE: &str = "presence-";
    /// Pusher's per-user channel a signed-in connection subscribes to
    /// (`#server-to-user-<user id>`); not a channel name Pusher's rules allow,
    /// so it is never a [`super::ChannelName`].
    pub const SERVER_TO_USER: &str = "#server-to-user-";
    /// The prefixes of cache channels (one per kind).
    pub const CACHE: [&str; 4] = [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ];
}

/// The user id of Pusher's `#server-to-user-<id>` channel name, if it is one.
pub fn server_to_user(name: &str) -> Option<&str> {
    name.strip_prefix(prefix::SERVER_TO_USER)
}

/// Whether `c` may appear in a Pusher channel name.
pub fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

/// The kinds of Pusher channel, told apart by their name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: subscription needs a signature from the app.
    Private,
    /// `private-encrypted-`: private, and payloads are end-to-end encrypted
    /// by the clients; the server relays them opaquely.
    PrivateEncrypted,
    /// `presence-`: private, plus a member list.
    Presence,
}

impl ChannelKind {
    /// Whether subscribing needs an `auth` signature or a channel token.
    pub fn requires_auth(self) -> bool {
        !matches!(self, ChannelKind::Public)
    }
}

/// A validated Pusher channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    /// Validate `name` against Pusher's rules.
    pub fn parse(name: &str) -> Result<Self, Error> {
        if name.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidChannelName,
                "channel name must not be empty",
            ));
        }
        if name.len() > MAX_CHANNEL_NAME_LEN {
            return Err(Error::new(
                ErrorKind::InvalidChannelName,
                format!(
                    "channel name is {} bytes long; the limit is {MAX_CHANNEL_NAME_LEN}",
                    name.len()
                ),
            ));
        }
        if let Some(bad) = name.chars().find(|c| !is_channel_char(*c)) {
            return Err(Error::new(
                ErrorKind::InvalidChannelName,
                format!("channel name contains {bad:?}; allowed are letters, digits and _-=@,.;"),
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kind of channel, from its prefix.
    pub fn kind(&self) -> ChannelKind {
        if self.0.starts_with(prefix::PRIVATE_ENCRYPTED) {
            ChannelKind::PrivateEncrypted
        } else if self.0.starts_with(prefix::PRIVATE) {
            ChannelKind::Private
        } else if self.0.starts_with(prefix::PRESENCE) {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Whether this is a Pusher cache channel (`cache-`, `private-cache-`,
    /// `private-encrypted-cache-`, `presence-cache-`): a new subscriber gets
    /// the channel's last event, or `pusher:cache_miss`.
    pub fn is_cache(&self) -> bool {
        prefix::CACHE.iter().any(|p| self.0.starts_with(p))
    }

    /// The NATS subject token for this channel (see the module docs).
    pub fn to_token(&self) -> String {
        let mut token = String::with_capacity(self.0.len());
        self.push_token_to(&mut token);
        token
    }

    /// Append [`ChannelName::to_token`] to `out`.
    pub(crate) fn push_token_to(&self, out: &mut String) {
        for (i, part) in self.0.split('.').enumerate() {
            if i > 0 {
                out.push(DOT_ESCAPE);
            }
            out.push_str(part);
        }
    }

    /// Reverse [`ChannelName::to_token`]. Fails on anything `to_token` could
    /// not have produced.
    pub fn from_token(token: &str) -> Result<Self, Error> {
        if token.contains('.') {
            return Err(Error::new(
                ErrorKind::InvalidSubject,
                "a subject token cannot contain '.'",
            ));
        }
        Self::parse(&token.replace(DOT_ESCAPE, "."))
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated app id: usable verbatim as one NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    /// Accept `[A-Za-z0-9_-]{1,64}`: no separator, wildcard or whitespace.
    pub fn parse(id: &str) -> Result<Self, Error> {
        let ok = !id.is_empty()
            && id.len() <= MAX_APP_ID_LEN
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(Error::new(
                ErrorKind::InvalidAppId,
                format!(
                    "app id must be 1-{MAX_APP_ID_LEN} characters of letters, digits, '_' or '-'"
                ),
            ))
        }
    }

    /// The id as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every valid channel name: the whole Pusher alphabet, 1..=164 bytes.
    fn channel_name() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[A-Za-z0-9_\\-=@,.;]{1,164}").unwrap()
    }

    /// A channel name of any kind: a kind's prefix (or none) and the rest
    /// of the alphabet, 0..=164 bytes in all (the empty name included).
    fn any_prefixed_name() -> impl Strategy<Value = String> {
        let prefixes = prop_oneof![
            Just(""),
            Just("private-"),
            Just("private-encrypted-"),
            Just("presence-"),
            Just("privat"),
            Just("presence"),
        ];
        (
            prefixes,
            proptest::string::string_regex("[A-Za-z0-9_\\-=@,.;]{0,40}").unwrap(),
        )
            .prop_map(|(p, rest)| format!("{p}{rest}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The documents' member-channel pattern (with its length bounds)
        /// admits exactly the channels the membership routes accept.
        #[test]
        fn the_member_channel_pattern_is_the_rule(name in any_prefixed_name()) {
            let re = regex::Regex::new(MEMBER_CHANNEL_PATTERN).unwrap();
            let documented = re.is_match(&name)
                && (MIN_MEMBER_CHANNEL_LEN..=MAX_CHANNEL_NAME_LEN).contains(&name.len());
            let accepted = ChannelName::parse(&name).is_ok_and(|c| c.kind().requires_auth());
            prop_assert_eq!(documented, accepted, "{:?}", name);
        }

        /// The documents' grant pattern (with its length bound) admits
        /// exactly the grants a session-token request may carry.
        #[test]
        fn the_grant_pattern_is_the_rule(name in any_prefixed_name(), star in any::<bool>()) {
            let grant = if star { format!("{name}*") } else { name };
            let re = regex::Regex::new(GRANT_PATTERN).unwrap();
            let documented = re.is_match(&grant) && grant.len() <= MAX_GRANT_LEN;
            let accepted = crate::token::validate_grant(&grant).is_ok();
            prop_assert_eq!(documented, accepted, "{:?}", grant);
        }

        #[test]
        fn the_mapping_round_trips_every_valid_name(name in channel_name()) {
            let channel = ChannelName::parse(&name).unwrap();
            let token = channel.to_token();
            prop_assert!(!token.contains('.'));
            prop_assert!(!token.contains('*') && !token.contains('>'));
            prop_assert_eq!(ChannelName::from_token(&token).unwrap(), channel);
        }

        #[test]
        fn two_different_names_never_share_a_token(a in channel_name(), b in channel_name()) {
            prop_assume!(a != b);
            let ta = ChannelName::parse(&a).unwrap().to_token();
            let tb = ChannelName::parse(&b).unwrap().to_token();
            prop_assert_ne!(ta, tb);
        }

        #[test]
        fn names_with_a_forbidden_character_are_rejected(
            prefix in "[a-z]{0,10}",
            bad in "[^A-Za-z0-9_\\-=@,.;]",
        ) {
            let err = ChannelName::parse(&format!("{prefix}{bad}")).unwrap_err();
            prop_assert_eq!(err.kind(), ErrorKind::InvalidChannelName);
        }
    }

    #[test]
    fn dots_and_near_collisions_map_to_distinct_tokens() {
        let a = ChannelName::parse("a.b").unwrap();
        let b = ChannelName::parse("a-b").unwrap();
        let c = ChannelName::parse("a_b").unwrap();
        assert_eq!(a.to_token(), "a~b");
        assert_ne!(a.to_token(), b.to_token());
        assert_ne!(a.to_token(), c.to_token());
    }

    #[test]
    fn empty_and_too_long_names_are_rejected_with_a_clear_message() {
        let empty = ChannelName::parse("").unwrap_err();
        assert_eq!(empty.kind(), ErrorKind::InvalidChannelName);
        assert!(empty.message().contains("empty"));
        let long = ChannelName::parse(&"a".repeat(165)).unwrap_err();
        assert!(long.message().contains("165"));
        assert!(ChannelName::parse(&"a".repeat(164)).is_ok());
    }

    #[test]
    fn tokens_that_no_name_maps_to_are_rejected() {
        assert!(ChannelName::from_token("a.b").is_err());
        assert!(ChannelName::from_token("").is_err());
        assert!(ChannelName::from_token("a*").is_err());
    }

    #[test]
    fn channel_kinds_follow_the_pusher_prefixes() {
        let kind = |n: &str| ChannelName::parse(n).unwrap().kind();
        assert_eq!(kind("chat"), ChannelKind::Public);
        assert_eq!(kind("private-x"), ChannelKind::Private);
        assert_eq!(kind("private-encrypted-x"), ChannelKind::PrivateEncrypted);
        assert_eq!(kind("presence-x"), ChannelKind::Presence);
        assert_eq!(kind("privatex"), ChannelKind::Public);
    }

    #[test]
    fn cache_channels_are_the_four_pusher_cache_prefixes() {
        let cache = |n: &str| ChannelName::parse(n).unwrap().is_cache();
        for yes in [
            "cache-x",
            "private-cache-x",
            "private-encrypted-cache-x",
            "presence-cache-x",
        ] {
            assert!(cache(yes), "{yes}");
        }
        for no in ["x-cache-y", "private-x", "cachex", "presence-x"] {
            assert!(!cache(no), "{no}");
        }
        assert_eq!(
            ChannelName::parse("presence-cache-x").unwrap().kind(),
            ChannelKind::Presence
        );
    }

    #[test]
    fn app_ids_must_be_single_subject_tokens() {
        assert!(AppId::parse("app-id").is_ok());
        assert!(AppId::parse("12345").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert_eq!(
                AppId::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidAppId
            );
        }
    }
}
