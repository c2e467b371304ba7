//! Events out: one [`Change`] of the state turned into what subscribers
//! hear (a `member_added` / `member_removed` on the channel's presence
//! events subject), the webhook event the app asked for (stored in the
//! webhook stream) and what the service records about it (the view, the
//! last-seen bucket), in that order.
//!
//! A webhook event's id is derived from the app, the event, its channel or
//! user and the KV revision that began the fact it starts or ends (`since`):
//! the same change announced again (after a crash before the view was
//! written, by the restart's reconcile) gets the same id.

use super::Engine;
use crate::buckets::ViewValue;
use crate::state::Change;
use crate::writer::WriteOp;
use bytes::Bytes;
use herald_proto::presence::{last_seen_key, OnlineEvent, PresenceEvent, ViewKey};
use herald_proto::webhook::{event_id, WebhookEvent, WebhookKind};
use herald_proto::{AppId, ChannelName};

impl Engine {
    /// Publish one presence channel's event.
    async fn publish(&self, app: &AppId, channel: &ChannelName, event: &PresenceEvent) {
        let subject = self.subjects.presence_events(app, channel);
        let payload = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        if let Err(err) = self.client.publish(subject, payload).await {
            tracing::error!(%err, "cannot publish a presence event");
        }
    }

    /// Tell gateways that a user came online or went offline (watchlists).
    async fn publish_online(&self, app: &AppId, user_id: &str, online: bool, revision: u64) {
        let event = OnlineEvent {
            user_id: user_id.to_owned(),
            online,
            revision,
        };
        let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        if let Err(err) = self
            .client
            .publish(self.subjects.presence_online(app), payload)
            .await
        {
            tracing::error!(%err, "cannot publish an online event");
        }
    }

    /// Queue the webhook event of a change, if one of the app's webhooks
    /// wants it.
    async fn webhook(
        &self,
        app: &AppId,
        kind: WebhookKind,
        channel: Option<&ChannelName>,
        user_id: Option<&str>,
        since: u64,
    ) {
        let wanted = self
            .apps
            .by_id(app.as_str())
            .is_some_and(|a| a.wants_webhook(kind, channel.map(ChannelName::as_str)));
        if !wanted {
            return;
        }
        let id = event_id(&[
            app.as_str(),
            kind.as_str(),
            channel.map(ChannelName::as_str).unwrap_or_default(),
            user_id.unwrap_or_default(),
            &since.to_string(),
        ]);
        let mut event = WebhookEvent::new(kind, id);
        event.channel = channel.map(ChannelName::to_string);
        event.user_id = user_id.map(str::to_owned);
        self.write(WriteOp::Webhook {
            app: app.clone(),
            event,
        })
        .await;
    }

    /// Turn one change into its event, webhook, view update and last-seen
    /// record. `at` is when it happened (wall clock, ms).
    pub(super) async fn emit(&self, change: Change, revision: u64, at: i64) {
        // Publish first, record second: a crash in between repeats the
        // event after the restart rather than losing it.
        match change {
            Change::MemberAdded {
                app,
                channel,
                user_id,
                user_info,
                since,
            } => {
                let key = ViewKey::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                let value = ViewValue {
                    user_info: Some(user_info.clone()),
                    at: None,
                    since,
                }
                .to_bytes();
                let hook_user = user_id.clone();
                let event = PresenceEvent::MemberAdded {
                    user_id,
                    user_info,
                    revision,
                };
                self.publish(&app, &channel, &event).await;
                metrics::counter!("herald_presence_events_total", "type" => "member_added")
                    .increment(1);
                self.webhook(
                    &app,
                    WebhookKind::MemberAdded,
                    Some(&channel),
                    Some(&hook_user),
                    since,
                )
                .await;
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::MemberRemoved {
                app,
                channel,
                user_id,
                since,
            } => {
                let key = ViewKey::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                let hook_user = user_id.clone();
                let event = PresenceEvent::MemberRemoved { user_id, revision };
                self.publish(&app, &channel, &event).await;
                metrics::counter!("herald_presence_events_total", "type" => "member_removed")
                    .increment(1);
                self.webhook(
                    &app,
                    WebhookKind::MemberRemoved,
                    Some(&channel),
                    Some(&hook_user),
                    since,
                )
                .await;
                self.write(WriteOp::ViewDelete { key }).await;
            }
            Change::ChannelOccupied {
                app,
                channel,
                since,
            } => {
                metrics::counter!("herald_presence_occupancy_total", "event" => "channel_occupied")
                    .increment(1);
                tracing::debug!(%app, %channel, "channel_occupied");
                self.webhook(
                    &app,
                    WebhookKind::ChannelOccupied,
                    Some(&channel),
                    None,
                    since,
                )
                .await;
                let key = ViewKey::Occupied { app, channel }.render();
                let value = ViewValue {
                    user_info: None,
                    at: Some(at),
                    since,
                }
                .to_bytes();
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::ChannelVacated {
                app,
                channel,
                since,
            } => {
                metrics::counter!("herald_presence_occupancy_total", "event" => "channel_vacated")
                    .increment(1);
                tracing::debug!(%app, %channel, "channel_vacated");
                self.webhook(
                    &app,
                    WebhookKind::ChannelVacated,
                    Some(&channel),
                    None,
                    since,
                )
                .await;
                let key = ViewKey::Occupied { app, channel }.render();
                self.write(WriteOp::ViewDelete { key }).await;
            }
            Change::UserOnline {
                app,
                user_id,
                since,
            } => {
                self.publish_online(&app, &user_id, true, revision).await;
                self.webhook(&app, WebhookKind::UserOnline, None, Some(&user_id), since)
                    .await;
                let key = ViewKey::Online { app, user_id }.render();
                let value = ViewValue {
                    user_info: None,
                    at: Some(at),
                    since,
                }
                .to_bytes();
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::UserOffline {
                app,
                user_id,
                since,
            } => {
                self.publish_online(&app, &user_id, false, revision).await;
                self.webhook(&app, WebhookKind::UserOffline, None, Some(&user_id), since)
                    .await;
                let key = ViewKey::Online {
                    app: app.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                self.write(WriteOp::ViewDelete { key }).await;
                self.write(WriteOp::LastSeen {
                    key: last_seen_key(&app, &user_id),
                    at,
                })
                .await;
            }
        }
    }
}
