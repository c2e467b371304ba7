//! Events out: one [`Change`] of the state turned into what subscribers
//! hear (a `member_added` / `member_removed` on the channel's presence
//! events subject) and what the service records about it (the view, the
//! last-seen bucket), in that order.

use super::Engine;
use crate::state::Change;
use crate::writer::WriteOp;
use bytes::Bytes;
use herald_proto::presence::{last_seen_key, PresenceEvent, ViewKey};
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

    /// Turn one change into its event, view update and last-seen record.
    /// `at` is when it happened (wall clock, ms).
    pub(super) async fn emit(&self, change: Change, revision: u64, at: i64) {
        match change {
            Change::MemberAdded {
                app,
                channel,
                user_id,
                user_info,
            } => {
                // Publish first, record second: a crash in between repeats
                // the event after the restart rather than losing it.
                let key = ViewKey::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                let value = Bytes::from(serde_json::to_vec(&user_info).unwrap_or_default());
                let event = PresenceEvent::MemberAdded {
                    user_id,
                    user_info,
                    revision,
                };
                self.publish(&app, &channel, &event).await;
                metrics::counter!("herald_presence_events_total", "type" => "member_added")
                    .increment(1);
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::MemberRemoved {
                app,
                channel,
                user_id,
            } => {
                let key = ViewKey::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                }
                .render();
                let event = PresenceEvent::MemberRemoved { user_id, revision };
                self.publish(&app, &channel, &event).await;
                metrics::counter!("herald_presence_events_total", "type" => "member_removed")
                    .increment(1);
                self.write(WriteOp::ViewDelete { key }).await;
            }
            Change::ChannelOccupied { app, channel } => {
                // Webhooks will hang off these; for now a counter and a log.
                metrics::counter!("herald_presence_occupancy_total", "event" => "channel_occupied")
                    .increment(1);
                tracing::debug!(%app, %channel, "channel_occupied");
            }
            Change::ChannelVacated { app, channel } => {
                metrics::counter!("herald_presence_occupancy_total", "event" => "channel_vacated")
                    .increment(1);
                tracing::debug!(%app, %channel, "channel_vacated");
            }
            Change::UserOnline { app, user_id } => {
                let key = ViewKey::Online { app, user_id }.render();
                let value = Bytes::from(format!("{{\"at\":{at}}}"));
                self.write(WriteOp::ViewPut { key, value }).await;
            }
            Change::UserOffline { app, user_id } => {
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
