//! Apps, their credentials and their per-app limits.

use herald_proto::webhook::WebhookKind;
use herald_proto::AppId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A configuration problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is missing or malformed; the message says which.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Per-app limits, each with Pusher's default.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AppLimits {
    /// Largest event payload (`data`), and largest WebSocket frame, in bytes.
    pub max_message_bytes: usize,
    /// Most simultaneous connections for the app on one gateway (0 = no limit).
    pub max_connections: usize,
    /// Most channels one connection may subscribe to.
    pub max_channels_per_connection: usize,
    /// Longest channel name, in bytes (at most Pusher's 164).
    pub max_channel_name_len: usize,
    /// Most channels in one HTTP API publish.
    pub max_event_channels: usize,
    /// Most events in one batch publish.
    pub max_batch_events: usize,
    /// Most distinct users in one presence channel.
    pub max_presence_members: usize,
    /// Whether clients may send `client-*` events.
    pub enable_client_messages: bool,
    /// Most client events one connection may send per second.
    pub client_events_per_second: u32,
    /// Whether clients may store events with `herald:publish` (and send
    /// receipts) on private and presence channels they are subscribed to.
    pub enable_client_publish: bool,
    /// Most `herald:publish` and receipt frames one connection may send per
    /// second.
    pub client_publishes_per_second: u32,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 10 * 1024,
            max_connections: 0,
            max_channels_per_connection: 100,
            max_channel_name_len: herald_proto::channel::MAX_CHANNEL_NAME_LEN,
            max_event_channels: 100,
            max_batch_events: 10,
            max_presence_members: 100,
            enable_client_messages: false,
            client_events_per_second: 10,
            enable_client_publish: false,
            client_publishes_per_second: 50,
        }
    }
}

/// Which channels a webhook is about (both conditions when both are set).
/// User events (`user_online` / `user_offline`) have no channel and pass.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookFilter {
    /// Only channels whose name starts with this.
    #[serde(default)]
    pub channel_name_starts_with: Option<String>,
    /// Only channels whose name ends with this.
    #[serde(default)]
    pub channel_name_ends_with: Option<String>,
}

/// One webhook target of an app (`"webhooks": [...]` in `HERALD_APPS`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where the events are POSTed: `http://` or `https://`, with a host.
    pub url: String,
    /// The event types sent there (`channel_occupied`, …; see
    /// `herald_proto::webhook::WebhookKind`).
    pub event_types: Vec<WebhookKind>,
    /// Which channels' events (all when absent).
    #[serde(default)]
    pub filter: WebhookFilter,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl WebhookConfig {
    /// Whether an event of `kind` about `channel` goes to this target.
    pub fn wants(&self, kind: WebhookKind, channel: Option<&str>) -> bool {
        if !self.event_types.contains(&kind) {
            return false;
        }
        let Some(channel) = channel else {
            return true;
        };
        let filter = &self.filter;
        filter
            .channel_name_starts_with
            .as_deref()
            .is_none_or(|p| channel.starts_with(p))
            && filter
                .channel_name_ends_with
                .as_deref()
                .is_none_or(|p| channel.ends_with(p))
    }

    /// Why this target cannot be used, if it cannot.
    fn problem(&self) -> Option<String> {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Some(format!("url {:?} has no scheme", self.url));
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Some(format!("url {:?} is not http(s)", self.url));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || authority.contains('@') || host.contains(char::is_whitespace) {
            return Some(format!(
                "url {:?} needs a host (and no user info)",
                self.url
            ));
        }
        if self.event_types.is_empty() {
            return Some(format!("webhook {:?} has no event_types", self.url));
        }
        for (name, value) in &self.headers {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token || value.contains(['\r', '\n']) {
                return Some(format!("webhook {:?}: bad header {name:?}", self.url));
            }
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("x-pusher-") || lower == "content-type" || lower == "host" {
                return Some(format!(
                    "webhook {:?}: header {name:?} is set by Herald",
                    self.url
                ));
            }
        }
        None
    }
}

/// One app: its credentials and limits.
#[derive(Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// The app id (a subject token).
    pub id: AppId,
    /// The public key clients connect with.
    pub key: String,
    /// The shared secret; never logged (see the `Debug` impl).
    pub secret: String,
    /// Per-app limits.
    pub limits: AppLimits,
    /// The origins (`scheme://host[:port]`) whose pages may open WebSocket
    /// connections with this app's key; `*.` before a host also allows its
    /// subdomains, and an entry `*` allows any. Empty (the default): any
    /// origin. Checked against the `Origin` header browsers send; a client
    /// that sends none is not a browser page and is not checked.
    pub allowed_origins: Vec<String>,
    /// Where the app's webhooks go (none by default).
    pub webhooks: Vec<WebhookConfig>,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("limits", &self.limits)
            .field("allowed_origins", &self.allowed_origins)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

