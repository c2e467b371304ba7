//! The webhook streams: `WEBHOOKS` (every event until it is delivered) and
//! `WEBHOOKS_DEAD` (events given up on, for an operator), created
//! idempotently by whichever producer or dispatcher starts first, and the
//! one way of storing a webhook event.

use crate::StreamError;
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use herald_proto::webhook::{WebhookEvent, EVENT_ID_HEADER};
use herald_proto::{AppId, Subjects};
use std::time::Duration;

/// How long undelivered webhook events are kept: far beyond the retry
/// window, so that a dispatcher down for a day still sends them.
pub const WEBHOOKS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The window in which a producer's retry of the same event id is stored once.
pub const WEBHOOKS_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Create (or bring up to date) both webhook streams.
pub async fn ensure_webhook_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<(), StreamError> {
    let streams = [
        stream::Config {
            name: subjects.webhooks_stream(),
            description: Some("Herald webhook events waiting to be delivered".into()),
            subjects: vec![subjects.webhooks_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: WEBHOOKS_MAX_AGE,
            duplicate_window: WEBHOOKS_DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.webhook_dead_stream(),
            description: Some("Herald webhook events that could not be delivered".into()),
            subjects: vec![subjects.webhook_dead_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: WEBHOOKS_MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for config in streams {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|source| StreamError::Setup { name, source })?;
    }
    Ok(())
}

/// Store one webhook event of `app` (with `Nats-Msg-Id` its id). The
/// returned future resolves once JetStream has stored it: a producer awaits
/// it before recording that the fact was announced.
pub async fn publish_webhook(
    js: &jetstream::Context,
    subjects: &Subjects,
    app: &AppId,
    event: &WebhookEvent,
) -> Result<PublishAckFuture, StreamError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    headers.insert(EVENT_ID_HEADER, event.id.as_str());
    let payload = serde_json::to_vec(event).unwrap_or_default();
    Ok(js
        .publish_with_headers(event.subject(subjects, app), headers, payload.into())
        .await?)
}
