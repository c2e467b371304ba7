//! Pusher Channels compatibility across two gateways: client events, user
//! sign-in and events to users, terminate_connections, channel queries,
//! server-side subscriptions and de-duplicated multi-channel publishes.

use herald_config::{AppConfig, AppRegistry};
use herald_proto::pusher;
use herald_tests::{PusherSocket, Stack};
use serde_json::{json, Value};
use std::time::Duration;

fn app_with_client_events(per_second: u32) -> AppRegistry {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.enable_client_messages = true;
    app.limits.client_events_per_second = per_second;
    AppRegistry::single(app)
}

fn data_of(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

async fn subscribe_private(socket: &mut PusherSocket, channel: &str) {
    let auth = pusher::channel_auth("app-key", "app-secret", &socket.socket_id, channel, None);
    socket
        .send_event(
            "pusher:subscribe",
            json!({"channel": channel, "auth": auth}),
        )
        .await
        .unwrap();
    let frame = socket
        .next_event_of(&[
            "pusher_internal:subscription_succeeded",
            "pusher:subscription_error",
        ])
        .await
        .unwrap();
    assert_eq!(
        frame["event"], "pusher_internal:subscription_succeeded",
        "{frame}"
    );
}

async fn sign_in(socket: &mut PusherSocket, user_id: &str) {
    let user_data = json!({"id": user_id, "user_info": {"name": user_id}}).to_string();
    let sig = pusher::user_signature("app-secret", &socket.socket_id, &user_data);
    socket
        .send_event(
            "pusher:signin",
            json!({"user_data": user_data, "auth": format!("app-key:{sig}")}),
        )
        .await
        .unwrap();
    let frame = socket
        .next_event_of(&["pusher:signin_success", "pusher:error"])
        .await
        .unwrap();
    assert_eq!(frame["event"], "pusher:signin_success", "{frame}");
    assert_eq!(data_of(&frame)["user_data"], user_data);
}

async fn quiet(socket: &mut PusherSocket) -> bool {
    socket
        .next_frame_within(Duration::from_millis(300))
        .await
        .is_err()
}

#[tokio::test]
async fn client_events_reach_other_subscribers_on_both_gateways_but_not_the_sender() {
    let stack = Stack::with_apps(app_with_client_events(100));
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut a = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut b = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut c = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    for s in [&mut a, &mut b, &mut c] {
        subscribe_private(s, "private-chat").await;
    }
    a.send_text(
        json!({"event": "client-hello", "channel": "private-chat", "data": {"from": "a"}})
            .to_string(),
    )
    .await
    .unwrap();
    for s in [&mut b, &mut c] {
        let frame = s.next_event_of(&["client-hello"]).await.unwrap();
        assert_eq!(frame["channel"], "private-chat");
        assert_eq!(frame["data"], json!({"from": "a"}));
    }
    assert!(quiet(&mut a).await, "never echoed to the sender");
}

#[tokio::test]
async fn client_events_are_refused_on_public_or_unsubscribed_channels_and_when_disabled() {
    let stack = Stack::with_apps(app_with_client_events(100));
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe("public").await.unwrap();
    for channel in ["public", "private-not-joined"] {
        s.send_text(json!({"event": "client-x", "channel": channel, "data": {}}).to_string())
            .await
            .unwrap();
        assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:error");
    }
    s.send_text(json!({"event": "client-x", "data": {}}).to_string())
        .await
        .unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:error");

    let disabled = Stack::start();
    let gw = disabled.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    subscribe_private(&mut s, "private-x").await;
    s.send_text(json!({"event": "client-x", "channel": "private-x", "data": {}}).to_string())
        .await
        .unwrap();
    let frame = s.next_frame().await.unwrap();
    assert_eq!(frame["event"], "pusher:error");
    assert!(frame["data"]["message"]
        .as_str()
        .unwrap()
        .contains("not enabled"));
}

#[tokio::test]
async fn client_events_over_the_rate_limit_get_error_4301() {
    let stack = Stack::with_apps(app_with_client_events(3));
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    subscribe_private(&mut s, "private-x").await;
    for _ in 0..10 {
        s.send_text(json!({"event": "client-x", "channel": "private-x", "data": {}}).to_string())
            .await
            .unwrap();
    }
    let frame = s.next_event_of(&["pusher:error"]).await.unwrap();
    assert_eq!(frame["data"]["code"], 4301);
    // Still connected and usable.
    s.send_event("pusher:ping", json!({})).await.unwrap();
    s.next_event_of(&["pusher:pong"]).await.unwrap();
}

#[tokio::test]
async fn events_sent_to_a_user_reach_all_of_its_connections_on_every_gateway() {
    let stack = Stack::start();
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut phone = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut laptop = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    let mut other = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    sign_in(&mut phone, "alice").await;
    sign_in(&mut laptop, "alice").await;
    sign_in(&mut other, "bob").await;
    // pusher-js subscribes to its user channel after signing in.
    phone.subscribe("#server-to-user-alice").await.unwrap();
    let (status, _) = stack
        .api(&gw1)
        .trigger(&["#server-to-user-alice"], "note", "{\"x\":1}")
        .await
        .unwrap();
    assert_eq!(status, 200);
    for s in [&mut phone, &mut laptop] {
        let frame = s.next_event_of(&["note"]).await.unwrap();
        assert_eq!(frame["channel"], "#server-to-user-alice");
        assert_eq!(frame["data"], "{\"x\":1}");
    }
    assert!(quiet(&mut other).await);
}

#[tokio::test]
async fn sign_in_with_a_bad_signature_is_refused_with_4009() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let user_data = json!({"id": "mallory"}).to_string();
    s.send_event(
        "pusher:signin",
        json!({"user_data": user_data, "auth": "app-key:bad"}),
    )
    .await
    .unwrap();
    let frame = s.next_frame().await.unwrap();
    assert_eq!(frame["event"], "pusher:error");
    assert_eq!(frame["data"]["code"], 4009);
    assert_eq!(s.closed().await.unwrap(), Some(4009));

    // A user channel without signing in is refused.
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.send_event(
        "pusher:subscribe",
        json!({"channel": "#server-to-user-bob"}),
    )
    .await
    .unwrap();
    assert_eq!(
        s.next_frame().await.unwrap()["event"],
        "pusher:subscription_error"
    );
    // user_data without an id.
    let user_data = json!({"name": "x"}).to_string();
    let sig = pusher::user_signature("app-secret", &s.socket_id, &user_data);
    s.send_event(
        "pusher:signin",
        json!({"user_data": user_data, "auth": format!("app-key:{sig}")}),
    )
    .await
    .unwrap();
    assert_eq!(s.next_frame().await.unwrap()["data"]["code"], 4009);
}