impl AppConfig {
    /// An app with default limits.
    ///
    /// # Panics
    /// If `id` is not a valid app id; use [`AppRegistry::parse_list`] for
    /// untrusted input.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: AppId::parse(id).expect("valid app id"),
            key: key.to_owned(),
            secret: secret.to_owned(),
            limits: AppLimits::default(),
            allowed_origins: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// Whether any webhook of the app wants an event of `kind` about
    /// `channel`: producers store only such events.
    pub fn wants_webhook(&self, kind: WebhookKind, channel: Option<&str>) -> bool {
        self.webhooks.iter().any(|w| w.wants(kind, channel))
    }

    /// Whether a page of `origin` (an `Origin` header) may connect.
    pub fn allows_origin(&self, origin: &str) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.allowed_origins.iter().any(|allowed| {
            let allowed = allowed.trim_end_matches('/').to_ascii_lowercase();
            if allowed == "*" || allowed == origin {
                return true;
            }
            // `https://*.example.com` matches `https://a.example.com`
            // (and deeper), not `https://example.com`.
            match (allowed.split_once("://*."), origin.split_once("://")) {
                (Some((scheme, domain)), Some((o_scheme, o_host))) => {
                    scheme == o_scheme
                        && o_host
                            .strip_suffix(domain)
                            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
                }
                _ => false,
            }
        })
    }

    /// The development app of `HERALD_DEV` (`app-id`, `app-key`,
    /// `app-secret`). Unlike a production app it has client events on:
    /// typing indicators and every chat app a newcomer tries rely on them.
    pub fn development() -> Self {
        let mut app = Self::new(DEV_APP_ID, DEV_APP_KEY, DEV_APP_SECRET);
        app.limits.enable_client_messages = true;
        app.limits.enable_client_publish = true;
        app
    }
}

/// Id of the development app.
pub const DEV_APP_ID: &str = "app-id";
/// Key of the development app.
pub const DEV_APP_KEY: &str = "app-key";
/// Secret of the development app (public knowledge: development only).
pub const DEV_APP_SECRET: &str = "app-secret";

#[derive(Deserialize)]
struct RawApp {
    id: String,
    key: String,
    secret: String,
    #[serde(flatten)]
    limits: AppLimits,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    webhooks: Vec<WebhookConfig>,
}

/// Whether an `allowed_origins` entry is `*` or `scheme://host[:port]`
/// (host possibly `*.domain`), with nothing after it.
fn is_valid_origin_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some((scheme, host)) = pattern.trim_end_matches('/').split_once("://") else {
        return false;
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !host.is_empty()
        && !host.contains(['/', '*', '?', '#', '@'])
}

/// All configured apps, indexed by id and by key.
#[derive(Debug, Clone)]
pub struct AppRegistry {
    by_id: Arc<HashMap<String, Arc<AppConfig>>>,
    by_key: Arc<HashMap<String, Arc<AppConfig>>>,
}

