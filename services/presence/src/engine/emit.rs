//! Events out: one [`Change`] of the state turned into what subscribers
//! hear (a `member_added` / `member_removed` on the channel's presence
//! events subject), the webhook event the app asked for (stored in the
//! webhook stream) and what the service records about it (the view, the
//! last-seen bucket), in that order.
//!
//! With a vacate delay (`HERALD_WEBHOOK_VACATE_DELAY_MS`), the webhook and
//! view update of a `channel_vacated` / `member_removed` are held that long
//! (gateways still hear `member_removed` at once); a `channel_occupied` /
//! `member_added` of the same channel (and user) meanwhile cancels both,
//! so a quick reconnect sends neither. A restart while one is held finds
//! the view still saying occupied (or member) and announces the end then.
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
use std::collections::HashMap;
use std::time::Instant;

/// What a held vacated / removed webhook is about: the channel, and the
/// user for a member.
type HeldKey = (AppId, ChannelName, Option<String>);

/// Webhooks of ends held for the vacate delay, with when they go out and
/// the `since` of the fact they end.
pub type Held = HashMap<HeldKey, (Instant, u64)>;

impl Engine {
    /// Whether the channel's occupancy is announced at all: only when one of
    /// the app's webhooks wants its `channel_occupied` or `channel_vacated`
    /// (then the view records it too; otherwise it costs no write).
    pub(super) fn tracks_occupancy(&self, app: &AppId, channel: &ChannelName) -> bool {
        self.apps.by_id(app.as_str()).is_some_and(|a| {
            a.wants_webhook(WebhookKind::ChannelOccupied, Some(channel.as_str()))
                || a.wants_webhook(WebhookKind::ChannelVacated, Some(channel.as_str()))
        })
    }

    /// Whether any vacated / removed webhook is held.
    pub(super) fn holds_any(&self) -> bool {
        !self.held.lock().expect("held lock").is_empty()
    }

    /// Hold the end of a fact if there is a vacate delay; `false` if it
    /// must go out now.
    fn hold(&self, key: HeldKey, since: u64) -> bool {
        let delay = self.settings.vacate_delay;
        if delay.is_zero() {
            return false;
        }
        let mut held = self.held.lock().expect("held lock");
        held.insert(key, (Instant::now() + delay, since));
        true
    }

    /// A start of a fact: `true` if it cancels a held end (then neither is
    /// sent).
    fn cancel_held(&self, key: &HeldKey) -> bool {
        self.held.lock().expect("held lock").remove(key).is_some()
    }

    /// Send the held ends whose delay is over.
    pub(super) async fn release_held(&self) {
        let now = Instant::now();
        let due: Vec<(HeldKey, u64)> = {
            let mut held = self.held.lock().expect("held lock");
            let keys: Vec<HeldKey> = held
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| held.remove(&k).map(|(_, since)| (k, since)))
                .collect()
        };
        for ((app, channel, user), since) in due {
            self.send_end(&app, &channel, user.as_deref(), since).await;
        }
    }

    /// The webhook and view update of a vacated channel or removed member.
    async fn send_end(&self, app: &AppId, channel: &ChannelName, user: Option<&str>, since: u64) {
        if user.is_none() && !self.tracks_occupancy(app, channel) {
            return;
        }
        let (kind, key) = match user {
            Some(user_id) => (
                WebhookKind::MemberRemoved,
                ViewKey::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: user_id.to_owned(),
                },
            ),
            None => (
                WebhookKind::ChannelVacated,
                ViewKey::Occupied {
                    app: app.clone(),
                    channel: channel.clone(),
                },
            ),
        };
        self.webhook(app, kind, Some(channel), user, since).await;
        self.write(WriteOp::ViewDelete { key: key.render() }).await;
    }

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
                let held = (app.clone(), channel.clone(), Some(hook_user.clone()));
                if !self.cancel_held(&held) {
                    self.webhook(
                        &app,
                        WebhookKind::MemberAdded,
                        Some(&channel),
                        Some(&hook_user),
                        since,
                    )
                    .await;
                }
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::MemberRemoved {
                app,
                channel,
                user_id,
                since,
            } => {
                let hook_user = user_id.clone();
                let event = PresenceEvent::MemberRemoved { user_id, revision };
                self.publish(&app, &channel, &event).await;
                metrics::counter!("herald_presence_events_total", "type" => "member_removed")
                    .increment(1);
                let held = (app.clone(), channel.clone(), Some(hook_user.clone()));
                if !self.hold(held, since) {
                    self.send_end(&app, &channel, Some(&hook_user), since).await;
                }
            }
            Change::ChannelOccupied {
                app,
                channel,
                since,
            } => {
                metrics::counter!("herald_presence_occupancy_total", "event" => "channel_occupied")
                    .increment(1);
                tracing::debug!(%app, %channel, "channel_occupied");
                if !self.tracks_occupancy(&app, &channel) {
                    return;
                }
                if !self.cancel_held(&(app.clone(), channel.clone(), None)) {
                    self.webhook(
                        &app,
                        WebhookKind::ChannelOccupied,
                        Some(&channel),
                        None,
                        since,
                    )
                    .await;
                }
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
                if !self.hold((app.clone(), channel.clone(), None), since) {
                    self.send_end(&app, &channel, None, since).await;
                }
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