#[tokio::test]
async fn terminate_connections_closes_every_connection_of_the_user() {
    let stack = Stack::start();
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut a1 = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut a2 = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    let mut b = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    sign_in(&mut a1, "alice").await;
    sign_in(&mut a2, "alice").await;
    sign_in(&mut b, "bob").await;
    let (status, body) = stack
        .api(&gw1)
        .post("/users/alice/terminate_connections", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 2);
    assert_eq!(a1.closed().await.unwrap(), Some(4009));
    assert_eq!(a2.closed().await.unwrap(), Some(4009));
    b.send_event("pusher:ping", json!({})).await.unwrap();
    b.next_event_of(&["pusher:pong"]).await.unwrap();
}

#[tokio::test]
async fn channel_queries_count_subscriptions_across_gateways() {
    let stack = Stack::start();
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut sockets = Vec::new();
    for (port, channel) in [
        (gw1.port, "room-1"),
        (gw2.port, "room-1"),
        (gw2.port, "room-2"),
        (gw1.port, "other"),
    ] {
        let mut s = PusherSocket::connect(port, "app-key").await.unwrap();
        s.subscribe(channel).await.unwrap();
        sockets.push(s);
    }
    let api = stack.api(&gw1);
    let (status, body) = api
        .get(
            "/channels",
            &[
                ("filter_by_prefix", "room-"),
                ("info", "subscription_count"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channels"]["room-1"]["subscription_count"], 2);
    assert_eq!(body["channels"]["room-2"]["subscription_count"], 1);
    assert!(body["channels"].get("other").is_none());

    let (_, body) = api
        .get("/channels/room-1", &[("info", "subscription_count")])
        .await
        .unwrap();
    assert_eq!(body, json!({"occupied": true, "subscription_count": 2}));
    let (_, body) = api.get("/channels/empty", &[]).await.unwrap();
    assert_eq!(body, json!({"occupied": false}));

    // Bad queries.
    let (status, _) = api
        .get("/channels", &[("info", "user_count")])
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = api
        .get("/channels/room-1", &[("info", "bogus")])
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = api.get("/channels/room-1/users", &[]).await.unwrap();
    assert_eq!(status, 400);
    let (status, _) = api.get("/channels/bad%20name", &[]).await.unwrap();
    assert_eq!(status, 400);

    // After leaving, the counts drop.
    drop(sockets);
    let mut body = Value::Null;
    for _ in 0..50 {
        body = api.get("/channels", &[]).await.unwrap().1;
        if body["channels"].as_object().is_some_and(|c| c.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body, json!({"channels": {}}));
}

#[tokio::test]
async fn publishing_with_info_returns_subscription_counts() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe("counted").await.unwrap();
    let (status, body) = stack
        .api(&gw)
        .post("/events", &json!({"name": "e", "channels": ["counted", "nobody"], "data": "d", "info": "subscription_count"}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channels"]["counted"]["subscription_count"], 1);
    assert_eq!(body["channels"]["nobody"]["subscription_count"], 0);
}

#[tokio::test]
async fn the_server_can_subscribe_and_unsubscribe_a_users_connections() {
    let stack = Stack::start();
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut a1 = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut a2 = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    sign_in(&mut a1, "alice").await;
    sign_in(&mut a2, "alice").await;
    let api = stack.api(&gw1);
    let (status, body) = api
        .post(
            "/users/alice/subscriptions",
            &json!({"channels": ["news", "private-team"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 2);
    for s in [&mut a1, &mut a2] {
        let mut got = Vec::new();
        for _ in 0..2 {
            let f = s
                .next_event_of(&["pusher_internal:subscription_succeeded"])
                .await
                .unwrap();
            got.push(f["channel"].as_str().unwrap().to_owned());
        }
        got.sort();
        assert_eq!(got, ["news", "private-team"]);
    }
    api.trigger(&["private-team"], "memo", "m").await.unwrap();
    a1.next_event_of(&["memo"]).await.unwrap();
    a2.next_event_of(&["memo"]).await.unwrap();

    // Unsubscribe (DELETE with a signed body).
    let bytes = serde_json::to_vec(&json!({"channels": ["news"]})).unwrap();
    let path = "/apps/app-id/users/alice/subscriptions";
    let (status, _) = api.signed("DELETE", path, Some(bytes), &[]).await.unwrap();
    assert_eq!(status, 200);
    a1.next_event_of(&["herald:unsubscribed"]).await.unwrap();
    api.trigger(&["news"], "gone", "g").await.unwrap();
    api.trigger(&["private-team"], "kept", "k").await.unwrap();
    assert_eq!(
        a1.next_event_of(&["gone", "kept"]).await.unwrap()["event"],
        "kept"
    );

    // Bad bodies.
    let (status, _) = api
        .post("/users/alice/subscriptions", &json!({"channels": []}))
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = api
        .post(
            "/users/alice/subscriptions",
            &json!({"channels": ["bad name"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = api
        .post("/users/alice/subscriptions", &json!({"nope": 1}))
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_deduplicated_multi_channel_publish_reaches_a_connection_once() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut both = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut one = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    both.subscribe("a").await.unwrap();
    both.subscribe("b").await.unwrap();
    one.subscribe("b").await.unwrap();
    let api = stack.api(&gw);
    let (status, _) = api
        .post(
            "/events",
            &json!({"name": "once", "channels": ["a", "b"], "data": "1", "deduplicate": true}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    both.next_event_of(&["once"]).await.unwrap();
    one.next_event_of(&["once"]).await.unwrap();
    assert!(
        quiet(&mut both).await,
        "delivered once, not once per channel"
    );
    // Without the flag, Pusher semantics: once per channel.
    api.trigger(&["a", "b"], "twice", "2").await.unwrap();
    both.next_event_of(&["twice"]).await.unwrap();
    both.next_event_of(&["twice"]).await.unwrap();
}

#[tokio::test]
async fn client_events_are_refused_on_encrypted_channels() {
    let stack = Stack::with_apps(app_with_client_events(100));
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    subscribe_private(&mut s, "private-encrypted-vault").await;
    s.send_text(
        json!({"event": "client-x", "channel": "private-encrypted-vault", "data": {}}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:error");
}

#[tokio::test]
async fn terminate_connections_also_answers_without_the_apps_prefix() {
    // pusher-http-python 3.x signs and posts `/users/{id}/terminate_connections`.
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    sign_in(&mut s, "dana").await;
    let api = stack.api(&gw);
    let path = "/users/dana/terminate_connections";
    let body = b"{}".to_vec();
    let (status, _) = api
        .signed("POST", path, Some(body.clone()), &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(s.closed().await.unwrap(), Some(4009));
    // An unknown key is refused.
    let mut stranger = api.clone();
    stranger.key = "nope".into();
    let (status, _) = stranger
        .signed("POST", path, Some(body), &[])
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_cache_channel_without_events_answers_a_subscribe_with_cache_miss() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    socket.subscribe("cache-empty").await.unwrap();
    let frame = socket.next_frame().await.unwrap();
    assert_eq!(frame["event"], "pusher:cache_miss", "{frame}");
    assert_eq!(frame["channel"], "cache-empty");
    // A plain channel has no such thing.
    socket.subscribe("plain").await.unwrap();
    assert!(quiet(&mut socket).await);
}

#[tokio::test]
async fn a_cache_channel_sends_its_last_event_on_subscribe_then_only_newer_ones() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let api = stack.api(&gw);
    for n in 1..=2 {
        let (status, body) = api
            .trigger(&["cache-score"], "score", &format!("{{\"n\":{n}}}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    socket.subscribe("cache-score").await.unwrap();
    let cached = socket.next_frame().await.unwrap();
    assert_eq!(cached["event"], "score", "{cached}");
    assert_eq!(cached["channel"], "cache-score");
    assert_eq!(data_of(&cached)["n"], 2);
    let seq = cached["seq"].as_u64().unwrap();

    api.trigger(&["cache-score"], "score", "{\"n\":3}")
        .await
        .unwrap();
    let live = socket.next_frame().await.unwrap();
    assert_eq!(data_of(&live)["n"], 3, "{live}");
    assert!(live["seq"].as_u64().unwrap() > seq);
    assert!(quiet(&mut socket).await, "nothing sent twice");

    // Private cache channels too, after their auth.
    api.trigger(&["private-cache-x"], "state", "{\"on\":true}")
        .await
        .unwrap();
    subscribe_private(&mut socket, "private-cache-x").await;
    let cached = socket.next_frame().await.unwrap();
    assert_eq!(cached["event"], "state", "{cached}");
    assert_eq!(data_of(&cached)["on"], true);
}
