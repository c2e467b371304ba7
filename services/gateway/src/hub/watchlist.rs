//! Watchlists: signed-in connections watching other users' online status
//! (`watchlist` in `pusher:signin`'s user data), told with
//! `pusher_internal:watchlist_events`.
//!
//! Online status is the presence service's (a user is online while any
//! connection of theirs anywhere is). A watching connection is registered
//! here first, then asks the presence service which watched users are
//! online; the answer and the presence service's `OnlineEvent`s carry KV
//! revisions, and for each watched user a connection keeps the revision
//! and state it was last told, so neither an answer overtaken by a newer
//! event nor an event older than the answer can leave it with a stale
//! status.

use super::conn::ConnHandle;
use herald_proto::presence::OnlineEvent;
use herald_proto::{AppId, ServerFrame};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One watching connection.
struct Watch {
    conn: ConnHandle,
    /// Watched user → (revision, online) last told.
    told: Mutex<HashMap<String, (u64, bool)>>,
}

impl Watch {
    /// Record `online` for `user` as of `revision` if it is newer than what
    /// was told; returns whether the client must hear it.
    fn update(&self, user: &str, revision: u64, online: bool) -> bool {
        let mut told = self.told.lock().expect("watch lock");
        update(&mut told, user, revision, online)
    }
}

/// Record `online` for `user` as of `revision` in `told` if it is newer;
/// returns whether the client must hear it (it changed what it was told).
fn update(
    told: &mut HashMap<String, (u64, bool)>,
    user: &str,
    revision: u64,
    online: bool,
) -> bool {
    match told.get(user) {
        Some((seen, _)) if *seen >= revision => false,
        Some((_, was)) => {
            let changed = *was != online;
            told.insert(user.to_owned(), (revision, online));
            changed
        }
        None => {
            told.insert(user.to_owned(), (revision, online));
            // Nothing told yet: the client assumes offline.
            online
        }
    }
}

/// The connections watching one user, by connection id.
type WatchersOf = HashMap<u64, Arc<Watch>>;

/// Watched user → watching connections, of one gateway.
#[derive(Default)]
pub(crate) struct Watchlists {
    watchers: Mutex<HashMap<(AppId, String), WatchersOf>>,
}

impl Watchlists {
    /// Register `conn` as watching `users` (before asking who is online).
    pub fn watch(&self, app: &AppId, users: &[String], conn: ConnHandle) {
        let watch = Arc::new(Watch {
            conn,
            told: Mutex::default(),
        });
        let mut watchers = self.watchers.lock().expect("watchers lock");
        for user in users {
            watchers
                .entry((app.clone(), user.clone()))
                .or_default()
                .insert(watch.conn.id, watch.clone());
        }
    }

    /// Forget a connection's watchlist.
    pub fn unwatch(&self, app: &AppId, users: &[String], conn_id: u64) {
        let mut watchers = self.watchers.lock().expect("watchers lock");
        for user in users {
            let key = (app.clone(), user.clone());
            if let Some(conns) = watchers.get_mut(&key) {
                conns.remove(&conn_id);
                if conns.is_empty() {
                    watchers.remove(&key);
                }
            }
        }
    }

    /// The presence service's answer for one connection: `online` of the
    /// watched `users` as of `revision`.
    pub fn initial(
        &self,
        app: &AppId,
        conn_id: u64,
        users: &[String],
        online: &[String],
        revision: u64,
    ) {
        let Some(watch) = users.first().and_then(|user| {
            let watchers = self.watchers.lock().expect("watchers lock");
            watchers
                .get(&(app.clone(), user.clone()))
                .and_then(|conns| conns.get(&conn_id))
                .cloned()
        }) else {
            return;
        };
        let mut came = Vec::new();
        let mut went = Vec::new();
        for user in users {
            let is_online = online.contains(user);
            if watch.update(user, revision, is_online) {
                if is_online {
                    came.push(user.clone());
                } else {
                    went.push(user.clone());
                }
            }
        }
        deliver(&watch.conn, true, &came);
        deliver(&watch.conn, false, &went);
    }

    /// A watched user came online or went offline.
    pub fn event(&self, app: &AppId, event: &OnlineEvent) {
        let watches: Vec<Arc<Watch>> = {
            let watchers = self.watchers.lock().expect("watchers lock");
            match watchers.get(&(app.clone(), event.user_id.clone())) {
                Some(conns) => conns.values().cloned().collect(),
                None => return,
            }
        };
        let users = [event.user_id.clone()];
        for watch in watches {
            if watch.update(&event.user_id, event.revision, event.online) {
                deliver(&watch.conn, event.online, &users);
            }
        }
    }
}

fn deliver(conn: &ConnHandle, online: bool, user_ids: &[String]) {
    if !user_ids.is_empty() {
        let frame = ServerFrame::WatchlistEvents { online, user_ids };
        conn.deliver(frame.to_json().into());
    }
}

#[cfg(test)]
mod tests {
    use super::update;
    use std::collections::HashMap;

    #[test]
    fn only_newer_changes_of_what_was_told_are_sent() {
        let mut told = HashMap::new();
        // Nothing told: offline is what the client assumes.
        assert!(!update(&mut told, "x", 5, false));
        assert!(update(&mut told, "x", 6, true));
        // The same state again (the answer after an event) is not repeated.
        assert!(!update(&mut told, "x", 7, true));
        // An answer older than an event already applied is ignored...
        assert!(!update(&mut told, "x", 6, false));
        // ...and so is an event older than the answer.
        assert!(update(&mut told, "y", 10, true));
        assert!(!update(&mut told, "y", 9, false));
        assert!(update(&mut told, "y", 11, false));
    }
}
