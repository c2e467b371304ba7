//! The gateway against a real NATS server: the Pusher WebSocket protocol and
//! the signed HTTP API, good paths and bad.

use futures::{SinkExt, StreamExt};
use herald_config::{AppConfig, AppRegistry};
use herald_proto::pusher;
use herald_testkit::FRAME_TIMEOUT;
use herald_tests::{data_of, metric, Closed, PusherSocket, Running, Stack, SECRET};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_connects_and_gets_a_pusher_socket_id() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let (a, b) = socket.socket_id.split_once('.').unwrap();
    assert!(a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
}

#[tokio::test]
async fn a_published_event_reaches_a_subscribed_client_with_herald_fields() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    socket.subscribe("my-channel").await.unwrap();
    let (status, body) = stack
        .api(&gw)
        .trigger(&["my-channel"], "my-event", "{\"hello\":1}")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let frame = socket.next_event_of(&["my-event"]).await.unwrap();
    assert_eq!(frame["channel"], "my-channel");
    assert_eq!(frame["data"], "{\"hello\":1}");
    assert!(frame["seq"].as_u64().unwrap() >= 1);
    assert!(frame["id"].as_str().unwrap().len() >= 32);
    assert!(frame["ts"].as_i64().unwrap() > 1_700_000_000_000);
}

#[tokio::test]
async fn an_event_goes_only_to_subscribers_of_its_channel_and_not_to_the_excluded_socket() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut a = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut b = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut other = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    a.subscribe("room").await.unwrap();
    b.subscribe("room").await.unwrap();
    other.subscribe("elsewhere").await.unwrap();
    let api = stack.api(&gw);
    let (status, _) = api
        .post(
            "/events",
            &json!({"name": "e1", "channels": ["room"], "data": "x", "socket_id": a.socket_id}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    api.trigger(&["room", "elsewhere"], "e2", "y")
        .await
        .unwrap();
    // `a` was excluded from e1, so its first event is e2.
    assert_eq!(a.next_event_of(&["e1", "e2"]).await.unwrap()["event"], "e2");
    assert_eq!(b.next_event_of(&["e1", "e2"]).await.unwrap()["event"], "e1");
    assert_eq!(b.next_event_of(&["e1", "e2"]).await.unwrap()["event"], "e2");
    assert_eq!(
        other.next_event_of(&["e1", "e2"]).await.unwrap()["event"],
        "e2"
    );
}

#[tokio::test]
async fn after_unsubscribing_a_client_receives_nothing_more() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe("a").await.unwrap();
    s.subscribe("b").await.unwrap();
    s.send_event("pusher:unsubscribe", json!({"channel": "a"}))
        .await
        .unwrap();
    // A witness still on "a": once it has the event, the gateway has fanned
    // it out to every local subscriber of "a".
    let mut witness = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    witness.subscribe("a").await.unwrap();
    let api = stack.api(&gw);
    api.trigger(&["a"], "gone", "1").await.unwrap();
    api.trigger(&["b"], "kept", "2").await.unwrap();
    witness.quiet_until_event("gone").await.unwrap();
    s.quiet_until_event("kept").await.unwrap();
    s.quiet_until_pong().await.unwrap();
}

#[tokio::test]
async fn ping_gets_pong() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.send_event("pusher:ping", json!({})).await.unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:pong");
}

/// A socket on a gateway of `stack` that pings after `idle` of silence and
/// waits as long again for the pong (the gateway must be kept alive).
async fn socket_pinged_after(stack: &Stack, idle: Duration) -> (Running, PusherSocket) {
    let mut config = stack.gateway_config();
    config.activity_timeout = idle;
    config.pong_timeout = idle;
    let gw = stack.gateway_with(config).await;
    let socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    (gw, socket)
}

#[tokio::test]
async fn an_idle_client_is_pinged_and_closed_with_4201_when_it_does_not_answer() {
    let stack = Stack::start();
    let (_gw, mut s) = socket_pinged_after(&stack, Duration::from_millis(300)).await;
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:ping");
    assert_eq!(
        s.closed().await.unwrap(),
        Some(pusher::codes::PONG_NOT_RECEIVED)
    );
}