impl AppRegistry {
    /// Index `apps`, refusing duplicate ids or keys and empty credentials.
    pub fn new(apps: Vec<AppConfig>) -> Result<Self, ConfigError> {
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        for app in apps {
            if app.key.is_empty() || app.secret.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "app {} has an empty key or secret",
                    app.id
                )));
            }
            if app.limits.max_channel_name_len > herald_proto::channel::MAX_CHANNEL_NAME_LEN {
                return Err(ConfigError::Invalid(format!(
                    "app {}: max_channel_name_len cannot exceed {}",
                    app.id,
                    herald_proto::channel::MAX_CHANNEL_NAME_LEN
                )));
            }
            if let Some(bad) = app
                .allowed_origins
                .iter()
                .find(|o| !is_valid_origin_pattern(o))
            {
                return Err(ConfigError::Invalid(format!(
                    "app {}: allowed_origins entry {bad:?} is not `*` or scheme://host[:port]",
                    app.id
                )));
            }
            if let Some(problem) = app.webhooks.iter().find_map(WebhookConfig::problem) {
                return Err(ConfigError::Invalid(format!("app {}: {problem}", app.id)));
            }
            let app = Arc::new(app);
            if by_id.insert(app.id.to_string(), app.clone()).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "app id {} is configured twice",
                    app.id
                )));
            }
            if by_key.insert(app.key.clone(), app.clone()).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "app key {} is configured twice",
                    app.key
                )));
            }
        }
        Ok(Self {
            by_id: Arc::new(by_id),
            by_key: Arc::new(by_key),
        })
    }

    /// A registry of one app (handy in tests).
    pub fn single(app: AppConfig) -> Self {
        Self::new(vec![app]).expect("one app is always a valid registry")
    }

    /// Parse a JSON list of apps.
    pub fn parse_list(json: &str) -> Result<Vec<AppConfig>, ConfigError> {
        let raw: Vec<RawApp> = serde_json::from_str(json)
            .map_err(|e| ConfigError::Invalid(format!("apps list: {e}")))?;
        raw.into_iter()
            .map(|r| {
                let id = AppId::parse(&r.id)
                    .map_err(|e| ConfigError::Invalid(format!("app {:?}: {e}", r.id)))?;
                Ok(AppConfig {
                    id,
                    key: r.key,
                    secret: r.secret,
                    limits: r.limits,
                    allowed_origins: r.allowed_origins,
                    webhooks: r.webhooks,
                })
            })
            .collect()
    }

    /// Look an app up by id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<AppConfig>> {
        self.by_id.get(id)
    }

    /// Look an app up by key.
    pub fn by_key(&self, key: &str) -> Option<&Arc<AppConfig>> {
        self.by_key.get(key)
    }

    /// Every app.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<AppConfig>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_with(origins: &[&str]) -> AppConfig {
        let mut app = AppConfig::new("a", "k", "s");
        app.allowed_origins = origins.iter().map(|o| o.to_string()).collect();
        app
    }

    #[test]
    fn an_app_without_allowed_origins_allows_any() {
        assert!(app_with(&[]).allows_origin("https://anything.example"));
        assert!(app_with(&["*"]).allows_origin("null"));
    }

    #[test]
    fn allowed_origins_match_scheme_host_and_port_and_wildcard_subdomains() {
        let app = app_with(&[
            "https://chat.example.com",
            "https://*.example.org",
            "http://localhost:3000",
        ]);
        assert!(app.allows_origin("https://chat.example.com"));
        assert!(app.allows_origin("HTTPS://Chat.Example.com"));
        assert!(
            !app.allows_origin("http://chat.example.com"),
            "another scheme"
        );
        assert!(!app.allows_origin("https://chat.example.com.evil.io"));
        assert!(!app.allows_origin("https://evilchat.example.com"));
        assert!(app.allows_origin("https://a.example.org"));
        assert!(app.allows_origin("https://a.b.example.org"));
        assert!(
            !app.allows_origin("https://example.org"),
            "a wildcard needs a subdomain"
        );
        assert!(!app.allows_origin("https://badexample.org"));
        assert!(app.allows_origin("http://localhost:3000"));
        assert!(!app.allows_origin("http://localhost:3001"));
    }

    #[test]
    fn allowed_origins_are_read_from_the_apps_list_and_checked() {
        let apps = AppRegistry::parse_list(
            r#"[{"id":"a","key":"k","secret":"s","allowed_origins":["https://x.example"]}]"#,
        )
        .unwrap();
        assert_eq!(apps[0].allowed_origins, ["https://x.example"]);
        assert!(AppRegistry::new(apps).is_ok());
        for bad in ["x.example", "https://x.example/path", "https://*"] {
            let err = AppRegistry::new(vec![app_with(&[bad])]).unwrap_err();
            assert!(err.to_string().contains("allowed_origins"), "{bad}: {err}");
        }
    }

    #[test]
    fn webhooks_are_read_filtered_and_validated() {
        let apps = AppRegistry::parse_list(
            r#"[{"id":"a","key":"k","secret":"s","webhooks":[{"url":"http://127.0.0.1:9/h",
                "event_types":["channel_occupied","member_added"],
                "filter":{"channel_name_starts_with":"presence-","channel_name_ends_with":"-x"},
                "headers":{"X-Token":"t"}}]}]"#,
        )
        .unwrap();
        let hook = &apps[0].webhooks[0];
        assert!(hook.wants(WebhookKind::MemberAdded, Some("presence-a-x")));
        assert!(!hook.wants(WebhookKind::MemberAdded, Some("presence-a")));
        assert!(!hook.wants(WebhookKind::MemberAdded, Some("private-a-x")));
        assert!(!hook.wants(WebhookKind::ChannelVacated, Some("presence-a-x")));
        assert!(apps[0].wants_webhook(WebhookKind::ChannelOccupied, Some("presence--x")));
        assert!(AppRegistry::new(apps).is_ok());
        let bad = [
            r#"{"url":"ftp://h/x","event_types":["cache_miss"]}"#,
            r#"{"url":"http:///x","event_types":["cache_miss"]}"#,
            r#"{"url":"http://u@h/x","event_types":["cache_miss"]}"#,
            r#"{"url":"http://h/x","event_types":[]}"#,
            r#"{"url":"http://h/x","event_types":["cache_miss"],"headers":{"X-Pusher-Key":"k"}}"#,
            r#"{"url":"http://h/x","event_types":["cache_miss"],"headers":{"a b":"k"}}"#,
        ];
        for hook in bad {
            let json = format!(r#"[{{"id":"a","key":"k","secret":"s","webhooks":[{hook}]}}]"#);
            let parsed = AppRegistry::parse_list(&json).unwrap();
            assert!(AppRegistry::new(parsed).is_err(), "{hook}");
        }
        let unknown = r#"[{"id":"a","key":"k","secret":"s","webhooks":[{"url":"http://h","event_types":["nope"]}]}]"#;
        assert!(AppRegistry::parse_list(unknown).is_err());
    }
}
