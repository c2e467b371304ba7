//! The webhook events a gateway produces: `client_event` (with `socket_id`,
//! and `user_id` on presence channels) and `cache_miss`. Each is stored in
//! the webhook stream only when one of the app's webhooks wants it, with a
//! fresh random id, without making the client wait for the store.

use super::connection::Connection;
use herald_proto::webhook::{WebhookEvent, WebhookKind};
use herald_proto::ChannelName;

impl Connection {
    /// Store a `client_event` webhook if the app wants one for `channel`.
    pub(super) fn client_event_webhook(
        &self,
        channel: &ChannelName,
        event: &str,
        data: &serde_json::Value,
        user_id: Option<String>,
    ) {
        if !self
            .app
            .wants_webhook(WebhookKind::ClientEvent, Some(channel.as_str()))
        {
            return;
        }
        let mut hook = WebhookEvent::on_channel(WebhookKind::ClientEvent, new_id(), channel);
        hook.event = Some(event.to_owned());
        // Pusher sends `data` as the string the client sent.
        hook.data = Some(match data {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        hook.socket_id = Some(self.handle.socket_id.to_string());
        hook.user_id = user_id;
        self.store_webhook(hook);
    }

    /// Store a `cache_miss` webhook if the app wants one for `channel`.
    pub(super) fn cache_miss_webhook(&self, channel: &ChannelName) {
        if self
            .app
            .wants_webhook(WebhookKind::CacheMiss, Some(channel.as_str()))
        {
            self.store_webhook(WebhookEvent::on_channel(
                WebhookKind::CacheMiss,
                new_id(),
                channel,
            ));
        }
    }

    fn store_webhook(&self, hook: WebhookEvent) {
        let js = self.state.js.clone();
        let subjects = self.state.subjects.clone();
        let app = self.app.id.clone();
        tokio::spawn(async move {
            let stored = match herald_stream::publish_webhook(&js, &subjects, &app, &hook).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(err) => Err(err.to_string()),
            };
            match stored {
                Ok(()) => metrics::counter!("herald_gateway_webhooks_stored_total", "name" => hook.name.as_str()).increment(1),
                Err(err) => {
                    metrics::counter!("herald_gateway_webhook_store_failures_total").increment(1);
                    tracing::warn!(%err, name = hook.name.as_str(), "a webhook event could not be stored");
                }
            }
        });
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