#[tokio::test]
async fn a_client_that_keeps_talking_is_not_pinged_and_one_that_answers_the_ping_stays() {
    let stack = Stack::start();
    let (_gw, mut s) = socket_pinged_after(&stack, Duration::from_millis(400)).await;
    // Over three activity timeouts of traffic: every answer is the pong,
    // never a ping (the timer is moved by each frame, lazily).
    for _ in 0..12 {
        s.send_event("pusher:ping", json!({})).await.unwrap();
        assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:pong");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Quiet now: pinged; answered, so pinged again after the next quiet
    // spell rather than closed.
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:ping");
    s.send_event("pusher:pong", json!({})).await.unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:ping");
    s.send_event("pusher:pong", json!({})).await.unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:ping");
}

#[tokio::test]
async fn an_unknown_app_key_gets_error_4001_and_is_closed() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut ws =
        PusherSocket::connect_raw(&format!("ws://127.0.0.1:{}/app/nope?protocol=7", gw.port))
            .await
            .unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("expected an error frame")
    };
    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(frame["event"], "pusher:error");
    assert_eq!(frame["data"]["code"], 4001);
    let Some(Ok(Message::Close(Some(close)))) = ws.next().await else {
        panic!("expected a close")
    };
    assert_eq!(u16::from(close.code), 4001);
}

#[tokio::test]
async fn protocol_versions_are_checked_with_pushers_close_codes() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    for (query, code) in [("", 4008), ("?protocol=abc", 4006), ("?protocol=99", 4007)] {
        let mut ws =
            PusherSocket::connect_raw(&format!("ws://127.0.0.1:{}/app/app-key{query}", gw.port))
                .await
                .unwrap();
        let mut close_code = None;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(Some(close)) = msg {
                close_code = Some(u16::from(close.code));
                break;
            }
        }
        assert_eq!(close_code, Some(code), "query {query:?}");
    }
}

#[tokio::test]
async fn malformed_frames_get_a_pusher_error_and_the_connection_stays_usable() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    for bad in ["not json", "{\"data\":{}}", "[1,2]", "{\"event\":42}"] {
        s.send_text(bad).await.unwrap();
        let frame = s.next_frame().await.unwrap();
        assert_eq!(frame["event"], "pusher:error", "for {bad}");
        assert!(frame["data"]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid message"));
    }
    s.send_text(json!({"event": "pusher:subscribe", "data": {}}).to_string())
        .await
        .unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:error");
    s.send_text(json!({"event": "herald:nonsense", "data": {}}).to_string())
        .await
        .unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:error");
    s.inner()
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(s.next_frame().await.unwrap()["event"], "pusher:error");
    // Still usable.
    s.subscribe("still-here").await.unwrap();
}

#[tokio::test]
async fn oversized_frames_are_refused_and_giant_ones_close_the_socket() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let big = json!({"event": "pusher:subscribe", "data": {"channel": "x".repeat(11 * 1024)}})
        .to_string();
    s.send_text(big).await.unwrap();
    let frame = s.next_frame().await.unwrap();
    assert_eq!(frame["event"], "pusher:error");
    assert!(frame["data"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeds the limit"));
    s.subscribe("ok").await.unwrap();
    // Beyond the hard cap the WebSocket layer itself refuses the frame: the
    // connection is closed with RFC 6455's 1009 (message too big), no reason,
    // and no pusher:error first.
    s.send_text("x".repeat(200 * 1024)).await.unwrap();
    let (before, close) = s.frames_before_close().await.unwrap();
    assert_eq!(before, Vec::<Value>::new(), "no frame before the close");
    assert_eq!(close, Closed::Code(1009, String::new()));
}

#[tokio::test]
async fn invalid_channel_names_get_a_subscription_error() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let long = "a".repeat(165);
    for bad in ["", "bad channel", "bad*", "emoji-☃", long.as_str()] {
        s.send_event("pusher:subscribe", json!({"channel": bad}))
            .await
            .unwrap();
        let frame = s.next_frame().await.unwrap();
        assert_eq!(frame["event"], "pusher:subscription_error", "for {bad:?}");
        assert_eq!(frame["channel"], bad);
        let data = data_of(&frame);
        assert_eq!(data["status"], 400);
        assert_eq!(data["type"], "InvalidChannel");
    }
    s.subscribe("fine.name;with,all=the@chars_-").await.unwrap();
}

#[tokio::test]
async fn private_channels_need_a_valid_signature_for_this_socket() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let other_socket = "1.1";
    let cases = [
        json!({"channel": "private-x"}),
        json!({"channel": "private-x", "auth": "app-key:deadbeef"}),
        json!({"channel": "private-x", "auth": pusher::channel_auth("app-key", "app-secret", other_socket, "private-x", None)}),
        json!({"channel": "private-x", "auth": pusher::channel_auth("app-key", "wrong", &s.socket_id, "private-x", None)}),
    ];
    for case in cases {
        let frame = s.subscribe_with(case.clone()).await.unwrap();
        assert_eq!(frame["event"], "pusher:subscription_error", "{case}");
        let data = data_of(&frame);
        assert_eq!(data["type"], "AuthError");
        assert_eq!(data["status"], 401);
    }
    s.subscribe_private(SECRET, "private-x").await.unwrap();
    stack
        .api(&gw)
        .trigger(&["private-x"], "secret", "s")
        .await
        .unwrap();
    assert_eq!(
        s.next_event_of(&["secret"]).await.unwrap()["channel"],
        "private-x"
    );
}

