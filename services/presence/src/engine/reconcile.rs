//! Start-up without false events, part two: diff what subscribers were told
//! before the service stopped (the view bucket) against the state rebuilt
//! from the presence bucket ([`super::load`]), and emit only the
//! differences — the members who joined or left, and the users who came or
//! went, while it was down.

use super::load::Hints;
use super::Engine;
use crate::state::Change;
use bytes::Bytes;
use herald_proto::now_ms;
use herald_proto::presence::ViewKey;
use std::collections::{HashMap, HashSet};

impl Engine {
    /// Diff what subscribers were told (the view) against the state rebuilt
    /// at start-up, and emit only the differences. `hints` holds, per user,
    /// the time of the latest `conn.` delete seen while loading.
    pub(super) async fn reconcile(&mut self, told: HashMap<String, Bytes>, hints: Hints) {
        let revision = self.state.revision();
        let now = now_ms();
        let mut told_members = HashSet::new();
        let mut told_online = HashSet::new();
        let mut told_occupied = HashSet::new();
        for key in told.keys() {
            match ViewKey::parse(key) {
                Some(ViewKey::Member {
                    app,
                    channel,
                    user_id,
                }) => {
                    told_members.insert((app, channel, user_id));
                }
                Some(ViewKey::Online { app, user_id }) => {
                    told_online.insert((app, user_id));
                }
                Some(ViewKey::Occupied { app, channel }) => {
                    told_occupied.insert((app, channel));
                }
                None => tracing::warn!(key, "ignoring a foreign key in the view bucket"),
            }
        }
        let mut left: Vec<_> = told_members
            .iter()
            .filter(|(app, channel, user)| !self.state.is_member(app, channel, user))
            .cloned()
            .collect();
        left.sort();
        let mut joined: Vec<_> = self
            .state
            .all_members()
            .into_iter()
            .filter(|(app, channel, user, _)| {
                !told_members.contains(&(app.clone(), channel.clone(), user.clone()))
            })
            .collect();
        joined.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        let came: Vec<_> = self
            .state
            .online_users()
            .filter(|user| !told_online.contains(*user))
            .cloned()
            .collect();
        let mut went: Vec<_> = told_online
            .iter()
            .filter(|(app, user)| !self.state.is_online(app, user))
            .cloned()
            .collect();
        went.sort();
        let occupied_now = self.state.occupied_channels();
        let occupied: Vec<_> = occupied_now
            .iter()
            .filter(|c| !told_occupied.contains(*c))
            .cloned()
            .collect();
        let mut vacated: Vec<_> = told_occupied
            .iter()
            .filter(|c| !occupied_now.contains(*c))
            .cloned()
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
        for (app, channel) in occupied {
            self.emit(Change::ChannelOccupied { app, channel }, revision, now)
                .await;
        }
        for (app, channel, user_id) in left {
            self.emit(
                Change::MemberRemoved {
                    app,
                    channel,
                    user_id,
                },
                revision,
                now,
            )
            .await;
        }
        for (app, channel, user_id, user_info) in joined {
            self.emit(
                Change::MemberAdded {
                    app,
                    channel,
                    user_id,
                    user_info,
                },
                revision,
                now,
            )
            .await;
        }
        for (app, channel) in vacated {
            self.emit(Change::ChannelVacated { app, channel }, revision, now)
                .await;
        }
        for (app, user_id) in came {
            self.emit(Change::UserOnline { app, user_id }, revision, now)
                .await;
        }
        for (app, user_id) in went {
            // Without a `conn.` delete to date it, the restart is the best
            // bound we have.
            let at = hints
                .get(&(app.clone(), user_id.clone()))
                .copied()
                .unwrap_or(now);
            self.emit(Change::UserOffline { app, user_id }, revision, at)
                .await;
        }
        self.update_gauges();
    }
}
