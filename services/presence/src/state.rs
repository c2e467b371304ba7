//! The presence state: the presence KV bucket folded, entry by entry in
//! revision order, into who is in which channel.
//!
//! This module is pure (no I/O): [`PresenceState::apply`] takes one KV entry
//! and returns the [`Change`]s it caused, which the engine turns into
//! events, view updates and last-seen records. Everything here is decided by
//! the order of the entries alone, so replaying the bucket rebuilds the same
//! state.
//!
//! * A **member** of a presence channel is a user with at least one admitted
//!   subscription (`sub.` key) in it, on any gateway and socket.
//! * **Admission**: a subscription of a user who is already a member is
//!   always admitted (another device); a new user is admitted only while the
//!   channel has fewer distinct members than the app's
//!   `max_presence_members` (0 = no limit). A subscription refused when its
//!   `put` is applied stays refused (the gateway is told so and deletes it);
//!   it is never promoted later, so the decision depends only on KV order.
//! * A user is **online** while any `sub.` or `conn.` key of theirs exists.
//! * A channel (of any type) is **occupied** while any gateway has its
//!   `occ.` key or it has a member: `channel_occupied` when the first of
//!   these appears, `channel_vacated` when the last goes. Counting members
//!   too keeps a presence channel's events in Pusher's order (occupied
//!   before the first `member_added`, vacated after the last
//!   `member_removed`), whichever of a gateway's keys lands first.
//! * Gateways are tracked with their last heartbeat and the keys they own,
//!   for the dead-gateway sweep ([`crate::liveness`]).
//!
//! Times are milliseconds on the engine's monotonic clock ([`crate::engine`]),
//! so a wall-clock jump never expires a gateway.

use crate::liveness::{Liveness, StaleKey};
use herald_config::AppRegistry;
use herald_proto::presence::{PresenceKey, PresenceSubscription};
use herald_proto::{AppId, ChannelKind, ChannelName, UserId};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// What applying one KV entry changed, in the order it happened.
///
/// `since` is the KV revision that began the fact (the membership, the
/// occupancy, the user's being online) that the change starts or ends: it
/// names the fact, so the webhook events of its start and its end get the
/// same ids whether they are emitted live or by a restart's reconcile.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A user's first admitted subscription joined a channel.
    MemberAdded {
        app: AppId,
        channel: ChannelName,
        user_id: String,
        user_info: Value,
        since: u64,
    },
    /// A user's last subscription left a channel.
    MemberRemoved {
        app: AppId,
        channel: ChannelName,
        user_id: String,
        since: u64,
    },
    /// A channel got its first subscriber on any gateway.
    ChannelOccupied {
        app: AppId,
        channel: ChannelName,
        since: u64,
    },
    /// A channel lost its last subscriber on every gateway.
    ChannelVacated {
        app: AppId,
        channel: ChannelName,
        since: u64,
    },
    /// A user's first connection (of any kind) appeared.
    UserOnline {
        app: AppId,
        user_id: String,
        since: u64,
    },
    /// A user's last connection went.
    UserOffline {
        app: AppId,
        user_id: String,
        since: u64,
    },
}

/// One `sub.` key.
#[derive(Debug)]
struct Sub {
    app: AppId,
    channel: ChannelName,
    user_id: String,
    user_info: Value,
    /// Revision of the first put: orders a member's devices.
    joined: u64,
    admitted: bool,
}

/// A member of one channel: their admitted subscriptions, oldest first. The
/// oldest one's `user_info` is the member's.
#[derive(Debug, Default)]
struct Member {
    subs: BTreeSet<(u64, String)>,
    /// Revision of the subscription that made the user a member.
    since: u64,
}

#[derive(Debug, Default)]
struct Channel {
    members: BTreeMap<String, Member>,
}

#[derive(Debug, Default)]
struct User {
    /// `sub.` and `conn.` keys of this user.
    connections: usize,
    /// Revision of the key that brought the user online.
    since: u64,
    /// Presence channels the user is a member of.
    channels: BTreeSet<ChannelName>,
}

type ChannelKey = (AppId, ChannelName);
type UserKey = (AppId, String);

/// A user's presence as the REST API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserPresence {
    /// Any connection of the user exists.
    pub online: bool,
    /// Presence channels the user is a member of, sorted.
    pub channels: Vec<String>,
}

