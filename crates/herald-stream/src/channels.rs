//! The `CHANNELS` stream: its configuration, created idempotently by
//! whichever service starts first, and the check that tells when services
//! disagree about it.
//!
//! Gateway and history both bring the stream to the configuration their own
//! [`StreamSettings`] describe, so with different settings whichever starts
//! last wins, silently. [`ensure_channels_stream`] therefore compares the
//! running stream with the wanted configuration first and warns, naming
//! every setting it is about to change.

use crate::{StreamError, StreamSettings};
use async_nats::jetstream::{self, stream};
use herald_proto::Subjects;
use std::fmt;

/// The `CHANNELS` stream configuration described in DESIGN.md: one subject
/// per channel, republished to the live subjects, with a duplicate window.
pub fn channels_stream_config(subjects: &Subjects, settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects.channels_stream(),
        description: Some("Herald durable channel events".into()),
        subjects: vec![subjects.channels_filter()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: settings.max_age,
        max_messages_per_subject: settings.max_msgs_per_channel,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subjects.channels_filter(),
            destination: subjects.live_republish_destination(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// One setting in which a running stream differs from the wanted
/// configuration, with both values as NATS reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDrift {
    /// The setting's name in the NATS stream configuration.
    pub setting: &'static str,
    /// The running stream's value.
    pub running: String,
    /// The value about to be applied.
    pub wanted: String,
}

impl fmt::Display for SettingDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.setting, self.running, self.wanted)
    }
}

/// The settings [`channels_stream_config`] sets in which `running` differs
/// from `wanted`, in a fixed order. Settings Herald leaves to the server's
/// defaults are not compared: the server reports its own values for them.
pub fn config_drift(running: &stream::Config, wanted: &stream::Config) -> Vec<SettingDrift> {
    fn compare<T: PartialEq + fmt::Debug>(
        out: &mut Vec<SettingDrift>,
        setting: &'static str,
        running: &T,
        wanted: &T,
    ) {
        if running != wanted {
            out.push(SettingDrift {
                setting,
                running: format!("{running:?}"),
                wanted: format!("{wanted:?}"),
            });
        }
    }
    let mut out = Vec::new();
    let (r, w) = (running, wanted);
    compare(&mut out, "subjects", &r.subjects, &w.subjects);
    compare(&mut out, "storage", &r.storage, &w.storage);
    compare(&mut out, "retention", &r.retention, &w.retention);
    compare(&mut out, "max_age", &r.max_age, &w.max_age);
    compare(
        &mut out,
        "max_msgs_per_subject",
        &r.max_messages_per_subject,
        &w.max_messages_per_subject,
    );
    compare(
        &mut out,
        "duplicate_window",
        &r.duplicate_window,
        &w.duplicate_window,
    );
    compare(&mut out, "num_replicas", &r.num_replicas, &w.num_replicas);
    compare(&mut out, "allow_direct", &r.allow_direct, &w.allow_direct);
    compare(&mut out, "republish", &r.republish, &w.republish);
    compare(&mut out, "description", &r.description, &w.description);
    out
}

/// Create the channel stream, or bring an existing one to this configuration,
/// warning first about every setting that changes (another service, or an
/// earlier run, set it otherwise).
pub async fn ensure_channels_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &StreamSettings,
) -> Result<(), StreamError> {
    let config = channels_stream_config(subjects, settings);
    let name = config.name.clone();
    // Best effort: a stream that cannot be read here is missing, or the
    // update below reports why.
    if let Ok(running) = js.get_stream(&name).await {
        let drift = config_drift(&running.cached_info().config, &config);
        if !drift.is_empty() {
            let changes: Vec<String> = drift.iter().map(ToString::to_string).collect();
            tracing::warn!(
                stream = %name,
                changes = %changes.join(", "),
                "the running channel stream has other settings than this service's; updating \
                 it (services that share the stream should be given the same HERALD_STREAM_* \
                 and HERALD_DUPLICATE_WINDOW_SECS settings, or the last one to start wins)"
            );
        }
    }
    js.create_or_update_stream(config)
        .await
        .map_err(|source| StreamError::Setup { name, source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_testkit::NatsServer;
    use std::time::Duration;

    fn config(settings: &StreamSettings) -> stream::Config {
        channels_stream_config(&Subjects::new("t").unwrap(), settings)
    }

    #[test]
    fn the_same_settings_do_not_drift() {
        let settings = StreamSettings::default();
        assert!(config_drift(&config(&settings), &config(&settings)).is_empty());
    }

    #[test]
    fn every_changed_setting_is_named_with_both_values() {
        let running = config(&StreamSettings::default());
        let wanted = config(&StreamSettings {
            max_age: Duration::from_secs(60),
            max_msgs_per_channel: 10,
            duplicate_window: Duration::from_secs(30),
            replicas: 3,
        });
        let drift = config_drift(&running, &wanted);
        let names: Vec<&str> = drift.iter().map(|d| d.setting).collect();
        assert_eq!(
            names,
            [
                "max_age",
                "max_msgs_per_subject",
                "duplicate_window",
                "num_replicas"
            ]
        );
        assert_eq!(drift[0].running, "2592000s");
        assert_eq!(drift[0].wanted, "60s");
        assert_eq!(drift[1].to_string(), "max_msgs_per_subject -1 -> 10");
    }

    #[test]
    fn settings_left_to_the_server_are_not_compared() {
        let wanted = config(&StreamSettings::default());
        // What a server reports beside what Herald asked for.
        let running = stream::Config {
            max_messages: -1,
            max_bytes: -1,
            max_message_size: -1,
            ..wanted.clone()
        };
        assert!(config_drift(&running, &wanted).is_empty());
        let moved = stream::Config {
            subjects: vec!["other.ch.*.*".into()],
            republish: None,
            ..wanted.clone()
        };
        let names: Vec<&str> = config_drift(&moved, &wanted)
            .iter()
            .map(|d| d.setting)
            .collect();
        assert_eq!(names, ["subjects", "republish"]);
    }

    #[tokio::test]
    async fn a_running_stream_is_brought_to_the_wanted_settings() {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(nats.client().await.unwrap());
        let subjects = Subjects::new("t").unwrap();
        ensure_channels_stream(&js, &subjects, &StreamSettings::default())
            .await
            .unwrap();
        let wanted = StreamSettings {
            max_age: Duration::from_secs(3600),
            ..StreamSettings::default()
        };
        ensure_channels_stream(&js, &subjects, &wanted)
            .await
            .unwrap();
        let running = js.get_stream(subjects.channels_stream()).await.unwrap();
        let running = &running.cached_info().config;
        assert!(config_drift(running, &channels_stream_config(&subjects, &wanted)).is_empty());
        assert_eq!(running.max_age, Duration::from_secs(3600));
    }
}
