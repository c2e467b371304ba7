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
//! | presence buckets, keys and subjects | in [`crate::presence`] |
//! | numbered replies to one inbox | `<inbox>.<n>`, subscribed as `<inbox>.*` ([`NumberedReplies`]) |

use crate::channel::{AppId, ChannelName};
use crate::error::{Error, ErrorKind};

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "herald";

/// Control-plane requests every gateway answers for the users and channels
/// it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlVerb {
    /// Close every connection of a user.
    Terminate,
    /// Subscribe or unsubscribe a user's connections to channels.
    Subscriptions,
    /// Report local channel occupancy.
    Occupancy,
}

impl ControlVerb {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlVerb::Terminate => "terminate",
            ControlVerb::Subscriptions => "subscriptions",
            ControlVerb::Occupancy => "occupancy",
        }
    }
}

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
        self.channel_subject("ch", app, channel)
    }

    /// Every stored channel subject of one app (a consumer filter).
    pub fn app_channels_filter(&self, app: &AppId) -> String {
        format!("{}.ch.{}.*", self.prefix, app)
    }

    /// The live subject the stream republishes one channel's events to.
    pub fn live(&self, app: &AppId, channel: &ChannelName) -> String {
        self.channel_subject("live", app, channel)
    }

    /// `<prefix>.<kind>.<app>.<channel-token>`, built in one allocation
    /// without the formatting machinery: the stored subject is made for
    /// every publish.
    fn channel_subject(&self, kind: &str, app: &AppId, channel: &ChannelName) -> String {
        let app = app.as_str();
        let mut subject = String::with_capacity(
            self.prefix.len() + kind.len() + app.len() + channel.as_str().len() + 3,
        );
        for part in [self.prefix.as_str(), ".", kind, ".", app, "."] {
            subject.push_str(part);
        }
        channel.push_token_to(&mut subject);
        subject
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

    /// Core-NATS subject for events sent to one user (Pusher's
    /// `#server-to-user-<id>`); the user id is hex-encoded.
    pub fn user_events(&self, app: &AppId, user_id: &str) -> String {
        format!(
            "{}.user.{}.{}",
            self.prefix,
            app,
            hex::encode(user_id.as_bytes())
        )
    }

    /// Every user-event subject (a gateway's single wildcard subscription).
    pub fn user_events_filter(&self) -> String {
        format!("{}.user.*.*", self.prefix)
    }

    /// Parse a [`Subjects::user_events`] subject into app and user id.
    pub fn parse_user_subject(&self, subject: &str) -> Result<(AppId, String), Error> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidSubject,
                format!("not a user subject: {subject}"),
            )
        };
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".user."))
            .ok_or_else(bad)?;
        let (app, user) = rest.split_once('.').ok_or_else(bad)?;
        let user = hex::decode(user)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        Ok((AppId::parse(app)?, user))
    }

    /// Core-NATS control subject of one app, answered by every gateway:
    /// `verb` is one of the [`ControlVerb`] names.
    pub fn control(&self, app: &AppId, verb: ControlVerb) -> String {
        format!("{}.ctl.{}.{}", self.prefix, app, verb.as_str())
    }

    /// Every control subject (a gateway's single wildcard subscription).
    pub fn control_filter(&self) -> String {
        format!("{}.ctl.*.*", self.prefix)
    }

    /// Parse a control subject into its app and verb.
    pub fn parse_control_subject(&self, subject: &str) -> Result<(AppId, ControlVerb), Error> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidSubject,
                format!("not a control subject: {subject}"),
            )
        };
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".ctl."))
            .ok_or_else(bad)?;
        let (app, verb) = rest.split_once('.').ok_or_else(bad)?;
        let verb = match verb {
            "terminate" => ControlVerb::Terminate,
            "subscriptions" => ControlVerb::Subscriptions,
            "occupancy" => ControlVerb::Occupancy,
            _ => return Err(bad()),
        };
        Ok((AppId::parse(app)?, verb))
    }

    /// A durable consumer (or other JetStream object) name owned by one
    /// service, e.g. `herald_history`.
    pub fn durable(&self, service: &str) -> String {
        format!("{}_{}", self.prefix, service)
    }

    /// Every ephemeral subject (the presence service's typing watch).
    pub fn ephemeral_filter(&self) -> String {
        format!("{}.eph.*.*", self.prefix)
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

/// Reply subjects numbered under one inbox, so that one wildcard
/// subscription receives the replies of many requests and the number says
/// whose each is: `<inbox>.<n>` per request, `<inbox>.*` to subscribe.
#[derive(Debug, Clone)]
pub struct NumberedReplies {
    /// `<inbox>.`
    prefix: String,
}

impl NumberedReplies {
    /// Replies under `inbox` (a client's fresh inbox subject).
    pub fn new(inbox: &str) -> Self {
        let mut prefix = String::with_capacity(inbox.len() + 1);
        prefix.push_str(inbox);
        prefix.push('.');
        Self { prefix }
    }

    /// The subject to subscribe to: every numbered reply.
    pub fn wildcard(&self) -> String {
        let mut subject = String::with_capacity(self.prefix.len() + 1);
        subject.push_str(&self.prefix);
        subject.push('*');
        subject
    }

    /// The reply subject of request `n`.
    pub fn reply(&self, n: u64) -> String {
        let mut subject = String::with_capacity(self.prefix.len() + 20);
        subject.push_str(&self.prefix);
        subject.push_str(itoa::Buffer::new().format(n));
        subject
    }

    /// The request number a reply came to, if `subject` is one of these.
    pub fn number(&self, subject: &str) -> Option<u64> {
        let n = subject.strip_prefix(self.prefix.as_str())?;
        // `u64::from_str` takes a leading `+`; a reply subject never has one.
        if n.starts_with('+') {
            return None;
        }
        n.parse().ok()
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
        assert_eq!(s.ephemeral_filter(), "t1.eph.*.*");
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
    fn user_and_control_subjects_round_trip() {
        let s = Subjects::default();
        let subject = s.user_events(&app(), "a.b c@d");
        assert!(!subject["herald.user.app-id.".len()..].contains('.'));
        assert_eq!(
            s.parse_user_subject(&subject).unwrap(),
            (app(), "a.b c@d".to_string())
        );
        for verb in [
            ControlVerb::Terminate,
            ControlVerb::Subscriptions,
            ControlVerb::Occupancy,
        ] {
            assert_eq!(
                s.parse_control_subject(&s.control(&app(), verb)).unwrap(),
                (app(), verb)
            );
        }
        assert!(s.parse_control_subject("herald.ctl.app-id.nope").is_err());
        assert!(s.parse_user_subject("herald.user.app-id.zz").is_err());
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

    #[test]
    fn numbered_replies_round_trip_and_refuse_other_subjects() {
        let r = NumberedReplies::new("_INBOX.abc");
        assert_eq!(r.wildcard(), "_INBOX.abc.*");
        assert_eq!(r.reply(0), "_INBOX.abc.0");
        assert_eq!(r.reply(u64::MAX), format!("_INBOX.abc.{}", u64::MAX));
        for n in [0, 7, u64::MAX] {
            assert_eq!(r.number(&r.reply(n)), Some(n));
        }
        for other in [
            "_INBOX.abc",
            "_INBOX.abc.",
            "_INBOX.abc.x",
            "_INBOX.abd.1",
            "_INBOX.abc.+1",
            "_INBOX.abc.1.2",
        ] {
            assert_eq!(r.number(other), None, "{other}");
        }
    }
}
