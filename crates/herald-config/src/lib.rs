//! Typed configuration shared by the Herald services.
//!
//! Every flag is also read from an environment variable (`HERALD_*`,
//! `NATS_URL`, `DATABASE_URL`), so the same binary is configured the same way
//! from a shell, a systemd unit or a compose file. Services flatten the
//! argument groups here into their own clap `Cli` and turn them into plain
//! config structs that tests can build directly.

mod apps;

pub use apps::{
    AppConfig, AppLimits, AppRegistry, ConfigError, WebhookConfig, WebhookFilter, DEV_APP_ID,
    DEV_APP_KEY, DEV_APP_SECRET,
};

use clap::Args;
use herald_proto::Subjects;

/// Where NATS is and which prefix names Herald's subjects and streams.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every subject, stream and consumer name.
    #[arg(long, env = "HERALD_PREFIX", default_value = herald_proto::subject::DEFAULT_PREFIX)]
    pub prefix: String,
}

impl NatsArgs {
    /// The subject layout for the configured prefix.
    pub fn subjects(&self) -> Result<Subjects, ConfigError> {
        Subjects::new(&self.prefix).map_err(|e| ConfigError::Invalid(format!("HERALD_PREFIX: {e}")))
    }
}

/// Default of [`PresenceTtlArgs`], in seconds.
pub const DEFAULT_PRESENCE_TTL_SECS: u64 = 15;

/// How long a gateway may stay silent before its presence facts (members,
/// signed-in connections) count as gone. Gateways (who stop counting a
/// silent peer in occupancy queries) and the presence service (who removes
/// its members) must agree, so both read this one setting.
#[derive(Debug, Clone, Args)]
pub struct PresenceTtlArgs {
    /// Seconds after which a gateway whose heartbeat is older counts as gone
    /// (the same setting for gateways and the presence service).
    #[arg(long, env = "HERALD_PRESENCE_TTL_SECS", default_value_t = DEFAULT_PRESENCE_TTL_SECS)]
    pub presence_ttl_secs: u64,
}

/// Where a service that verifies Herald tokens (gateway, history,
/// presence) finds the auth service's public keys. Unset: tokens are not
/// accepted (app credentials and Pusher signatures still are).
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The auth service's JWKS URL, e.g. `http://127.0.0.1:6002/.well-known/jwks.json`.
    #[arg(long, env = "HERALD_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
}

/// Where a service's HTTP listener binds.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to bind (use 0.0.0.0 inside a container).
    #[arg(long, env = "HERALD_HOST", default_value = "127.0.0.1")]
    pub host: String,
}

/// The Postgres database holding a service's read models.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://herald:herald@127.0.0.1:5432/herald"
    )]
    pub database_url: String,
    /// Largest number of pooled connections.
    #[arg(long, env = "HERALD_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
}

/// Which apps exist. Either a list (`HERALD_APPS` as JSON, or a JSON file) or
/// one app given by id/key/secret; `--dev` supplies the development app
/// `app-id` / `app-key` / `app-secret` when nothing else is configured.
#[derive(Debug, Clone, Args)]
pub struct AppsArgs {
    /// Development mode: enables the default development app.
    #[arg(long, env = "HERALD_DEV", default_value_t = false)]
    pub dev: bool,
    /// Id of a single app (defaults to `app-id` in development mode).
    #[arg(long, env = "HERALD_APP_ID")]
    pub app_id: Option<String>,
    /// Key of a single app (defaults to `app-key` in development mode).
    #[arg(long, env = "HERALD_APP_KEY")]
    pub app_key: Option<String>,
    /// Secret of a single app (defaults to `app-secret` in development mode).
    #[arg(long, env = "HERALD_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,
    /// A JSON list of apps: `[{"id","key","secret", ...limits}]`.
    #[arg(long, env = "HERALD_APPS", hide_env_values = true)]
    pub apps: Option<String>,
    /// A file holding the same JSON list.
    #[arg(long, env = "HERALD_APPS_FILE")]
    pub apps_file: Option<std::path::PathBuf>,
}

impl AppsArgs {
    /// Build the registry, failing clearly when no app is configured.
    pub fn registry(&self) -> Result<AppRegistry, ConfigError> {
        let mut apps = Vec::new();
        if let Some(json) = &self.apps {
            apps.extend(AppRegistry::parse_list(json)?);
        }
        if let Some(path) = &self.apps_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read {}: {e}", path.display()))
            })?;
            apps.extend(AppRegistry::parse_list(&text)?);
        }
        let single = [&self.app_id, &self.app_key, &self.app_secret];
        let explicit = single.iter().any(|v| v.is_some());
        if self.dev && apps.is_empty() && !explicit {
            apps.push(AppConfig::development());
        } else if explicit {
            let pick = |v: &Option<String>, dev: &str, name: &str| match (v, self.dev) {
                (Some(v), _) => Ok(v.clone()),
                (None, true) => Ok(dev.to_owned()),
                (None, false) => Err(ConfigError::Invalid(format!(
                    "{name} is required with the other app settings"
                ))),
            };
            apps.push(AppConfig::new(
                &pick(&self.app_id, DEV_APP_ID, "HERALD_APP_ID")?,
                &pick(&self.app_key, DEV_APP_KEY, "HERALD_APP_KEY")?,
                &pick(&self.app_secret, DEV_APP_SECRET, "HERALD_APP_SECRET")?,
            ));
        }
        if apps.is_empty() {
            return Err(ConfigError::Invalid(
                "no app configured: set HERALD_APPS, HERALD_APP_ID/KEY/SECRET, or HERALD_DEV=true"
                    .into(),
            ));
        }
        AppRegistry::new(apps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> AppsArgs {
        AppsArgs {
            dev: false,
            app_id: None,
            app_key: None,
            app_secret: None,
            apps: None,
            apps_file: None,
        }
    }

    #[test]
    fn development_mode_provides_the_default_app() {
        let reg = AppsArgs {
            dev: true,
            ..args()
        }
        .registry()
        .unwrap();
        let app = reg.by_key("app-key").unwrap();
        assert_eq!(app.id.as_str(), "app-id");
        assert_eq!(app.secret, "app-secret");
        assert!(
            app.limits.enable_client_messages,
            "the development app has client events on"
        );
    }

    #[test]
    fn an_app_given_by_id_key_and_secret_keeps_pushers_default_of_no_client_events() {
        let reg = AppsArgs {
            app_id: Some("x".into()),
            app_key: Some("k".into()),
            app_secret: Some("s".into()),
            ..args()
        }
        .registry()
        .unwrap();
        assert!(!reg.by_id("x").unwrap().limits.enable_client_messages);
    }

    #[test]
    fn without_any_app_start_up_is_refused() {
        assert!(args().registry().is_err());
    }

    #[test]
    fn a_partial_single_app_outside_dev_mode_is_refused() {
        let err = AppsArgs {
            app_id: Some("x".into()),
            ..args()
        }
        .registry()
        .unwrap_err();
        assert!(err.to_string().contains("HERALD_APP_KEY"));
    }

    #[test]
    fn apps_can_be_given_as_a_json_list() {
        let reg = AppsArgs {
            apps: Some(r#"[{"id":"1","key":"k1","secret":"s1"},{"id":"2","key":"k2","secret":"s2","max_message_bytes":500}]"#.into()),
            ..args()
        }
        .registry()
        .unwrap();
        assert_eq!(reg.by_id("2").unwrap().limits.max_message_bytes, 500);
        assert_eq!(
            reg.by_key("k1").unwrap().limits.max_message_bytes,
            10 * 1024
        );
    }
}
