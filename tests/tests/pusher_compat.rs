//! Pusher Channels compatibility across two gateways: client events, user
//! sign-in and events to users, terminate_connections, channel queries,
//! server-side subscriptions and de-duplicated multi-channel publishes.

use herald_config::{AppConfig, AppRegistry};
use herald_proto::pusher;
use herald_tests::{data_of, PusherSocket, Stack, SECRET};
use serde_json::{json, Value};
use std::time::Duration;

fn app_with_client_events(per_second: u32) -> AppRegistry {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.enable_client_messages = true;
    app.limits.client_events_per_second = per_second;
    AppRegistry::single(app)
}

/// Sign `socket` in as `user` (with a `name` as user info).
async fn sign_in(socket: &mut PusherSocket, user: &str) {
    socket
        .sign_in(SECRET, user, json!({ "name": user }))
        .await
        .unwrap();
}

#[tokio::test]
async fn client_events_reach_other_subscribers_on_both_gateways_but_not_the_sender() {
    let stack = Stack::with_apps(app_with_client_events(100));
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut a = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut b = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut c = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    for s in [&mut a, &mut b, &mut c] {
        s.subscribe_private(SECRET, "private-chat").await.unwrap();
    }
    a.send_client_event("private-chat", "client-hello", json!({"from": "a"}))
        .await
        .unwrap();
    for s in [&mut b, &mut c] {
        let frame = s.quiet_until_event("client-hello").await.unwrap();
        assert_eq!(frame["channel"], "private-chat");
        assert_eq!(frame["data"], json!({"from": "a"}));
    }
    // The marker: b's answer, relayed by the same gateway after a's event.
    // Had a's event been echoed to a, it would come first.
    b.send_client_event("private-chat", "client-reply", json!({"from": "b"}))
        .await
        .unwrap();
    let reply = a.quiet_until_event("client-reply").await.unwrap();
    assert_eq!(
        reply["data"],
        json!({"from": "b"}),
        "never echoed to the sender"
    );
    c.quiet_until_event("client-reply").await.unwrap();
}

