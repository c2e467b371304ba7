//! Client events (`client-*`): relayed to the other subscribers of a private
//! or presence channel, never to the sender, never stored (core NATS only),
//! and rate-limited per connection.

use super::connection::Connection;
use governor::{Quota, RateLimiter};
use herald_proto::control::EphemeralEvent;
use herald_proto::pusher::{codes, ClientFrame};
use herald_proto::ServerFrame;
use herald_proto::{ChannelKind, ChannelName};
use std::num::NonZeroU32;

impl Connection {
    pub(super) async fn on_client_event(&mut self, frame: &ClientFrame) {
        if !self.app.limits.enable_client_messages {
            return self
                .send(ServerFrame::Error {
                    code: None,
                    message: "Client events are not enabled for this app",
                })
                .await;
        }
        let channel = match frame.channel.as_deref().map(ChannelName::parse) {
            Some(Ok(channel)) => channel,
            _ => {
                return self
                    .send(ServerFrame::Error {
                        code: None,
                        message: "A client event needs the channel it is sent on",
                    })
                    .await
            }
        };
        // Pusher allows client events on private and presence channels only;
        // encrypted channels are excluded because the server cannot vouch for
        // payloads it cannot read (pusher-js refuses to send them too).
        let allowed = matches!(channel.kind(), ChannelKind::Private | ChannelKind::Presence);
        if !allowed || !self.channels.contains_key(&channel) {
            return self
                .send(ServerFrame::Error { code: None, message: "Client events are only allowed on private and presence channels this socket is subscribed to" })
                .await;
        }
        let per_second = self.app.limits.client_events_per_second;
        let limiter = self.limiter.get_or_insert_with(|| {
            RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            ))
        });
        if limiter.check().is_err() {
            metrics::counter!("herald_gateway_client_events_rejected_total").increment(1);
            let message = format!("Client event rejected: more than {per_second} per second");
            return self
                .send(ServerFrame::Error {
                    code: Some(codes::CLIENT_EVENT_RATE_LIMIT),
                    message: &message,
                })
                .await;
        }
        let event = EphemeralEvent {
            event: frame.event.clone(),
            channel: channel.to_string(),
            data: frame.data.clone(),
            socket_id: Some(self.handle.socket_id.to_string()),
            user_id: self.member_id(&channel).map(|u| u.to_string()),
            signed_in_user: self.user.as_ref().map(|u| u.id.to_string()),
        };
        let subject = self.state.subjects.ephemeral(&self.app.id, &channel);
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        if let Err(err) = self.state.nats.publish(subject, payload.into()).await {
            tracing::warn!(%err, "client event not relayed");
            return self
                .send(ServerFrame::Error {
                    code: None,
                    message: "Client event could not be relayed; retry",
                })
                .await;
        }
        metrics::counter!("herald_gateway_client_events_total").increment(1);
        self.client_event_webhook(&channel, &event.event, &event.data, event.user_id.clone());
    }
}
