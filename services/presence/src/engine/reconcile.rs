//! Start-up without false events, part two: diff what subscribers were told
//! before the service stopped (the view bucket) against the state rebuilt
//! from the presence bucket ([`super::load`]), and emit only the
//! differences — the channels occupied or vacated, the members who joined
//! or left, and the users who came or went, while it was down.
//!
//! Each view value records the revision that began its fact (`since`), so
//! the end of a fact emitted here carries the same webhook id as it would
//! have carried live (see [`crate::state::Change`]).

use super::load::Hints;
use super::Engine;
use crate::buckets::told_since;
use crate::state::Change;
use crate::writer::WriteOp;
use bytes::Bytes;
use herald_proto::now_ms;
use herald_proto::presence::ViewKey;
use std::collections::HashMap;

impl Engine {
    /// Diff what subscribers were told (the view) against the state rebuilt
    /// at start-up, and emit only the differences. `hints` holds, per user,
    /// the time of the latest `conn.` delete seen while loading.
    pub(super) async fn reconcile(&mut self, told: HashMap<String, Bytes>, hints: Hints) {
        let revision = self.state.revision();
        let now = now_ms();
        let mut told_members = HashMap::new();
        let mut told_online = HashMap::new();
        let mut told_occupied = HashMap::new();
        for (key, value) in &told {
            // Values written before `since` was recorded: the restart's
            // revision names the fact instead.
            let since = told_since(value).unwrap_or(revision);
            match ViewKey::parse(key) {
                Some(ViewKey::Member {
                    app,
                    channel,
                    user_id,
                }) => {
                    told_members.insert((app, channel, user_id), since);
                }
                Some(ViewKey::Online { app, user_id }) => {
                    told_online.insert((app, user_id), since);
                }
                Some(ViewKey::Occupied { app, channel }) => {
                    told_occupied.insert((app, channel), since);
                }
                None => tracing::warn!(key, "ignoring a foreign key in the view bucket"),
            }
        }
        let mut left: Vec<_> = told_members
            .iter()
            .filter(|((app, channel, user), _)| !self.state.is_member(app, channel, user))
            .map(|(k, since)| (k.clone(), *since))
            .collect();
        left.sort();
        let mut joined: Vec<_> = self
            .state
            .all_members()
            .into_iter()
            .filter(|(app, channel, user, _, _)| {
                !told_members.contains_key(&(app.clone(), channel.clone(), user.clone()))
            })
            .collect();
        joined.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        let mut came: Vec<_> = self
            .state
            .online_users()
            .filter(|user| !told_online.contains_key(*user))
            .cloned()
            .collect();
        came.sort();
        let mut went: Vec<_> = told_online
            .iter()
            .filter(|((app, user), _)| !self.state.is_online(app, user))
            .map(|(k, since)| (k.clone(), *since))
            .collect();
        went.sort();
        let occupied_now = self.state.occupied_channels();
        let occupied: Vec<_> = occupied_now
            .iter()
            .filter(|(c, _)| !told_occupied.contains_key(*c) && self.tracks_occupancy(&c.0, &c.1))
            .map(|(c, since)| (c.clone(), *since))
            .collect();
        let mut vacated: Vec<_> = told_occupied
            .iter()
            .filter(|(c, _)| !occupied_now.contains_key(*c))
            .map(|(c, since)| (c.clone(), *since))
            .collect();
        vacated.sort();
        tracing::info!(
            occupied = occupied.len(),
            vacated = vacated.len(),
            left = left.len(),
            joined = joined.len(),
            online = came.len(),
            offline = went.len(),
            "reconciled the member view with the rebuilt state"
        );
        // Pusher's order within a channel: occupied before its members
        // join, vacated after they leave.
        for ((app, channel), since) in occupied {
            self.emit(
                Change::ChannelOccupied {
                    app,
                    channel,
                    since,
                },
                revision,
                now,
            )
            .await;
        }
        for ((app, channel, user_id), since) in left {
            self.emit(
                Change::MemberRemoved {
                    app,
                    channel,
                    user_id,
                    since,
                },
                revision,
                now,
            )
            .await;
        }
        for (app, channel, user_id, user_info, since) in joined {
            self.emit(
                Change::MemberAdded {
                    app,
                    channel,
                    user_id,
                    user_info,
                    since,
                },
                revision,
                now,
            )
            .await;
        }
        for ((app, channel), since) in vacated {
            if !self.tracks_occupancy(&app, &channel) {
                // An app whose webhooks stopped wanting occupancy: forget
                // what was recorded for it, announce nothing.
                let key = ViewKey::Occupied { app, channel }.render();
                self.write(WriteOp::ViewDelete { key }).await;
                continue;
            }
            self.emit(
                Change::ChannelVacated {
                    app,
                    channel,
                    since,
                },
                revision,
                now,
            )
            .await;
        }
        for (app, user_id) in came {
            let since = self.state.online_since(&app, &user_id).unwrap_or(revision);
            self.emit(
                Change::UserOnline {
                    app,
                    user_id,
                    since,
                },
                revision,
                now,
            )
            .await;
        }
        for ((app, user_id), since) in went {
            // Without a `conn.` delete to date it, the restart is the best
            // bound we have.
            let at = hints
                .get(&(app.clone(), user_id.clone()))
                .copied()
                .unwrap_or(now);
            self.emit(
                Change::UserOffline {
                    app,
                    user_id,
                    since,
                },
                revision,
                at,
            )
            .await;
        }
        self.update_gauges();
    }
}