/// The whole presence state of every configured app.
#[derive(Debug)]
pub struct PresenceState {
    apps: AppRegistry,
    subs: HashMap<String, Sub>,
    conns: HashMap<String, UserKey>,
    channels: HashMap<ChannelKey, Channel>,
    users: HashMap<UserKey, User>,
    /// Gateways with subscribers of each channel (their `occ.` keys).
    occupancy: HashMap<ChannelKey, BTreeSet<String>>,
    /// Revision at which each occupied channel became occupied.
    occupied_since: HashMap<ChannelKey, u64>,
    liveness: Liveness,
    revision: u64,
    members: usize,
}

impl PresenceState {
    /// An empty state for `apps`.
    pub fn new(apps: AppRegistry) -> Self {
        Self {
            apps,
            subs: HashMap::new(),
            conns: HashMap::new(),
            channels: HashMap::new(),
            users: HashMap::new(),
            occupancy: HashMap::new(),
            occupied_since: HashMap::new(),
            liveness: Liveness::default(),
            revision: 0,
            members: 0,
        }
    }

    /// The highest KV revision applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Record that every revision up to `revision` has been applied (the
    /// bucket's last sequence at start-up, when its last messages were
    /// superseded or removed and so never delivered).
    pub fn note_revision(&mut self, revision: u64) {
        self.revision = self.revision.max(revision);
    }

    /// Members of all channels together.
    pub fn member_total(&self) -> usize {
        self.members
    }

    /// Presence channels with at least one member.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Gateways known (by heartbeat or by keys).
    pub fn gateway_count(&self) -> usize {
        self.liveness.count()
    }

    /// Apply one KV entry: `value` is `Some` for a put, `None` for a delete
    /// or purge. `seen` is when it was written, on the engine's clock.
    pub fn apply(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        revision: u64,
        seen: i64,
    ) -> Vec<Change> {
        self.revision = self.revision.max(revision);
        let mut changes = Vec::new();
        let parsed = match PresenceKey::parse(key) {
            Ok(parsed) => parsed,
            Err(_) => {
                tracing::debug!(key, "ignoring a foreign key in the presence bucket");
                return changes;
            }
        };
        match &parsed {
            PresenceKey::Gateway { gateway } => {
                self.liveness.heartbeat(gateway, value, revision, seen);
                return changes;
            }
            PresenceKey::Subscription { app, .. }
            | PresenceKey::Connection { app, .. }
            | PresenceKey::Occupancy { app, .. } => {
                if self.apps.by_id(app.as_str()).is_none() {
                    tracing::debug!(key, "ignoring a key of an unconfigured app");
                    return changes;
                }
            }
        }
        // Track the key for the sweep (a put refreshes it).
        let gateway = parsed.gateway_of();
        match value {
            Some(_) => self.liveness.track(gateway, key, revision, seen),
            None => self.liveness.forget(gateway, key),
        }
        let channel_key = match &parsed {
            PresenceKey::Subscription { app, channel, .. }
            | PresenceKey::Occupancy { app, channel, .. } => Some((app.clone(), channel.clone())),
            _ => None,
        };
        let was_occupied = channel_key.as_ref().is_some_and(|k| self.occupied(k));
        match parsed {
            PresenceKey::Subscription { app, channel, .. } => {
                self.apply_subscription(key, app, channel, value, revision, &mut changes)
            }
            PresenceKey::Occupancy {
                app,
                channel,
                gateway,
            } => {
                let gateways = self.occupancy.entry((app, channel)).or_default();
                match value {
                    Some(_) => gateways.insert(gateway),
                    None => gateways.remove(&gateway),
                };
                if let Some(k) = channel_key.as_ref().filter(|_| gateways.is_empty()) {
                    self.occupancy.remove(k);
                }
            }
            PresenceKey::Connection { app, user_id, .. } => {
                self.apply_connection(key, app, user_id, value.is_some(), revision, &mut changes)
            }
            PresenceKey::Gateway { .. } => {}
        }
        if let Some((app, channel)) = channel_key {
            let key = (app, channel);
            match (was_occupied, self.occupied(&key)) {
                (false, true) => {
                    self.occupied_since.insert(key.clone(), revision);
                    changes.insert(
                        0,
                        Change::ChannelOccupied {
                            app: key.0,
                            channel: key.1,
                            since: revision,
                        },
                    )
                }
                (true, false) => {
                    let since = self.occupied_since.remove(&key).unwrap_or(revision);
                    changes.push(Change::ChannelVacated {
                        app: key.0,
                        channel: key.1,
                        since,
                    })
                }
                _ => {}
            }
        }
        changes
    }

