//! The signed-in users of this gateway: user → its local connections, for
//! events to a user and the control plane.

use super::conn::ConnHandle;
use herald_proto::{AppId, UserId};
use std::collections::HashMap;
use std::sync::Mutex;

/// User → connection index of one gateway.
#[derive(Default)]
pub(crate) struct Users {
    users: Mutex<HashMap<(AppId, UserId), HashMap<u64, ConnHandle>>>,
}

impl Users {
    /// Record a signed-in connection of a user.
    pub fn add(&self, app: &AppId, user_id: &UserId, conn: ConnHandle) {
        let mut users = self.users.lock().expect("users lock");
        users
            .entry((app.clone(), user_id.clone()))
            .or_default()
            .insert(conn.id, conn);
    }

    /// Forget a signed-in connection.
    pub fn remove(&self, app: &AppId, user_id: &UserId, conn_id: u64) {
        let mut users = self.users.lock().expect("users lock");
        let key = (app.clone(), user_id.clone());
        if let Some(conns) = users.get_mut(&key) {
            conns.remove(&conn_id);
            if conns.is_empty() {
                users.remove(&key);
            }
        }
    }

    /// The local connections of a signed-in user.
    pub fn connections(&self, app: &AppId, user_id: &UserId) -> Vec<ConnHandle> {
        let users = self.users.lock().expect("users lock");
        users
            .get(&(app.clone(), user_id.clone()))
            .map(|conns| conns.values().cloned().collect())
            .unwrap_or_default()
    }
}
