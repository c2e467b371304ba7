//! The webhook dispatcher: reads the webhook stream and POSTs each app's
//! events to its webhooks, in Pusher's body, signed with the app's secret.
//!
//! It runs in the active presence instance's term of office (see
//! [`crate::leader`]), beside the engine that produces most of the events:
//! one dispatcher at a time is what keeps each app's events in order, and
//! the lease already decides which instance acts.
//!
//! * **One durable consumer per app** (`<prefix>_webhooks_<app>`, filtered
//!   to the app's subjects), so a failing receiver holds back only its own
//!   app. Every term re-creates it to start right after its ack floor:
//!   what a killed dispatcher had received but not acknowledged is
//!   delivered again at once and in order (not after the ack wait, behind
//!   newer events).
//! * **Batches**: up to `batch_max` events, waiting at most `batch_delay`
//!   for more. A batch goes to every webhook of the app that wants some of
//!   its events (at most `concurrency` requests of an app in flight), and
//!   is acknowledged (`AckPolicy::All`, the last message) only once every
//!   target has answered 2xx or given up. The next batch waits: one batch
//!   at a time per app keeps the order of every channel.
//! * **Retries**: a request that fails (error, timeout, non-2xx, a redirect
//!   to another host, which is never followed) is retried with exponential
//!   backoff and full jitter until `retry_for` has passed since its first
//!   attempt; then its events are dead-lettered (the `WEBHOOKS_DEAD`
//!   stream, with the URL, the error and the original subject as headers),
//!   counted and logged, and the dispatcher moves on.
//! * Delivery is at least once: a receiver de-duplicates by the events'
//!   `id` (also in the `X-Herald-Webhook-Ids` header).

use crate::config::WebhookSettings;
use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use herald_config::{AppConfig, AppRegistry, WebhookConfig};
use herald_proto::webhook::{
    WebhookBody, WebhookEvent, DEAD_ERROR_HEADER, DEAD_SUBJECT_HEADER, DEAD_URL_HEADER,
    EVENT_IDS_HEADER, KEY_HEADER, SIGNATURE_HEADER,
};
use herald_proto::Subjects;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most redirects followed, each to the same scheme, host and port.
const MAX_REDIRECTS: usize = 3;

/// The dispatcher of every app with webhooks.
pub struct Dispatcher {
    js: jetstream::Context,
    subjects: Subjects,
    settings: WebhookSettings,
    http: reqwest::Client,
}

/// How delivering one batch to one target ended.
enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after the retry window; the events were dead-lettered.
    DeadLettered,
    /// The term ended first: nothing may be acknowledged.
    Stopped,
}

/// Refuse, at start-up, webhooks this build cannot send: anything but an
/// `http://` or `https://` URL would only ever fail and be dead-lettered.
pub fn check_targets(apps: &AppRegistry) -> anyhow::Result<()> {
    let sendable = |url: &str| {
        ["http://", "https://"].iter().any(|scheme| {
            url.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        })
    };
    for app in apps.iter() {
        if let Some(hook) = app.webhooks.iter().find(|w| !sendable(&w.url)) {
            anyhow::bail!(
                "app {}: webhook {} is neither an http:// nor an https:// URL",
                app.id,
                hook.url
            );
        }
    }
    Ok(())
}

/// The HTTP client: timeouts, redirects only within the same origin, TLS
/// with the system's certificate authorities and those of
/// `settings.ca_file`.
pub fn http_client(settings: &WebhookSettings) -> anyhow::Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let first = &attempt.previous()[0];
        let url = attempt.url();
        let same_origin = url.scheme() == first.scheme()
            && url.host_str() == first.host_str()
            && url.port_or_known_default() == first.port_or_known_default();
        if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    let mut builder = reqwest::Client::builder()
        .redirect(policy)
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("herald-webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading HERALD_WEBHOOK_CA_FILE {}", path.display()))?;
        let authorities = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("HERALD_WEBHOOK_CA_FILE {}", path.display()))?;
        anyhow::ensure!(
            !authorities.is_empty(),
            "HERALD_WEBHOOK_CA_FILE {} holds no certificate",
            path.display()
        );
        for authority in authorities {
            builder = builder.add_root_certificate(authority);
        }
    }
    Ok(builder.build()?)
}

