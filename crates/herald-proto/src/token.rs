//! Herald's JWTs as every service sees them: the claims of a session token
//! and of a channel token, what a grant allows, the single-use binding of a
//! session token to one socket, and the channel names of rooms and direct
//! messages that the auth service authorizes.
//!
//! Signing lives in the auth service only; verification (JWKS, pinned
//! EdDSA) in `herald_server::token`. This module is the part both sides and
//! the gateway must agree on byte for byte, so it holds no key material and
//! does no I/O.

use crate::channel::ChannelName;
use crate::subject::Subjects;
use crate::AppId;
use serde::{Deserialize, Serialize};

/// What a Herald JWT is for, in its `kind` claim: a session token is never
/// accepted where a channel token is expected, nor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Issued to a user by the app's backend; opens a connection or
    /// authorizes channels (`/pusher/auth`), and calls the REST APIs.
    Session,
    /// Issued by the auth service for one channel and one socket; shown as
    /// `token` in `pusher:subscribe` instead of the HMAC `auth`.
    Channel,
}

/// The longest a session token may live, seconds (a day): the auth
/// service's configured maximum is capped at this, and single-use bindings
/// are kept this long.
pub const MAX_SESSION_TOKEN_LIFE_SECS: u64 = 86_400;

/// Most grants in one session token.
pub const MAX_GRANTS: usize = 100;

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The user id.
    pub sub: String,
    /// The app id.
    pub app: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Not before, Unix seconds.
    pub nbf: u64,
    /// Unique token id (a UUID): the key of its single-use binding.
    pub jti: String,
    /// Always [`TokenKind::Session`].
    pub kind: TokenKind,
    /// Channel names, or prefixes ending in `*`, the user may be authorized
    /// for (besides the rooms and direct messages they are a member of).
    pub grants: Vec<String>,
}

impl SessionClaims {
    /// Whether one of the token's grants allows `channel`. Room and DM
    /// channels ([`is_membership_channel`]) belong to their members: only a
    /// grant naming one exactly reaches it, never a prefix (`private-*`
    /// would otherwise open every DM of the app).
    pub fn grants_channel(&self, channel: &str) -> bool {
        if is_membership_channel(channel) {
            return self.grants.iter().any(|g| g == channel);
        }
        self.grants.iter().any(|g| grant_allows(g, channel))
    }
}

/// The claims of a channel token: one user, one channel, one socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelClaims {
    /// The user id.
    pub sub: String,
    /// The app id.
    pub app: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Not before, Unix seconds.
    pub nbf: u64,
    /// Unique token id.
    pub jti: String,
    /// Always [`TokenKind::Channel`].
    pub kind: TokenKind,
    /// The one channel this token authorizes.
    pub channel: String,
    /// The one socket it authorizes it for.
    pub socket_id: String,
    /// For presence channels: the member's `user_info`, as `channel_data`
    /// would carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_info: Option<serde_json::Value>,
}

/// Whether `grant` allows `channel`: the grant is the channel's exact name,
/// or a prefix of it followed by `*` (`presence-room-*`). `*` is not a
/// channel-name character, so a grant cannot be mistaken for a name.
pub fn grant_allows(grant: &str, channel: &str) -> bool {
    match grant.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => grant == channel,
    }
}

/// Check one grant's shape: a valid channel name, or a non-empty prefix of
/// one followed by `*`. A bare `*` (every channel, DMs of other users
/// included) is refused: it is far more likely a bug than an intent.
pub fn validate_grant(grant: &str) -> Result<(), crate::Error> {
    let name = grant.strip_suffix('*').unwrap_or(grant);
    ChannelName::parse(name).map(|_| ())
}

/// The bucket of single-use bindings: key = a session token's `jti`
/// ([`binding_key`]), value = the socket it is bound to
/// ([`TokenBinding::encode`]), created with `create` so that two instances
/// racing to bind one token cannot both win.
impl Subjects {
    /// The token-binding KV bucket.
    pub fn token_bindings_bucket(&self) -> String {
        format!("{}_TOKEN_BINDINGS", self.prefix().to_ascii_uppercase())
    }
}

/// The binding key of a token: KV keys allow `[A-Za-z0-9_=.-]`, and a
/// `jti` is whatever the issuer chose, so it is hex-encoded (it is also
/// scoped by app, so two apps' issuers cannot collide).
pub fn binding_key(app: &AppId, jti: &str) -> String {
    format!("{}.{}", app.as_str(), hex::encode(jti.as_bytes()))
}

/// What a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBinding {
    /// The socket the token's first use named.
    pub socket_id: String,
}

impl TokenBinding {
    /// The KV value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Read a KV value; `None` if it is not a binding.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Room ids: 1-64 characters of `[A-Za-z0-9_-]` (the auth service makes
/// them; this is what every service accepts).
pub const MAX_ROOM_ID_LEN: usize = 64;

/// Prefix of a room's channel: `presence-room-<id>`. A presence channel, so
/// that members see who is online and typing without another subscription.
pub const ROOM_CHANNEL_PREFIX: &str = "presence-room-";
/// Prefix of a direct-message channel: `private-dm-<hash>`.
pub const DM_CHANNEL_PREFIX: &str = "private-dm-";

/// The channel of room `room_id`, or `None` for an id that is not a room id.
pub fn room_channel(room_id: &str) -> Option<ChannelName> {
    let valid = !room_id.is_empty()
        && room_id.len() <= MAX_ROOM_ID_LEN
        && room_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return None;
    }
    ChannelName::parse(&format!("{ROOM_CHANNEL_PREFIX}{room_id}")).ok()
}

