//! Every NATS subject and JetStream name Herald uses, derived from one prefix.
//!
//! This is the only place subjects are formatted or parsed. The layout:
//!
//! | name | value |
//! |---|---|
//! | channel stream | `<PREFIX>_CHANNELS`, subjects `<prefix>.ch.*.*` |
//! | one channel's durable events | `<prefix>.ch.<app>.<channel-token>` |
//! | live (republished) copy | `<prefix>.live.<app>.<channel-token>` |
//! | ephemeral client events | `<prefix>.eph.<app>.<channel-token>` |

use crate::channel::{AppId, ChannelName};
use crate::error::{Error, ErrorKind};

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "herald";

/// Subject and stream names for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// A layout under `prefix`, which must be `[a-z0-9_-]{1,32}` so that it is
    /// both one subject token and part of a valid stream name.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok {
            return Err(Error::new(
                ErrorKind::InvalidSubject,
                "prefix must be 1-32 characters of lowercase letters, digits, '_' or '-'",
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Name of the stream holding every durable channel event.
    pub fn channels_stream(&self) -> String {
        format!("{}_CHANNELS", self.prefix.to_ascii_uppercase())
    }

    /// Subjects captured by the channel stream.
    pub fn channels_filter(&self) -> String {
        format!("{}.ch.*.*", self.prefix)
    }

    /// The stream subject of one channel.
    pub fn channel(&self, app: &AppId, channel: &ChannelName) -> String {
        format!("{}.ch.{}.{}", self.prefix, app, channel.to_token())
    }

    /// Every stored channel subject of one app (a consumer filter).
    pub fn app_channels_filter(&self, app: &AppId) -> String {
        format!("{}.ch.{}.*", self.prefix, app)
    }

    /// The live subject the stream republishes one channel's events to.
    pub fn live(&self, app: &AppId, channel: &ChannelName) -> String {
        format!("{}.live.{}.{}", self.prefix, app, channel.to_token())
    }

    /// The `RePublish` destination template matching [`Subjects::live`].
    pub fn live_republish_destination(&self) -> String {
        format!(
            "{}.live.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
            self.prefix
        )
    }

    /// Core-NATS subject for ephemeral (never stored) events of a channel.
    pub fn ephemeral(&self, app: &AppId, channel: &ChannelName) -> String {
        format!("{}.eph.{}.{}", self.prefix, app, channel.to_token())
    }

    /// A durable consumer (or other JetStream object) name owned by one
    /// service, e.g. `herald_history`.
    pub fn durable(&self, service: &str) -> String {
        format!("{}_{}", self.prefix, service)
    }

    /// Parse a `ch`, `live` or `eph` subject back into its app and channel.
    pub fn parse_channel_subject(&self, subject: &str) -> Result<(AppId, ChannelName), Error> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidSubject,
                format!("not a channel subject: {subject}"),
            )
        };
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(bad)?;
        let mut parts = rest.split('.');
        let (Some(family), Some(app), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if !matches!(family, "ch" | "live" | "eph") {
            return Err(bad());
        }
        Ok((AppId::parse(app)?, ChannelName::from_token(token)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppId {
        AppId::parse("app-id").unwrap()
    }

    #[test]
    fn subjects_are_derived_from_the_prefix() {
        let s = Subjects::new("t1").unwrap();
        let ch = ChannelName::parse("room.1").unwrap();
        assert_eq!(s.channels_stream(), "T1_CHANNELS");
        assert_eq!(s.channels_filter(), "t1.ch.*.*");
        assert_eq!(s.channel(&app(), &ch), "t1.ch.app-id.room~1");
        assert_eq!(s.live(&app(), &ch), "t1.live.app-id.room~1");
        assert_eq!(
            s.live_republish_destination(),
            "t1.live.{{wildcard(1)}}.{{wildcard(2)}}"
        );
    }

    #[test]
    fn channel_subjects_parse_back_to_app_and_channel() {
        let s = Subjects::default();
        let ch = ChannelName::parse("private-a.b;c").unwrap();
        for subject in [
            s.channel(&app(), &ch),
            s.live(&app(), &ch),
            s.ephemeral(&app(), &ch),
        ] {
            assert_eq!(
                s.parse_channel_subject(&subject).unwrap(),
                (app(), ch.clone())
            );
        }
    }

    #[test]
    fn foreign_subjects_are_rejected() {
        let s = Subjects::default();
        for bad in [
            "other.ch.a.b",
            "herald.ch.a",
            "herald.ch.a.b.c",
            "herald.x.a.b",
            "heraldx.ch.a.b",
        ] {
            assert_eq!(
                s.parse_channel_subject(bad).unwrap_err().kind(),
                ErrorKind::InvalidSubject
            );
        }
    }

    #[test]
    fn prefixes_must_be_one_lowercase_token() {
        assert!(Subjects::new("herald").is_ok());
        for bad in ["", "a.b", "A", "a*", &"x".repeat(33)] {
            assert!(Subjects::new(bad).is_err(), "{bad}");
        }
    }
}