#[tokio::test]
async fn a_connection_cannot_exceed_its_channel_limit() {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_channels_per_connection = 2;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe("one").await.unwrap();
    s.subscribe("two").await.unwrap();
    s.send_event("pusher:subscribe", json!({"channel": "three"}))
        .await
        .unwrap();
    let frame = s.next_frame().await.unwrap();
    assert_eq!(frame["event"], "pusher:subscription_error");
    assert_eq!(data_of(&frame)["type"], "LimitReached");
}

#[tokio::test]
async fn an_app_over_its_connection_quota_gets_4004() {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_connections = 1;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let gw = stack.gateway().await;
    let _first = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let err = PusherSocket::connect(gw.port, "app-key")
        .await
        .err()
        .expect("second connection refused");
    assert!(err.to_string().contains("4004"), "{err}");
}

#[tokio::test]
async fn the_http_api_rejects_bad_signatures_and_unknown_apps_each_for_its_reason() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let http = reqwest::Client::new();
    let good = stack.api(&gw);
    let body = serde_json::to_vec(&json!({"name": "e", "channels": ["c"], "data": "d"})).unwrap();
    let now = herald_proto::now_ms() / 1000;
    let post = |path: String, query: String, body: Vec<u8>| {
        let http = http.clone();
        let url = format!("{}{path}?{query}", good.base);
        async move {
            let resp = http.post(url).body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (
                status,
                body["error"]["message"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let path = "/apps/app-id/events".to_string();

    // Correct request: 200.
    let q = good.signed_query("POST", &path, Some(&body), &[], now);
    assert_eq!(post(path.clone(), q, body.clone()).await.0, 200);
    let refused = |(status, message): (u16, String), expected: u16, reason: &str| {
        assert_eq!(status, expected, "{message}");
        assert!(
            message.contains(reason),
            "{message:?} does not say {reason:?}"
        );
    };
    // Wrong secret.
    let mut wrong = good.clone();
    wrong.secret = "nope".into();
    let q = wrong.signed_query("POST", &path, Some(&body), &[], now);
    refused(
        post(path.clone(), q, body.clone()).await,
        401,
        "Invalid signature",
    );
    // Body changed after signing: body_md5 mismatch.
    let q = good.signed_query("POST", &path, Some(&body), &[], now);
    let mut tampered = body.clone();
    tampered[2] = b'X';
    refused(
        post(path.clone(), q, tampered).await,
        401,
        "body_md5 does not match",
    );
    // Wrong key.
    let mut wrong_key = good.clone();
    wrong_key.key = "other".into();
    let q = wrong_key.signed_query("POST", &path, Some(&body), &[], now);
    refused(
        post(path.clone(), q, body.clone()).await,
        401,
        "Unknown auth_key",
    );
    // Missing signature parameters.
    refused(
        post(path.clone(), "auth_key=app-key".into(), body.clone()).await,
        401,
        "Missing auth_key, auth_timestamp",
    );
    // Unknown app.
    let other = "/apps/nope/events".to_string();
    let q = good.signed_query("POST", &other, Some(&body), &[], now);
    // Like a wrong key, so a prober learns nothing about which app ids exist.
    refused(post(other, q, body.clone()).await, 401, "Unknown auth_key");
}

/// Run `request` with the current Unix second until the second did not
/// change while it ran, so that the server judged it against that very
/// second; returns that second's answer.
async fn within_one_second<F, Fut>(mut request: F) -> (u16, Value)
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u16, Value)>>,
{
    for _ in 0..10 {
        let before = herald_proto::now_ms() / 1000;
        let answer = request(before).await.unwrap();
        if herald_proto::now_ms() / 1000 == before {
            return answer;
        }
    }
    panic!("no request ran within one second in ten tries");
}

#[tokio::test]
async fn signed_timestamps_up_to_600_seconds_either_side_of_the_server_clock_are_accepted_and_no_further(
) {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let api = stack.api(&gw);
    let event = serde_json::to_vec(&json!({"name": "e", "channels": ["c"], "data": "d"})).unwrap();
    let requests = [
        ("GET", "/apps/app-id/channels", None),
        ("POST", "/apps/app-id/events", Some(event)),
    ];
    for (method, path, body) in requests {
        for skew in [-601, -599, 599, 601] {
            let (status, reply) =
                within_one_second(|now| api.signed_at(method, path, body.clone(), &[], now + skew))
                    .await;
            let case = format!("{method} {path} at now{skew:+}");
            if skew.abs() < 600 {
                assert_eq!(status, 200, "{case}: {reply}");
            } else {
                assert_eq!(status, 401, "{case}: {reply}");
                assert_eq!(reply["error"]["code"], "unauthorized", "{case}: {reply}");
                let message = reply["error"]["message"].as_str().unwrap();
                assert!(
                    message.starts_with("Timestamp expired") && message.contains("600 s"),
                    "{case}: refused for another reason: {message}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_http_api_validates_events() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let api = stack.api(&gw);
    let too_many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let cases = [
        (json!({"channels": ["c"], "data": "d"}), 400),
        (json!({"name": "e", "channels": ["c"]}), 400),
        (json!({"name": "e", "data": "d"}), 400),
        (json!({"name": "e", "channels": [], "data": "d"}), 400),
        (json!({"name": "e", "channels": too_many, "data": "d"}), 400),
        (
            json!({"name": "e", "channels": ["bad channel"], "data": "d"}),
            400,
        ),
        (
            json!({"name": "e", "channels": ["c"], "data": "d", "socket_id": "nope"}),
            400,
        ),
        (
            json!({"name": "e", "channels": ["c"], "data": "x".repeat(10 * 1024 + 1)}),
            413,
        ),
        (
            json!({"name": "x".repeat(201), "channels": ["c"], "data": "d"}),
            400,
        ),
    ];
    for (body, status) in cases {
        let (got, resp) = api.post("/events", &body).await.unwrap();
        assert_eq!(got, status, "{resp}");
        assert!(resp["error"]["message"].as_str().is_some(), "{resp}");
    }
    // Not JSON at all.
    let bytes = b"{not json".to_vec();
    let q = api.signed_query(
        "POST",
        "/apps/app-id/events",
        Some(&bytes),
        &[],
        herald_proto::now_ms() / 1000,
    );
    let status = reqwest::Client::new()
        .post(format!("{}/apps/app-id/events?{q}", api.base))
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn batch_events_are_delivered_and_limited_to_ten() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe("b1").await.unwrap();
    s.subscribe("b2").await.unwrap();
    let api = stack.api(&gw);
    let batch = json!({"batch": [
        {"channel": "b1", "name": "one", "data": "1"},
        {"channel": "b2", "name": "two", "data": "2"},
    ]});
    let (status, _) = api.post("/batch_events", &batch).await.unwrap();
    assert_eq!(status, 200);
    let mut got = vec![
        s.next_event_of(&["one", "two"]).await.unwrap()["event"]
            .as_str()
            .unwrap()
            .to_owned(),
        s.next_event_of(&["one", "two"]).await.unwrap()["event"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    got.sort();
    assert_eq!(got, ["one", "two"]);
    let eleven: Vec<Value> = (0..11)
        .map(|i| json!({"channel": "b1", "name": format!("e{i}"), "data": "d"}))
        .collect();
    let (status, _) = api
        .post("/batch_events", &json!({ "batch": eleven }))
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served_and_nats_events_counted() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let base = format!("http://127.0.0.1:{}", gw.port);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_gateway_connections"), "{metrics}");
    // What the NATS client reports (here: its connection) is counted.
    let connected = || async {
        (metric(gw.port, "herald_nats_events_total{event=\"connected\"}").await >= 1.0)
            .then_some(())
    };
    herald_tests::eventually(Duration::from_secs(5), "a counted NATS event", connected).await;
}

#[tokio::test]
async fn a_stopping_gateway_closes_its_clients_with_4200_so_they_reconnect() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let stopping = tokio::spawn(gw.stop());
    assert_eq!(
        s.closed().await.unwrap(),
        Some(pusher::codes::GENERIC_RECONNECT)
    );
    stopping.await.unwrap();
}

/// What the fast reader of the slow-consumer test saw: `(n, seq)` of every
/// `big` event, in order.
type Seen = Vec<(u64, u64)>;

/// A subscriber of `channel` on a thread and runtime of its own, reading
/// continuously (so neither the test's publishing nor the in-process gateway
/// can keep it from reading), until an `end` event; then it checks the socket
/// is still open. Returns once it is subscribed.
async fn fast_reader(
    port: u16,
    channel: &'static str,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<Seen>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("reader runtime");
        let result = runtime.block_on(async move {
            let mut socket = PusherSocket::connect(port, "app-key").await?;
            socket.subscribe(channel).await?;
            let _ = ready_tx.send(());
            // Keep the frames' text and parse them at the end: reading is
            // all this thread does until the marker (small, unlike the rest).
            let mut texts = Vec::new();
            loop {
                let msg = tokio::time::timeout(FRAME_TIMEOUT, socket.inner().next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("socket ended"))??;
                match msg {
                    Message::Text(text) if text.len() < 1024 => {
                        let frame: Value = serde_json::from_str(text.as_str())?;
                        anyhow::ensure!(frame["event"] == "end", "unexpected {frame}");
                        break;
                    }
                    Message::Text(text) => texts.push(text),
                    Message::Close(close) => anyhow::bail!("closed: {close:?}"),
                    _ => {}
                }
            }
            socket.quiet_until_pong().await?;
            let mut seen = Vec::new();
            for text in texts {
                let frame: Value = serde_json::from_str(text.as_str())?;
                anyhow::ensure!(frame["event"] == "big", "unexpected {frame}");
                seen.push((payload_number(&frame), seq_of(&frame)));
            }
            Ok(seen)
        });
        let _ = done_tx.send(result);
    });
    ready_rx.await.expect("the fast reader subscribed");
    done_rx
}

/// The number a slow-consumer test event starts with.
fn payload_number(frame: &Value) -> u64 {
    frame["data"].as_str().unwrap()[..6].parse().unwrap()
}

fn seq_of(frame: &Value) -> u64 {
    frame["seq"].as_u64().unwrap()
}

/// A subscriber that stops reading fills its bounded queue; the gateway then
/// closes it with 4200 (reconnect) after what was queued for it, while
/// another subscriber of the same channel gets every event, in order, once.
/// Run with writers on the delivery runtime and on the main runtime.
async fn a_subscriber_that_stops_reading_is_closed_with_4200(delivery_threads: usize) {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_message_bytes = 256 * 1024;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let mut config = stack.gateway_config();
    config.outbound_queue_bytes = 1024 * 1024;
    config.delivery_threads = delivery_threads;
    let gw = stack.gateway_with(config).await;
    let mut slow = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    slow.subscribe("firehose").await.unwrap();
    let fast = fast_reader(gw.port, "firehose").await;

    // The loopback socket buffers hold a few MiB: publish 200 KiB events,
    // numbered, until the gateway reports a slow consumer (at most 80 MiB).
    let padding = "x".repeat(200 * 1024);
    let api = stack.api(&gw);
    let mut published = 0u64;
    while metric(gw.port, "herald_gateway_slow_consumers_total").await < 1.0 {
        assert!(published < 400, "no slow consumer after {published} events");
        for _ in 0..10 {
            let data = format!("{published:06}{padding}");
            let (status, body) = api.trigger(&["firehose"], "big", &data).await.unwrap();
            assert_eq!(status, 200, "{body}");
            published += 1;
        }
    }

    // The slow socket gets what was queued for it, with no gap (so resuming
    // from the last one it saw loses nothing), then 4200.
    let mut received = Vec::new();
    let code = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), slow.inner().next())
            .await
            .expect("the slow socket is closed");
        match msg {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(frame["event"], "big", "{frame}");
                received.push(payload_number(&frame));
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(pusher::codes::GENERIC_RECONNECT));
    let prefix: Vec<u64> = (0..received.len() as u64).collect();
    assert_eq!(received, prefix, "a gap-free start of what was published");

    // The marker: an event after all of them. The fast reader got every
    // event before it, in order, each once, with consecutive sequences (one
    // channel), and is still connected.
    let (status, body) = api.trigger(&["firehose"], "end", "{}").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let seen = tokio::time::timeout(Duration::from_secs(60), fast)
        .await
        .expect("the fast reader finished")
        .expect("the fast reader reported")
        .expect("the fast reader read everything and stayed connected");
    let numbers: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (0..published).collect::<Vec<_>>());
    let first = seen[0].1;
    let seqs: Vec<u64> = seen.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, (first..first + published).collect::<Vec<_>>());
    // Only the one slow consumer was closed.
    assert_eq!(
        metric(gw.port, "herald_gateway_slow_consumers_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_closed_with_4200_while_others_get_everything() {
    a_subscriber_that_stops_reading_is_closed_with_4200(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_writers_on_the_main_runtime_a_slow_subscriber_is_closed_with_4200_too() {
    a_subscriber_that_stops_reading_is_closed_with_4200(0).await;
}
