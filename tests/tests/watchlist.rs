//! Watchlists (`pusher.user.watchlist` in pusher-js): a signed-in
//! connection watching users hears `pusher_internal:watchlist_events`
//! `online` / `offline` as they come and go on any gateway, a user with two
//! devices staying online until the last one goes.

use herald_proto::pusher;
use herald_tests::{data_of, PusherSocket, Stack, SECRET};
use serde_json::{json, Value};

/// `pusher:signin` with `watchlist`, waiting for the success.
async fn sign_in_watching(socket: &mut PusherSocket, user: &str, watchlist: &[&str]) {
    let user_data = json!({ "id": user, "watchlist": watchlist }).to_string();
    let sig = pusher::user_signature(SECRET, &socket.socket_id, &user_data);
    socket
        .send_event(
            "pusher:signin",
            json!({ "user_data": user_data, "auth": format!("app-key:{sig}") }),
        )
        .await
        .unwrap();
    let frame = socket
        .next_event_of(&["pusher:signin_success", "pusher:error"])
        .await
        .unwrap();
    assert_eq!(frame["event"], "pusher:signin_success", "{frame}");
}

/// The `(name, user_ids)` of a watchlist frame, or `None` for any other frame.
fn watchlist_event(frame: &Value) -> Option<(String, Vec<String>)> {
    if frame["event"] != "pusher_internal:watchlist_events" {
        return None;
    }
    let data = data_of(frame);
    let events = data["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{frame}");
    let ids = events[0]["user_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    Some((events[0]["name"].as_str().unwrap().to_owned(), ids))
}

/// Frames until the next watchlist event; asserts it is `name` for `users`,
/// and that no other watchlist event came before it.
async fn expect_watchlist(socket: &mut PusherSocket, name: &str, users: &[&str]) {
    let (before, frame) = socket
        .frames_until("a watchlist event", |f| watchlist_event(f).is_some())
        .await
        .unwrap();
    assert!(before.iter().all(|f| watchlist_event(f).is_none()));
    let (got, ids) = watchlist_event(&frame).unwrap();
    assert_eq!(
        (got.as_str(), ids),
        (name, users.iter().map(|u| u.to_string()).collect())
    );
}

#[tokio::test]
async fn a_watcher_sees_users_come_and_go_on_another_gateway_and_two_devices_count_once() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let gw_a = stack.gateway().await;
    let gw_b = stack.gateway().await;

    let mut watcher = PusherSocket::connect(gw_a.port, "app-key").await.unwrap();
    sign_in_watching(&mut watcher, "w", &["x", "y"]).await;

    // x's first device, on the other gateway: online.
    let mut x1 = PusherSocket::connect(gw_b.port, "app-key").await.unwrap();
    x1.sign_in(SECRET, "x", Value::Null).await.unwrap();
    expect_watchlist(&mut watcher, "online", &["x"]).await;

    // A second device of x, then the first one goes: x stays online. The
    // marker (y coming online) proves no offline for x came before it.
    let mut x2 = PusherSocket::connect(gw_a.port, "app-key").await.unwrap();
    x2.sign_in(SECRET, "x", Value::Null).await.unwrap();
    drop(x1);
    let mut y = PusherSocket::connect(gw_b.port, "app-key").await.unwrap();
    // A watcher signing in now is told x is online (x2 is, whether or not
    // x1's close is recorded yet) and hears nothing of y.
    let mut late = PusherSocket::connect(gw_b.port, "app-key").await.unwrap();
    sign_in_watching(&mut late, "late", &["x", "y"]).await;
    expect_watchlist(&mut late, "online", &["x"]).await;
    y.sign_in(SECRET, "y", Value::Null).await.unwrap();
    expect_watchlist(&mut watcher, "online", &["y"]).await;
    expect_watchlist(&mut late, "online", &["y"]).await;

    // x's last device goes: offline, on both gateways' watchers.
    drop(x2);
    expect_watchlist(&mut watcher, "offline", &["x"]).await;
    expect_watchlist(&mut late, "offline", &["x"]).await;
}

#[tokio::test]
async fn a_watchlist_over_pushers_limit_is_refused() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let gw = stack.gateway().await;
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let user_data = json!({ "id": "w", "watchlist": many }).to_string();
    let sig = pusher::user_signature(SECRET, &socket.socket_id, &user_data);
    socket
        .send_event(
            "pusher:signin",
            json!({ "user_data": user_data, "auth": format!("app-key:{sig}") }),
        )
        .await
        .unwrap();
    let frame = socket
        .next_event_of(&["pusher:signin_success", "pusher:error"])
        .await
        .unwrap();
    assert_eq!(frame["event"], "pusher:error", "{frame}");
}