impl Dispatcher {
    /// A dispatcher on `nats`.
    pub fn new(
        nats: async_nats::Client,
        subjects: Subjects,
        settings: WebhookSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            js: jetstream::new(nats),
            http: http_client(&settings).context("building the webhook HTTP client")?,
            subjects,
            settings,
        })
    }

    /// Deliver every app's webhooks until `token` is cancelled.
    pub async fn run(&self, apps: &AppRegistry, token: CancellationToken) {
        let apps = apps.iter().filter(|a| !a.webhooks.is_empty()).cloned();
        futures::future::join_all(apps.map(|app| self.run_app(app, token.clone()))).await;
    }

    /// One app's loop: (re)start its consumer after any failure.
    async fn run_app(&self, app: Arc<AppConfig>, token: CancellationToken) {
        let permits = Semaphore::new(self.settings.concurrency);
        loop {
            match self.serve_app(&app, &permits, &token).await {
                Ok(()) => return,
                Err(err) => {
                    metrics::counter!("herald_presence_webhook_dispatcher_restarts_total")
                        .increment(1);
                    tracing::warn!(app = %app.id, err = format!("{err:#}"), "webhook dispatcher failed; restarting");
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The app's consumer, created afresh right after its ack floor.
    async fn fresh_consumer(&self, app: &AppConfig) -> anyhow::Result<consumer::PullConsumer> {
        let stream = self
            .js
            .get_stream(self.subjects.webhooks_stream())
            .await
            .context("opening the webhook stream")?;
        let name = self.subjects.webhook_durable(&app.id);
        let deliver_policy = match stream.consumer_info(&name).await {
            Ok(info) => {
                // A consumer that has acknowledged nothing yet reports a
                // floor of 0: then it stands where it was told to start.
                let started = match info.config.deliver_policy {
                    consumer::DeliverPolicy::ByStartSequence { start_sequence } => {
                        start_sequence.saturating_sub(1)
                    }
                    _ => 0,
                };
                let floor = info.ack_floor.stream_sequence.max(started);
                stream
                    .delete_consumer(&name)
                    .await
                    .context("deleting the old webhook consumer")?;
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                }
            }
            Err(_) => consumer::DeliverPolicy::All,
        };
        let config = consumer::pull::Config {
            durable_name: Some(name),
            description: Some(format!("Herald webhooks of app {}", app.id)),
            filter_subject: self.subjects.app_webhooks_filter(&app.id),
            ack_policy: consumer::AckPolicy::All,
            // Longer than a batch can take, so the server never redelivers
            // while it is still being retried.
            ack_wait: self.settings.retry_for
                + self.settings.backoff_max
                + self.settings.timeout * 2
                + Duration::from_secs(30),
            max_ack_pending: (self.settings.batch_max * 4).max(1000) as i64,
            deliver_policy,
            ..Default::default()
        };
        stream
            .create_consumer(config)
            .await
            .context("creating the webhook consumer")
    }

    async fn serve_app(
        &self,
        app: &AppConfig,
        permits: &Semaphore,
        token: &CancellationToken,
    ) -> anyhow::Result<()> {
        let consumer = self.fresh_consumer(app).await?;
        loop {
            let batch = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                batch = self.next_batch(&consumer) => batch?,
            };
            let Some(last) = batch.last() else { continue };
            let events: Vec<(String, WebhookEvent)> = batch
                .iter()
                .filter_map(|msg| match serde_json::from_slice(&msg.payload) {
                    Ok(event) => Some((msg.subject.to_string(), event)),
                    Err(err) => {
                        metrics::counter!("herald_presence_webhook_undecodable_total").increment(1);
                        tracing::error!(%err, subject = %msg.subject, "skipping an undecodable webhook event");
                        None
                    }
                })
                .collect();
            let deliveries = app.webhooks.iter().filter_map(|target| {
                let mine: Vec<&(String, WebhookEvent)> = events
                    .iter()
                    .filter(|(_, e)| target.wants(e.name, e.channel.as_deref()))
                    .collect();
                (!mine.is_empty()).then(|| self.deliver(app, target, mine, permits, token))
            });
            let outcomes = futures::future::join_all(deliveries).await;
            if outcomes.iter().any(|o| matches!(o, Outcome::Stopped)) {
                // Not acknowledged: the next term delivers the batch again.
                return Ok(());
            }
            last.double_ack()
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging a webhook batch: {e}"))?;
        }
    }

    /// The next batch: up to `batch_max` messages, waiting up to `batch_delay`.
    async fn next_batch(
        &self,
        consumer: &consumer::PullConsumer,
    ) -> anyhow::Result<Vec<jetstream::Message>> {
        let mut messages = consumer
            .batch()
            .max_messages(self.settings.batch_max)
            .expires(self.settings.batch_delay)
            .messages()
            .await
            .context("pulling webhook events")?;
        let mut out = Vec::new();
        while let Some(msg) = messages.next().await {
            out.push(msg.map_err(|e| anyhow::anyhow!("reading webhook events: {e}"))?);
        }
        Ok(out)
    }

    /// POST `events` to one target, retrying until delivered or the retry
    /// window has passed (then dead-letter them).
    async fn deliver(
        &self,
        app: &AppConfig,
        target: &WebhookConfig,
        events: Vec<&(String, WebhookEvent)>,
        permits: &Semaphore,
        token: &CancellationToken,
    ) -> Outcome {
        let started = Instant::now();
        let mut backoff = self.settings.backoff;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result = tokio::select! {
                _ = token.cancelled() => return Outcome::Stopped,
                result = async {
                    let _permit = permits.acquire().await;
                    self.post(app, target, &events).await
                } => result,
            };
            let err = match result {
                Ok(()) => {
                    metrics::counter!("herald_presence_webhook_requests_total", "result" => "delivered").increment(1);
                    metrics::counter!("herald_presence_webhook_events_delivered_total")
                        .increment(events.len() as u64);
                    return Outcome::Delivered;
                }
                Err(err) => err,
            };
            metrics::counter!("herald_presence_webhook_requests_total", "result" => "failed")
                .increment(1);
            // Full jitter over the upper half, so failing apps spread out.
            let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
            if started.elapsed() + wait > self.settings.retry_for {
                self.dead_letter(app, target, &events, &err).await;
                return Outcome::DeadLettered;
            }
            tracing::warn!(app = %app.id, url = target.url, attempt, err, wait_ms = wait.as_millis() as u64, "webhook request failed; retrying");
            tokio::select! {
                _ = token.cancelled() => return Outcome::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    /// One signed request; `Err` holds why it failed.
    async fn post(
        &self,
        app: &AppConfig,
        target: &WebhookConfig,
        events: &[&(String, WebhookEvent)],
    ) -> Result<(), String> {
        let body = WebhookBody {
            time_ms: herald_proto::now_ms(),
            events: events.iter().map(|(_, e)| e.clone()).collect(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let ids = events
            .iter()
            .map(|(_, e)| e.id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut request = self.http.post(&target.url);
        for (name, value) in &target.headers {
            request = request.header(name, value);
        }
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(KEY_HEADER, &app.key)
            .header(
                SIGNATURE_HEADER,
                herald_proto::pusher::webhook_signature(&app.secret, &body),
            )
            .header(EVENT_IDS_HEADER, ids)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }

    /// Store undeliverable events in the dead-letter stream (retrying until
    /// stored: they are acknowledged in the webhook stream right after).
    async fn dead_letter(
        &self,
        app: &AppConfig,
        target: &WebhookConfig,
        events: &[&(String, WebhookEvent)],
        err: &str,
    ) {
        metrics::counter!("herald_presence_webhook_events_dead_total")
            .increment(events.len() as u64);
        tracing::error!(app = %app.id, url = target.url, events = events.len(), err, "webhook events could not be delivered in time; dead-lettered");
        for (subject, event) in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(DEAD_URL_HEADER, target.url.as_str());
            headers.insert(DEAD_ERROR_HEADER, err);
            headers.insert(DEAD_SUBJECT_HEADER, subject.as_str());
            let payload = serde_json::to_vec(event).unwrap_or_default();
            for attempt in 1..=10u64 {
                let stored = match self
                    .js
                    .publish_with_headers(
                        self.subjects.webhook_dead(&app.id),
                        headers.clone(),
                        payload.clone().into(),
                    )
                    .await
                {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match stored {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(
                            err = e,
                            attempt,
                            id = event.id,
                            "cannot dead-letter a webhook event"
                        );
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                }
            }
        }
    }
}