    /// Whether any gateway has subscribers of the channel or it has members.
    fn occupied(&self, key: &ChannelKey) -> bool {
        self.occupancy.contains_key(key) || self.channels.contains_key(key)
    }

    /// Whether the channel is occupied (see the module docs).
    #[cfg(test)]
    pub fn is_occupied(&self, app: &AppId, channel: &ChannelName) -> bool {
        self.occupied(&(app.clone(), channel.clone()))
    }

    /// Every occupied channel, with the revision it became occupied at.
    pub fn occupied_channels(&self) -> BTreeMap<ChannelKey, u64> {
        self.occupied_since
            .iter()
            .map(|(k, since)| (k.clone(), *since))
            .collect()
    }

    /// The revision at which a user came online, if online.
    pub fn online_since(&self, app: &AppId, user_id: &str) -> Option<u64> {
        self.users
            .get(&(app.clone(), user_id.to_owned()))
            .map(|u| u.since)
    }

    fn apply_subscription(
        &mut self,
        key: &str,
        app: AppId,
        channel: ChannelName,
        value: Option<&[u8]>,
        revision: u64,
        changes: &mut Vec<Change>,
    ) {
        let parsed =
            value.and_then(
                |bytes| match serde_json::from_slice::<PresenceSubscription>(bytes) {
                    Ok(sub) if UserId::parse(&sub.user_id).is_ok() => Some(sub),
                    Ok(_) => {
                        tracing::warn!(key, "subscription with an invalid user_id ignored");
                        None
                    }
                    Err(err) => {
                        tracing::warn!(key, %err, "malformed subscription ignored");
                        None
                    }
                },
            );
        if channel.kind() != ChannelKind::Presence {
            tracing::warn!(key, "subscription to a non-presence channel ignored");
            return;
        }
        // A re-put by the same user only refreshes the info: admission and
        // device order stay as they were.
        if let (Some(new), Some(existing)) = (&parsed, self.subs.get_mut(key)) {
            if existing.user_id == new.user_id {
                existing.user_info = new.user_info.clone();
                return;
            }
        }
        if let Some(old) = self.subs.remove(key) {
            self.remove_subscription(key, old, changes);
        }
        if let Some(new) = parsed {
            self.add_subscription(key, app, channel, new, revision, changes);
        }
    }

    fn limit(&self, app: &AppId) -> usize {
        self.apps
            .by_id(app.as_str())
            .map(|a| a.limits.max_presence_members)
            .unwrap_or(0)
    }

    fn add_subscription(
        &mut self,
        key: &str,
        app: AppId,
        channel: ChannelName,
        sub: PresenceSubscription,
        revision: u64,
        changes: &mut Vec<Change>,
    ) {
        let limit = self.limit(&app);
        let user_key = (app.clone(), sub.user_id.clone());
        self.connect(&user_key, revision, changes);
        let channel_key = (app.clone(), channel.clone());
        let state = self.channels.entry(channel_key.clone()).or_default();
        let admitted = if let Some(member) = state.members.get_mut(&sub.user_id) {
            member.subs.insert((revision, key.to_owned()));
            true
        } else if limit == 0 || state.members.len() < limit {
            let mut member = Member {
                since: revision,
                ..Member::default()
            };
            member.subs.insert((revision, key.to_owned()));
            state.members.insert(sub.user_id.clone(), member);
            self.members += 1;
            changes.push(Change::MemberAdded {
                app: app.clone(),
                channel: channel.clone(),
                user_id: sub.user_id.clone(),
                user_info: sub.user_info.clone(),
                since: revision,
            });
            if let Some(user) = self.users.get_mut(&user_key) {
                user.channels.insert(channel.clone());
            }
            true
        } else {
            tracing::debug!(
                key,
                limit,
                "presence channel full: subscription not admitted"
            );
            if state.members.is_empty() {
                self.channels.remove(&channel_key);
            }
            false
        };
        self.subs.insert(
            key.to_owned(),
            Sub {
                app,
                channel,
                user_id: sub.user_id,
                user_info: sub.user_info,
                joined: revision,
                admitted,
            },
        );
    }