#[tokio::test]
async fn client_events_are_refused_on_public_or_unsubscribed_channels_and_when_disabled() {
    let stack = Stack::with_apps(app_with_client_events(100));
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe("public").await.unwrap();
    for channel in ["public", "private-not-joined"] {
        s.send_client_event(channel, "client-x", json!({}))
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
    s.subscribe_private(SECRET, "private-x").await.unwrap();
    s.send_client_event("private-x", "client-x", json!({}))
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
async fn client_events_over_the_rate_limit_get_error_4301_and_at_most_the_limit_get_through() {
    const PER_SECOND: u32 = 3;
    const SENT: usize = 10;
    let stack = Stack::with_apps(app_with_client_events(PER_SECOND));
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut receiver = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe_private(SECRET, "private-x").await.unwrap();
    receiver
        .subscribe_private(SECRET, "private-x")
        .await
        .unwrap();
    for n in 0..SENT {
        s.send_client_event("private-x", "client-x", json!({ "n": n }))
            .await
            .unwrap();
    }
    // The marker, once the limiter has refilled (a full second's quota):
    // relayed after everything above that got through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.send_client_event("private-x", "client-marker", json!({}))
        .await
        .unwrap();
    let (relayed, _) = receiver
        .frames_until("client-marker", |f| f["event"] == "client-marker")
        .await
        .unwrap();
    let through: Vec<u64> = relayed
        .iter()
        .map(|f| {
            assert_eq!(f["event"], "client-x", "{f}");
            f["data"]["n"].as_u64().unwrap()
        })
        .collect();
    // A burst of the per-second quota passes (the first events), the rest
    // is refused: at least one, at most the limit, each once and in order.
    assert!(
        !through.is_empty() && through.len() <= PER_SECOND as usize,
        "{through:?}"
    );
    assert_eq!(through[0], 0, "{through:?}");
    assert!(through.windows(2).all(|w| w[0] < w[1]), "{through:?}");

    // The sender got a 4301 for every refused one, and is still connected.
    s.send_event("pusher:ping", json!({})).await.unwrap();
    let (errors, _) = s
        .frames_until("pusher:pong", |f| f["event"] == "pusher:pong")
        .await
        .unwrap();
    for frame in &errors {
        assert_eq!(frame["event"], "pusher:error", "{frame}");
        assert_eq!(frame["data"]["code"], 4301, "{frame}");
    }
    assert_eq!(errors.len(), SENT - through.len());
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
        let frame = s.quiet_until_event("note").await.unwrap();
        assert_eq!(frame["channel"], "#server-to-user-alice");
        assert_eq!(frame["data"], "{\"x\":1}");
    }
    // The marker: an event to bob, sent after alice's on the same path.
    stack
        .api(&gw1)
        .trigger(&["#server-to-user-bob"], "marker", "{}")
        .await
        .unwrap();
    let marker = other.quiet_until_event("marker").await.unwrap();
    assert_eq!(marker["channel"], "#server-to-user-bob");
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
    both.quiet_until_event("once").await.unwrap();
    one.quiet_until_event("once").await.unwrap();
    // Without the flag, Pusher semantics: once per channel. Published after
    // the first event on both its channels, these are the markers: a second
    // copy of "once" would come before them.
    api.trigger(&["a", "b"], "twice", "2").await.unwrap();
    let mut channels = Vec::new();
    for _ in 0..2 {
        let frame = both
            .quiet_until_event("twice")
            .await
            .expect("delivered once, not once per channel");
        channels.push(frame["channel"].as_str().unwrap().to_owned());
    }
    channels.sort();
    assert_eq!(channels, ["a", "b"]);
    let frame = one.quiet_until_event("twice").await.unwrap();
    assert_eq!(frame["channel"], "b");
}

#[tokio::test]
async fn client_events_are_refused_on_encrypted_channels() {
    let stack = Stack::with_apps(app_with_client_events(100));
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe_private(SECRET, "private-encrypted-vault")
        .await
        .unwrap();
    s.send_client_event("private-encrypted-vault", "client-x", json!({}))
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
    // A plain channel has no such thing: its first event is the next frame.
    socket.subscribe("plain").await.unwrap();
    stack
        .api(&gw)
        .trigger(&["plain"], "marker", "{}")
        .await
        .unwrap();
    let marker = socket.quiet_until_event("marker").await.unwrap();
    assert_eq!(marker["channel"], "plain");
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

    for n in 3..=4 {
        api.trigger(&["cache-score"], "score", &format!("{{\"n\":{n}}}"))
            .await
            .unwrap();
    }
    // Each newer event once, the next frames in order: nothing sent twice.
    let mut last = seq;
    for n in 3..=4 {
        let live = socket.quiet_until_event("score").await.unwrap();
        assert_eq!(data_of(&live)["n"], n, "{live}");
        let seq = live["seq"].as_u64().unwrap();
        assert!(seq > last, "{live}");
        last = seq;
    }

    // Private cache channels too, after their auth.
    api.trigger(&["private-cache-x"], "state", "{\"on\":true}")
        .await
        .unwrap();
    socket
        .subscribe_private(SECRET, "private-cache-x")
        .await
        .unwrap();
    let cached = socket.next_frame().await.unwrap();
    assert_eq!(cached["event"], "state", "{cached}");
    assert_eq!(data_of(&cached)["on"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_subscribing_to_a_cache_channel_while_events_keep_coming_miss_none_and_get_none_twice(
) {
    const CLIENTS: usize = 16;
    let stack = Stack::start();
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let api = stack.api(&gw1);
    // A first event, so that every subscriber's cached frame is an event.
    let (status, _) = api.trigger(&["cache-race"], "tick", "0").await.unwrap();
    assert_eq!(status, 200);
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn({
        let (api, stop) = (api.clone(), stop.clone());
        async move {
            let mut n = 1;
            while !stop.is_cancelled() {
                let (status, body) = api
                    .trigger(&["cache-race"], "tick", &n.to_string())
                    .await
                    .unwrap();
                assert_eq!(status, 200, "{body}");
                n += 1;
            }
            n
        }
    });
    // Clients subscribe one after another, on both gateways, while the
    // publisher goes on; each reads everything until the final marker.
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let port = if i % 2 == 0 { gw1.port } else { gw2.port };
        let mut socket = PusherSocket::connect(port, "app-key").await.unwrap();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        clients.push((
            subscribed_rx,
            tokio::spawn(async move {
                socket.subscribe("cache-race").await.unwrap();
                let _ = subscribed_tx.send(());
                let (frames, _) = socket
                    .frames_until("the end marker", |f| f["event"] == "end")
                    .await
                    .unwrap();
                frames
            }),
        ));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for (subscribed, _) in &mut clients {
        subscribed.await.unwrap();
    }
    stop.cancel();
    let published = publisher.await.unwrap();
    api.trigger(&["cache-race"], "end", "{}").await.unwrap();
    let stored = stack.stored_seqs("cache-race").await;
    assert_eq!(stored.len(), published + 1, "every tick and the marker");
    let stored_ticks = &stored[..published];

    for (i, (_, client)) in clients.into_iter().enumerate() {
        let frames = client.await.unwrap();
        assert!(!frames.is_empty(), "client {i} got no cached event");
        let seqs: Vec<u64> = frames
            .iter()
            .map(|f| {
                assert_eq!(f["event"], "tick", "client {i}: {f}");
                assert_eq!(f["channel"], "cache-race");
                f["seq"].as_u64().unwrap()
            })
            .collect();
        // From its first (the cached event) on: every stored event once, in
        // order.
        let from = stored_ticks
            .iter()
            .position(|s| *s == seqs[0])
            .expect("the cached event is a stored one");
        assert_eq!(seqs, stored_ticks[from..], "client {i}");
    }
}

#[tokio::test]
async fn a_cache_channels_last_event_older_than_the_max_age_gives_cache_miss() {
    const MAX_AGE: Duration = Duration::from_secs(2);
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.cache_max_age = MAX_AGE;
    let gw = stack.gateway_with(config).await;
    let api = stack.api(&gw);
    api.trigger(&["cache-aging"], "state", "{\"v\":1}")
        .await
        .unwrap();

    // Young: sent on subscribe.
    let mut young = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    young.subscribe("cache-aging").await.unwrap();
    let cached = young.quiet_until_event("state").await.unwrap();
    assert_eq!(data_of(&cached)["v"], 1);
    let ts = cached["ts"].as_i64().unwrap();

    // Older than the max age: a miss, then only newer events.
    let old_at = ts + MAX_AGE.as_millis() as i64 + 50;
    tokio::time::sleep(Duration::from_millis(
        (old_at - herald_proto::now_ms()).max(0) as u64,
    ))
    .await;
    let mut late = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    late.subscribe("cache-aging").await.unwrap();
    let miss = late.quiet_until_event("pusher:cache_miss").await.unwrap();
    assert_eq!(miss["channel"], "cache-aging");
    api.trigger(&["cache-aging"], "state", "{\"v\":2}")
        .await
        .unwrap();
    let live = late.quiet_until_event("state").await.unwrap();
    assert_eq!(data_of(&live)["v"], 2);
    let live = young.quiet_until_event("state").await.unwrap();
    assert_eq!(data_of(&live)["v"], 2);
}