/// The room id of a room channel.
pub fn room_of_channel(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(ROOM_CHANNEL_PREFIX)
        .filter(|id| room_channel(id).is_some())
}

/// The one direct-message channel of two users of an app, the same
/// whichever of them asks: `private-dm-` and the first 32 hex digits of
/// SHA-256 over the app and the two ids in order. User ids can hold any
/// character and be 128 long, so they cannot be spelled in a channel name.
pub fn dm_channel(app: &AppId, a: &str, b: &str) -> ChannelName {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let digest = crate::envelope::derived_msg_id(&["dm", app.as_str(), first, second]);
    let name = format!("{DM_CHANNEL_PREFIX}{}", &digest[..32]);
    // 43 channel-name characters: always valid.
    ChannelName::parse(&name).unwrap_or_else(|_| unreachable!("dm channel names are valid"))
}

/// Whether a channel is a direct-message channel.
pub fn is_dm_channel(channel: &str) -> bool {
    channel.starts_with(DM_CHANNEL_PREFIX)
}

/// Whether a channel name is reserved for rooms and DMs: the auth service
/// alone decides who belongs to these, from its membership records.
pub fn is_membership_channel(channel: &str) -> bool {
    room_of_channel(channel).is_some() || is_dm_channel(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_grant_allows_only_its_channel() {
        assert!(grant_allows("private-user-42", "private-user-42"));
        assert!(!grant_allows("private-user-42", "private-user-421"));
        assert!(!grant_allows("private-user-42", "private-user-4"));
    }

    #[test]
    fn a_prefix_grant_allows_every_channel_it_starts() {
        assert!(grant_allows("presence-room-*", "presence-room-1"));
        assert!(grant_allows("presence-room-*", "presence-room-"));
        assert!(!grant_allows("presence-room-*", "presence-roo"));
        assert!(grant_allows("*", "private-anything"));
    }

    #[test]
    fn a_prefix_grant_never_reaches_a_room_or_dm_channel_but_an_exact_one_does() {
        let app = AppId::parse("app").unwrap();
        let dm = dm_channel(&app, "a", "b");
        let room = room_channel("r1").unwrap();
        let claims = |grants: &[&str]| SessionClaims {
            sub: "u".into(),
            app: "app".into(),
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "j".into(),
            kind: TokenKind::Session,
            grants: grants.iter().map(|g| g.to_string()).collect(),
        };
        let wide = claims(&["private-*", "presence-*"]);
        assert!(!wide.grants_channel(dm.as_str()));
        assert!(!wide.grants_channel(room.as_str()));
        assert!(wide.grants_channel("private-other"));
        let exact = claims(&[dm.as_str(), room.as_str()]);
        assert!(exact.grants_channel(dm.as_str()));
        assert!(exact.grants_channel(room.as_str()));
    }

    #[test]
    fn grants_are_validated() {
        assert!(validate_grant("private-a").is_ok());
        assert!(validate_grant("private-*").is_ok());
        assert!(validate_grant("*").is_err());
        assert!(validate_grant("bad name").is_err());
        assert!(validate_grant("a*b").is_err());
        assert!(validate_grant("").is_err());
    }

    #[test]
    fn a_dm_channel_is_the_same_for_both_users_and_differs_by_app_and_pair() {
        let app = AppId::parse("app").unwrap();
        let other = AppId::parse("other").unwrap();
        let ab = dm_channel(&app, "alice", "bob");
        assert_eq!(ab, dm_channel(&app, "bob", "alice"));
        assert_ne!(ab, dm_channel(&other, "alice", "bob"));
        assert_ne!(ab, dm_channel(&app, "alice", "carol"));
        // The NUL separators keep ("a", "bc") and ("ab", "c") apart.
        assert_ne!(dm_channel(&app, "a", "bc"), dm_channel(&app, "ab", "c"));
        assert!(ab.as_str().starts_with(DM_CHANNEL_PREFIX));
        assert!(is_dm_channel(ab.as_str()));
        assert_eq!(ab.kind(), crate::ChannelKind::Private);
    }

    #[test]
    fn room_channels_round_trip_and_refuse_bad_ids() {
        let ch = room_channel("r-1_x").unwrap();
        assert_eq!(ch.as_str(), "presence-room-r-1_x");
        assert_eq!(room_of_channel(ch.as_str()), Some("r-1_x"));
        assert_eq!(ch.kind(), crate::ChannelKind::Presence);
        assert!(room_channel("").is_none());
        assert!(room_channel("a.b").is_none());
        assert!(room_channel(&"x".repeat(65)).is_none());
        assert!(room_of_channel("presence-room-").is_none());
        assert!(room_of_channel("presence-other").is_none());
    }

    #[test]
    fn binding_keys_are_valid_kv_keys_scoped_by_app() {
        let app = AppId::parse("app").unwrap();
        let key = binding_key(&app, "weird/jti with spaces*>");
        assert!(key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-=.".contains(c)));
        assert_ne!(
            key,
            binding_key(&AppId::parse("app2").unwrap(), "weird/jti with spaces*>")
        );
    }

    #[test]
    fn a_session_token_is_not_a_channel_token() {
        let session = serde_json::json!({
            "sub": "u", "app": "a", "exp": 2, "iat": 1, "nbf": 1, "jti": "j",
            "kind": "session", "grants": []
        });
        let as_channel: Result<ChannelClaims, _> = serde_json::from_value(session.clone());
        assert!(as_channel.is_err());
        let claims: SessionClaims = serde_json::from_value(session).unwrap();
        assert_eq!(claims.kind, TokenKind::Session);
    }
}