    fn remove_subscription(&mut self, key: &str, old: Sub, changes: &mut Vec<Change>) {
        let user_key = (old.app.clone(), old.user_id.clone());
        if old.admitted {
            let channel_key = (old.app.clone(), old.channel.clone());
            if let Some(state) = self.channels.get_mut(&channel_key) {
                let left = match state.members.get_mut(&old.user_id) {
                    Some(member) => {
                        member.subs.remove(&(old.joined, key.to_owned()));
                        member.subs.is_empty().then_some(member.since)
                    }
                    None => None,
                };
                if let Some(since) = left {
                    state.members.remove(&old.user_id);
                    self.members -= 1;
                    changes.push(Change::MemberRemoved {
                        app: old.app.clone(),
                        channel: old.channel.clone(),
                        user_id: old.user_id.clone(),
                        since,
                    });
                    if let Some(user) = self.users.get_mut(&user_key) {
                        user.channels.remove(&old.channel);
                    }
                    if state.members.is_empty() {
                        self.channels.remove(&channel_key);
                    }
                }
            }
        }
        self.disconnect(&user_key, changes);
    }

    fn apply_connection(
        &mut self,
        key: &str,
        app: AppId,
        user_id: String,
        put: bool,
        revision: u64,
        changes: &mut Vec<Change>,
    ) {
        if UserId::parse(&user_id).is_err() {
            tracing::warn!(key, "connection with an invalid user id ignored");
            return;
        }
        let user_key = (app, user_id);
        match (put, self.conns.contains_key(key)) {
            (true, false) => {
                self.conns.insert(key.to_owned(), user_key.clone());
                self.connect(&user_key, revision, changes);
            }
            (false, true) => {
                self.conns.remove(key);
                self.disconnect(&user_key, changes);
            }
            // A re-put of a known key, or the delete of an unknown one.
            _ => {}
        }
    }

    fn connect(&mut self, user_key: &UserKey, revision: u64, changes: &mut Vec<Change>) {
        let user = self.users.entry(user_key.clone()).or_default();
        user.connections += 1;
        if user.connections == 1 {
            user.since = revision;
            changes.push(Change::UserOnline {
                app: user_key.0.clone(),
                user_id: user_key.1.clone(),
                since: revision,
            });
        }
    }

    fn disconnect(&mut self, user_key: &UserKey, changes: &mut Vec<Change>) {
        let Some(user) = self.users.get_mut(user_key) else {
            return;
        };
        user.connections = user.connections.saturating_sub(1);
        if user.connections == 0 {
            // Every admitted subscription is also a connection, so the user
            // is in no channel any more.
            let since = user.since;
            self.users.remove(user_key);
            changes.push(Change::UserOffline {
                app: user_key.0.clone(),
                user_id: user_key.1.clone(),
                since,
            });
        }
    }

    /// `user_id` → `user_info` of a channel's members.
    pub fn members(&self, app: &AppId, channel: &ChannelName) -> BTreeMap<String, Value> {
        self.members_page(app, channel, None, usize::MAX).0
    }

    /// One page of a channel's members, in user-id order, after `after`;
    /// also the cursor of the next page when there is one.
    pub fn members_page(
        &self,
        app: &AppId,
        channel: &ChannelName,
        after: Option<&str>,
        limit: usize,
    ) -> (BTreeMap<String, Value>, Option<String>) {
        use std::ops::Bound;
        let Some(state) = self.channels.get(&(app.clone(), channel.clone())) else {
            return (BTreeMap::new(), None);
        };
        let start = match after {
            Some(after) => Bound::Excluded(after.to_owned()),
            None => Bound::Unbounded,
        };
        let mut iter = state.members.range((start, Bound::Unbounded));
        let page: BTreeMap<String, Value> = iter
            .by_ref()
            .take(limit)
            .map(|(user_id, member)| (user_id.clone(), self.member_info(member)))
            .collect();
        let next = if iter.next().is_some() {
            page.keys().next_back().cloned()
        } else {
            None
        };
        (page, next)
    }

