//! Test kit: real dependencies for Herald's tests, started on demand.
//!
//! * [`NatsServer`] spawns a real `nats-server -js` on a free loopback port
//!   with its own temporary store, killed and deleted on drop.
//! * [`TestDatabase`] creates a fresh PostgreSQL database per test in a
//!   private cluster (started by `scripts/test-postgres`, or the one named by
//!   `HERALD_TEST_DATABASE_URL`).
//! * [`PusherSocket`] is a small Pusher-protocol WebSocket client and
//!   [`PusherApi`] a signed Pusher HTTP API client, both written against the
//!   protocol, independent of the gateway's code.
//! * [`TcpProxy`] stands between a client and a server and can pause (hold
//!   everything, connection up) or cut (close, refuse) to cut a service off
//!   from NATS.

mod api;
mod nats;
mod postgres;
mod proxy;
mod socket;

pub use api::PusherApi;
pub use nats::NatsServer;
pub use postgres::TestDatabase;
pub use proxy::TcpProxy;
pub use socket::{data_of, Closed, PusherSocket, FRAME_TIMEOUT};

use std::time::Duration;

/// The development app every test uses unless it needs another.
pub fn dev_app() -> herald_config::AppConfig {
    herald_config::AppConfig::new("app-id", "app-key", "app-secret")
}

/// A unique, valid subject prefix, so tests sharing a server never collide.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Poll `check` every 20 ms until it returns `Some`, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