    fn member_info(&self, member: &Member) -> Value {
        member
            .subs
            .first()
            .and_then(|(_, key)| self.subs.get(key))
            .map(|sub| sub.user_info.clone())
            .unwrap_or(Value::Null)
    }

    /// Whether `user_id` is a member of the channel.
    pub fn is_member(&self, app: &AppId, channel: &ChannelName, user_id: &str) -> bool {
        self.channels
            .get(&(app.clone(), channel.clone()))
            .is_some_and(|c| c.members.contains_key(user_id))
    }

    /// Whether the subscription `key` exists in that channel and was admitted.
    pub fn admitted(&self, key: &str, app: &AppId, channel: &ChannelName) -> bool {
        self.subs
            .get(key)
            .is_some_and(|s| s.admitted && &s.app == app && &s.channel == channel)
    }

    /// Every member of every channel with their info and since when.
    pub fn all_members(&self) -> Vec<(AppId, ChannelName, String, Value, u64)> {
        let mut out = Vec::with_capacity(self.members);
        for ((app, channel), state) in &self.channels {
            for (user_id, member) in &state.members {
                out.push((
                    app.clone(),
                    channel.clone(),
                    user_id.clone(),
                    self.member_info(member),
                    member.since,
                ));
            }
        }
        out
    }

    /// Whether any connection of the user exists.
    pub fn is_online(&self, app: &AppId, user_id: &str) -> bool {
        self.users.contains_key(&(app.clone(), user_id.to_owned()))
    }

    /// Every online user.
    pub fn online_users(&self) -> impl Iterator<Item = &(AppId, String)> {
        self.users.keys()
    }

    /// A user's presence for the REST API.
    pub fn user(&self, app: &AppId, user_id: &str) -> UserPresence {
        match self.users.get(&(app.clone(), user_id.to_owned())) {
            Some(user) => UserPresence {
                online: true,
                channels: user.channels.iter().map(|c| c.to_string()).collect(),
            },
            None => UserPresence::default(),
        }
    }

    /// Keys of dead gateways at `now` (see [`Liveness::stale_keys`]).
    pub fn stale_keys(&self, now: i64, ttl: Duration) -> Vec<StaleKey> {
        self.liveness.stale_keys(now, ttl)
    }

    /// Gateways known.
    #[cfg(test)]
    pub fn gateways(&self) -> std::collections::HashSet<&str> {
        self.liveness.gateways()
    }
}

/// What the unit tests of the state and of gateway liveness build on.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use herald_config::AppConfig;
    use herald_proto::presence::GatewayHeartbeat;
    use serde_json::json;

    pub(crate) fn state(limit: usize) -> PresenceState {
        let mut app = AppConfig::new("a", "k", "s");
        app.limits.max_presence_members = limit;
        PresenceState::new(AppRegistry::single(app))
    }

    pub(crate) fn app() -> AppId {
        AppId::parse("a").unwrap()
    }

    pub(crate) fn chan() -> ChannelName {
        ChannelName::parse("presence-room").unwrap()
    }

    pub(crate) fn sub_key(gw: &str, socket: &str) -> String {
        PresenceKey::Subscription {
            app: app(),
            channel: chan(),
            gateway: gw.into(),
            socket_id: socket.into(),
        }
        .render()
    }

    pub(crate) fn conn_key(user: &str, gw: &str, socket: &str) -> String {
        PresenceKey::Connection {
            app: app(),
            user_id: user.into(),
            gateway: gw.into(),
            socket_id: socket.into(),
        }
        .render()
    }

    pub(crate) fn sub_value(user: &str) -> Vec<u8> {
        serde_json::to_vec(&PresenceSubscription {
            user_id: user.into(),
            user_info: json!({"name": user}),
            at: 0,
        })
        .unwrap()
    }

    pub(crate) fn heartbeat() -> Vec<u8> {
        serde_json::to_vec(&GatewayHeartbeat {
            at: 0,
            interval_ms: 1000,
        })
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use serde_json::json;

    fn added(changes: &[Change]) -> Vec<&str> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::MemberAdded { user_id, .. } => Some(user_id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn removed(changes: &[Change]) -> Vec<&str> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::MemberRemoved { user_id, .. } => Some(user_id.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_second_device_joins_silently_and_only_the_last_one_leaving_removes_the_member() {
        let mut s = state(100);
        let k1 = sub_key("g", "1.1");
        let k2 = sub_key("g", "1.2");
        let c = s.apply(&k1, Some(&sub_value("u")), 1, 0);
        assert_eq!(added(&c), ["u"]);
        assert!(c.contains(&Change::ChannelOccupied {
            app: app(),
            channel: chan(),
            since: 1
        }));
        assert!(c.contains(&Change::UserOnline {
            app: app(),
            user_id: "u".into(),
            since: 1
        }));
        assert!(s.apply(&k2, Some(&sub_value("u")), 2, 0).is_empty());
        assert!(s.apply(&k1, None, 3, 0).is_empty());
        assert_eq!(s.members(&app(), &chan()).len(), 1);
        let c = s.apply(&k2, None, 4, 0);
        assert_eq!(removed(&c), ["u"]);
        // The end of a fact names the revision that began it.
        assert!(c.contains(&Change::UserOffline {
            app: app(),
            user_id: "u".into(),
            since: 1
        }));
        assert!(c.contains(&Change::MemberRemoved {
            app: app(),
            channel: chan(),
            user_id: "u".into(),
            since: 1
        }));
        assert!(c.contains(&Change::ChannelVacated {
            app: app(),
            channel: chan(),
            since: 1
        }));
        assert_eq!(s.member_total(), 0);
        assert_eq!(s.channel_count(), 0);
        assert_eq!(s.revision(), 4);
    }

    #[test]
    fn a_full_channel_refuses_new_users_but_not_new_devices_of_members() {
        let mut s = state(2);
        s.apply(&sub_key("g", "1.1"), Some(&sub_value("a")), 1, 0);
        s.apply(&sub_key("g", "1.2"), Some(&sub_value("b")), 2, 0);
        let c = s.apply(&sub_key("g", "1.3"), Some(&sub_value("c")), 3, 0);
        assert!(added(&c).is_empty());
        assert!(!s.admitted(&sub_key("g", "1.3"), &app(), &chan()));
        // The refused user is still connected.
        assert!(s.is_online(&app(), "c"));
        s.apply(&sub_key("g", "1.4"), Some(&sub_value("a")), 4, 0);
        assert!(s.admitted(&sub_key("g", "1.4"), &app(), &chan()));
        // Removing the refused key changes no membership.
        let c = s.apply(&sub_key("g", "1.3"), None, 5, 0);
        assert!(removed(&c).is_empty());
        assert_eq!(
            s.members(&app(), &chan()).keys().collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Once a member leaves there is room again.
        s.apply(&sub_key("g", "1.2"), None, 6, 0);
        let c = s.apply(&sub_key("g", "1.5"), Some(&sub_value("d")), 7, 0);
        assert_eq!(added(&c), ["d"]);
    }

    #[test]
    fn the_member_info_is_that_of_the_oldest_device() {
        let mut s = state(100);
        s.apply(&sub_key("g", "1.1"), Some(&sub_value("u")), 1, 0);
        let mut other = PresenceSubscription {
            user_id: "u".into(),
            user_info: json!("second"),
            at: 0,
        };
        s.apply(
            &sub_key("g", "1.2"),
            Some(&serde_json::to_vec(&other).unwrap()),
            2,
            0,
        );
        assert_eq!(s.members(&app(), &chan())["u"], json!({"name": "u"}));
        s.apply(&sub_key("g", "1.1"), None, 3, 0);
        assert_eq!(s.members(&app(), &chan())["u"], json!("second"));
        // A re-put updates the info in place.
        other.user_info = json!("third");
        s.apply(
            &sub_key("g", "1.2"),
            Some(&serde_json::to_vec(&other).unwrap()),
            4,
            0,
        );
        assert_eq!(s.members(&app(), &chan())["u"], json!("third"));
    }

    #[test]
    fn conn_and_sub_keys_both_keep_a_user_online() {
        let mut s = state(100);
        s.apply(&conn_key("u", "g", "1.1"), Some(b"{\"at\":0}"), 1, 0);
        s.apply(&sub_key("g", "1.1"), Some(&sub_value("u")), 2, 0);
        assert_eq!(
            s.user(&app(), "u"),
            UserPresence {
                online: true,
                channels: vec!["presence-room".into()]
            }
        );
        let c = s.apply(&sub_key("g", "1.1"), None, 3, 0);
        assert!(!c.iter().any(|c| matches!(c, Change::UserOffline { .. })));
        let c = s.apply(&conn_key("u", "g", "1.1"), None, 4, 0);
        assert!(c.iter().any(|c| matches!(c, Change::UserOffline { .. })));
        assert_eq!(s.user(&app(), "u"), UserPresence::default());
    }

    #[test]
    fn keys_of_unknown_apps_non_presence_channels_and_foreign_keys_are_ignored() {
        let mut s = state(100);
        let other = PresenceKey::Subscription {
            app: AppId::parse("other").unwrap(),
            channel: chan(),
            gateway: "g".into(),
            socket_id: "1.1".into(),
        }
        .render();
        assert!(s.apply(&other, Some(&sub_value("u")), 1, 0).is_empty());
        let public = PresenceKey::Subscription {
            app: app(),
            channel: ChannelName::parse("private-x").unwrap(),
            gateway: "g".into(),
            socket_id: "1.1".into(),
        }
        .render();
        assert!(s.apply(&public, Some(&sub_value("u")), 2, 0).is_empty());
        assert!(s.apply("nonsense", Some(b"x"), 3, 0).is_empty());
        assert!(s
            .apply(&sub_key("g", "1.1"), Some(b"not json"), 4, 0)
            .is_empty());
        assert_eq!(s.member_total(), 0);
        assert_eq!(s.revision(), 4);
    }

    fn occ_key(gw: &str, channel: &str) -> String {
        PresenceKey::Occupancy {
            app: app(),
            channel: ChannelName::parse(channel).unwrap(),
            gateway: gw.into(),
        }
        .render()
    }

    fn occupancy(changes: &[Change]) -> Vec<&'static str> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::ChannelOccupied { .. } => Some("occupied"),
                Change::ChannelVacated { .. } => Some("vacated"),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_channel_is_occupied_by_the_first_gateway_and_vacated_by_the_last() {
        let mut s = state(100);
        let c = s.apply(&occ_key("g1", "private-x"), Some(b"{\"at\":0}"), 1, 0);
        assert_eq!(occupancy(&c), ["occupied"]);
        assert!(
            occupancy(&s.apply(&occ_key("g2", "private-x"), Some(b"{\"at\":0}"), 2, 0)).is_empty()
        );
        // A re-put (a gateway announcing again) changes nothing.
        assert!(
            occupancy(&s.apply(&occ_key("g1", "private-x"), Some(b"{\"at\":0}"), 3, 0)).is_empty()
        );
        assert!(occupancy(&s.apply(&occ_key("g1", "private-x"), None, 4, 0)).is_empty());
        assert!(s.is_occupied(&app(), &ChannelName::parse("private-x").unwrap()));
        let c = s.apply(&occ_key("g2", "private-x"), None, 5, 0);
        assert_eq!(occupancy(&c), ["vacated"]);
        assert!(s.occupied_channels().is_empty());
    }

    #[test]
    fn a_presence_channel_is_occupied_before_its_first_member_and_vacated_after_its_last() {
        let mut s = state(100);
        // The member's key lands before the gateway's occupancy key.
        let c = s.apply(&sub_key("g", "1.1"), Some(&sub_value("u")), 1, 0);
        assert!(matches!(c[0], Change::ChannelOccupied { .. }), "{c:?}");
        assert_eq!(added(&c), ["u"]);
        assert!(occupancy(&s.apply(&occ_key("g", "presence-room"), Some(b"{}"), 2, 0)).is_empty());
        // The occupancy key goes first: the channel stays occupied until the
        // member leaves, and is vacated after the member_removed.
        assert!(occupancy(&s.apply(&occ_key("g", "presence-room"), None, 3, 0)).is_empty());
        let c = s.apply(&sub_key("g", "1.1"), None, 4, 0);
        assert_eq!(removed(&c), ["u"]);
        let last = c
            .iter()
            .rposition(|c| matches!(c, Change::ChannelVacated { .. }))
            .unwrap();
        let member = c
            .iter()
            .position(|c| matches!(c, Change::MemberRemoved { .. }))
            .unwrap();
        assert!(member < last);
    }
}
