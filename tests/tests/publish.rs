//! Acknowledged, idempotent publishing: `herald:publish` with its ack and
//! every nack code, receipts, and the HTTP API's `idempotency_key`. Stored
//! events are counted in the stream itself, not guessed from deliveries.

use herald_tests::{data_of, dev_app, PusherSocket, Stack, SECRET};
use serde_json::{json, Value};

const KEY: &str = "app-key";

/// A stack whose app lets clients publish (as the development app does).
fn publishing_stack() -> Stack {
    let mut app = dev_app();
    app.limits.enable_client_publish = true;
    Stack::with_apps(herald_config::AppRegistry::single(app))
}

/// A socket signed in as `user` and subscribed to the private `channel`.
async fn signed_in_member(port: u16, user: &str, channel: &str) -> PusherSocket {
    let mut socket = PusherSocket::connect(port, KEY).await.unwrap();
    socket.sign_in(SECRET, user, Value::Null).await.unwrap();
    socket.subscribe_private(SECRET, channel).await.unwrap();
    socket
}

async fn publish(socket: &mut PusherSocket, fields: Value) {
    socket.send_event("herald:publish", fields).await.unwrap();
}

/// The next ack or nack, with its data decoded.
async fn answer(socket: &mut PusherSocket) -> (String, Value) {
    let frame = socket
        .next_event_of(&["herald:ack", "herald:nack"])
        .await
        .unwrap();
    let data = data_of(&frame);
    (frame["event"].as_str().unwrap().to_owned(), data)
}

/// How many events the stream holds on a channel.
async fn stored_count(stack: &Stack, channel: &str) -> u64 {
    stack.stored_seqs(channel).await.len() as u64
}

#[tokio::test]
async fn a_publish_retried_three_times_is_stored_once_and_acked_three_times_with_the_original_seq()
{
    let stack = publishing_stack();
    let gateway = stack.gateway().await;
    let channel = "private-chat";
    let mut alice = signed_in_member(gateway.port, "alice", channel).await;
    let mut alice_phone = signed_in_member(gateway.port, "alice", channel).await;
    let mut bob = signed_in_member(gateway.port, "bob", channel).await;

    let mut acks = Vec::new();
    for _ in 0..3 {
        publish(
            &mut alice,
            json!({ "channel": channel, "event": "message", "data": {"text": "hi"}, "client_id": "m-1" }),
        )
        .await;
        let (kind, data) = answer(&mut alice).await;
        assert_eq!(kind, "herald:ack", "{data}");
        acks.push(data);
    }
    let first = &acks[0];
    assert_eq!(first["client_id"], "m-1");
    assert_eq!(first["channel"], channel);
    for ack in &acks[1..] {
        assert_eq!(
            ack["seq"], first["seq"],
            "a retry is acked with the original seq"
        );
        assert_eq!(ack["id"], first["id"], "and the original id");
        assert_eq!(ack["ts"], first["ts"]);
    }
    assert_eq!(stored_count(&stack, channel).await, 1, "stored once");

    // Others get it once, as a stored event attributed to alice; the marker
    // after it shows no copy is still on its way.
    let marker_api = stack.api(&gateway);
    let (status, _) = marker_api
        .trigger(&[channel], "marker", "{}")
        .await
        .unwrap();
    assert_eq!(status, 200);
    for (who, socket) in [("bob", &mut bob), ("alice's phone", &mut alice_phone)] {
        let frame = socket.next_event_of(&["message", "marker"]).await.unwrap();
        assert_eq!(frame["event"], "message", "{who}");
        assert_eq!(frame["seq"], first["seq"], "{who}");
        assert_eq!(frame["id"], first["id"], "{who}");
        assert_eq!(frame["user_id"], "alice", "{who}");
        assert_eq!(frame["data"], "{\"text\":\"hi\"}", "{who}");
        let next = socket.next_event_of(&["message", "marker"]).await.unwrap();
        assert_eq!(next["event"], "marker", "{who} got the message once");
    }
    // The sending socket's echo is its ack, not the event.
    let next = alice.next_event_of(&["message", "marker"]).await.unwrap();
    assert_eq!(next["event"], "marker", "not echoed to the sender");
}

#[tokio::test]
async fn publishes_sent_back_to_back_are_stored_and_acked_in_the_order_sent_even_past_the_in_flight_bound(
) {
    let mut app = dev_app();
    app.limits.enable_client_publish = true;
    app.limits.client_publishes_per_second = 1_000_000;
    let stack = Stack::with_apps(herald_config::AppRegistry::single(app));
    let gateway = stack.gateway().await;
    let channels = ["private-a", "private-b"];
    let mut alice = PusherSocket::connect(gateway.port, KEY).await.unwrap();
    alice.sign_in(SECRET, "alice", Value::Null).await.unwrap();
    let mut bob = PusherSocket::connect(gateway.port, KEY).await.unwrap();
    for channel in channels {
        alice.subscribe_private(SECRET, channel).await.unwrap();
        bob.subscribe_private(SECRET, channel).await.unwrap();
    }
    // More than the gateway keeps in flight per connection (256), sent
    // without waiting for any answer, alternating between two channels.
    const N: usize = 600;
    for i in 0..N {
        publish(
            &mut alice,
            json!({ "channel": channels[i % 2], "event": "m", "data": i.to_string(), "client_id": format!("m-{i}") }),
        )
        .await;
    }
    let mut last_seq = 0;
    for i in 0..N {
        let (kind, data) = answer(&mut alice).await;
        assert_eq!(kind, "herald:ack", "{data}");
        assert_eq!(
            data["client_id"],
            format!("m-{i}"),
            "answers come in the order sent"
        );
        let seq = data["seq"].as_u64().unwrap();
        assert!(
            seq > last_seq,
            "stored in the order sent: {seq} after {last_seq}"
        );
        last_seq = seq;
    }
    for channel in channels {
        assert_eq!(
            stored_count(&stack, channel).await,
            (N / 2) as u64,
            "{channel}"
        );
    }
    // Bob gets every one once, each channel's in the order alice sent
    // them (two channels are two streams of events: no order between them).
    let mut next = [0usize, 1];
    for _ in 0..N {
        let frame = bob.next_event_of(&["m"]).await.unwrap();
        let c = channels
            .iter()
            .position(|c| frame["channel"] == *c)
            .unwrap();
        assert_eq!(
            frame["data"],
            next[c].to_string(),
            "bob's next on {}",
            channels[c]
        );
        next[c] += 2;
    }
}

#[tokio::test]
async fn a_publish_is_stored_byte_for_byte_with_escapes_unicode_or_data_sent_as_a_string() {
    let stack = publishing_stack();
    let gateway = stack.gateway().await;
    let channel = "private-escapes";
    let mut alice = signed_in_member(gateway.port, "alice", channel).await;
    let mut bob = signed_in_member(gateway.port, "bob", channel).await;
    // (the frame as sent, its client_id, the data stored)
    let cases = [
        // The usual Pusher payload: JSON carried as a string, so escaped.
        (
            json!({ "event": "herald:publish", "data": { "channel": channel, "event": "message",
                "data": "{\"text\":\"line\nbreak \\\"quoted\\\" ✓\"}", "client_id": "m-1" } })
            .to_string(),
            "m-1",
            "{\"text\":\"line\nbreak \\\"quoted\\\" ✓\"}",
        ),
        // An escape in the client_id.
        (
            format!(
                r#"{{"event":"herald:publish","data":{{"channel":"{channel}","event":"message","data":"plain","client_id":"m-\u00e9"}}}}"#
            ),
            "m-é",
            "plain",
        ),
        // The whole of `data` JSON-encoded, as some Pusher clients send it.
        (
            json!({ "event": "herald:publish", "data": json!({ "channel": channel,
                "event": "message", "data": "as a string", "client_id": "m-3" }).to_string() })
            .to_string(),
            "m-3",
            "as a string",
        ),
        // A control character and non-ASCII in an otherwise plain payload.
        (
            json!({ "event": "herald:publish", "data": { "channel": channel, "event": "message",
                "data": "tab\there, ünïcode, \u{1}", "client_id": "m-4" } })
            .to_string(),
            "m-4",
            "tab\there, ünïcode, \u{1}",
        ),
    ];
    for (frame, client_id, stored) in cases {
        alice.send_text(frame.clone()).await.unwrap();
        let (kind, ack) = answer(&mut alice).await;
        assert_eq!(kind, "herald:ack", "{frame}: {ack}");
        assert_eq!(ack["client_id"], client_id, "{frame}");
        let event = bob.next_event_of(&["message"]).await.unwrap();
        assert_eq!(event["data"], stored, "{frame}");
        assert_eq!(event["seq"], ack["seq"], "{frame}");
    }
    assert_eq!(stored_count(&stack, channel).await, 4);
}

#[tokio::test]
async fn every_refused_publish_is_a_nack_with_its_documented_code() {
    let stack = publishing_stack();
    let gateway = stack.gateway().await;
    let channel = "private-nacks";
    let mut alice = signed_in_member(gateway.port, "alice", channel).await;
    let cases = [
        (
            json!({ "channel": "private-other", "event": "m", "data": "x", "client_id": "a" }),
            "not_subscribed",
        ),
        (
            json!({ "channel": "public-room", "event": "m", "data": "x", "client_id": "b" }),
            "not_allowed",
        ),
        (
            json!({ "channel": channel, "event": "m", "data": "x" }),
            "invalid",
        ),
        (
            json!({ "channel": channel, "event": "m", "data": "x", "client_id": "" }),
            "invalid",
        ),
        (
            json!({ "channel": channel, "event": "pusher:fake", "data": "x", "client_id": "c" }),
            "invalid",
        ),
        (
            json!({ "channel": channel, "event": "m", "client_id": "d" }),
            "invalid",
        ),
        (
            json!({ "channel": "bad channel!", "event": "m", "data": "x", "client_id": "e" }),
            "invalid",
        ),
        (
            json!({ "channel": channel, "event": "m", "data": "x".repeat(10 * 1024 + 1), "client_id": "f" }),
            "too_large",
        ),
        // Fields of the wrong type: read through the slower path, refused
        // the same way.
        (
            json!({ "channel": 5, "event": "m", "data": "x", "client_id": "g" }),
            "invalid",
        ),
        (
            json!({ "channel": channel, "event": ["m"], "data": "x", "client_id": "h" }),
            "invalid",
        ),
    ];
    for (fields, code) in cases {
        publish(&mut alice, fields.clone()).await;
        let (kind, data) = answer(&mut alice).await;
        assert_eq!(kind, "herald:nack", "{fields}");
        assert_eq!(data["code"], code, "{fields}: {data}");
        assert_eq!(
            data["client_id"],
            fields.get("client_id").cloned().unwrap_or(json!("")),
            "the nack names the publish: {fields}"
        );
        assert!(data["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        stored_count(&stack, channel).await,
        0,
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn publishing_is_refused_on_an_app_that_has_not_enabled_it_and_over_the_rate_limit() {
    let mut off = dev_app();
    off.limits.enable_client_publish = false;
    let stack = Stack::with_apps(herald_config::AppRegistry::single(off));
    let gateway = stack.gateway().await;
    let mut socket = signed_in_member(gateway.port, "alice", "private-x").await;
    publish(
        &mut socket,
        json!({ "channel": "private-x", "event": "m", "data": "x", "client_id": "a" }),
    )
    .await;
    assert_eq!(answer(&mut socket).await.1["code"], "not_allowed");

    let mut slow = dev_app();
    slow.limits.enable_client_publish = true;
    slow.limits.client_publishes_per_second = 2;
    let stack = Stack::with_apps(herald_config::AppRegistry::single(slow));
    let gateway = stack.gateway().await;
    let mut socket = signed_in_member(gateway.port, "alice", "private-x").await;
    let mut codes = Vec::new();
    for i in 0..10 {
        publish(
            &mut socket,
            json!({ "channel": "private-x", "event": "m", "data": "x", "client_id": format!("m{i}") }),
        )
        .await;
        let (kind, data) = answer(&mut socket).await;
        codes.push(if kind == "herald:ack" {
            "ack".to_owned()
        } else {
            data["code"].as_str().unwrap().to_owned()
        });
    }
    let acked = codes.iter().filter(|c| *c == "ack").count();
    assert!(acked >= 1, "{codes:?}");
    assert!(
        acked <= 4,
        "at most the burst and a refill get through: {codes:?}"
    );
    assert!(
        codes.iter().all(|c| c == "ack" || c == "rate_limited"),
        "{codes:?}"
    );
    assert_eq!(stored_count(&stack, "private-x").await, acked as u64);
}

#[tokio::test]
async fn a_publish_that_cannot_be_stored_is_nacked_unavailable_and_a_retry_after_recovery_is_acked()
{
    let mut stack = publishing_stack();
    let gateway = stack.gateway().await;
    let channel = "private-outage";
    let mut alice = signed_in_member(gateway.port, "alice", channel).await;
    stack.nats.stop();
    publish(
        &mut alice,
        json!({ "channel": channel, "event": "m", "data": "x", "client_id": "m-1" }),
    )
    .await;
    let (kind, data) = answer(&mut alice).await;
    assert_eq!(
        (kind.as_str(), data["code"].as_str()),
        ("herald:nack", Some("unavailable"))
    );
    stack.nats.start_again().unwrap();
    // The same client_id, once NATS is back: stored (at most once).
    let mut acked = None;
    for _ in 0..50 {
        publish(
            &mut alice,
            json!({ "channel": channel, "event": "m", "data": "x", "client_id": "m-1" }),
        )
        .await;
        let (kind, data) = answer(&mut alice).await;
        if kind == "herald:ack" {
            acked = Some(data);
            break;
        }
        assert_eq!(data["code"], "unavailable");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(acked.is_some(), "acked once NATS is back");
    assert_eq!(stored_count(&stack, channel).await, 1);
}

#[tokio::test]
async fn receipts_are_stored_once_per_seq_and_reach_the_other_subscribers_with_the_user() {
    let stack = publishing_stack();
    let gateway = stack.gateway().await;
    let channel = "private-receipts";
    let mut alice = signed_in_member(gateway.port, "alice", channel).await;
    let mut bob = signed_in_member(gateway.port, "bob", channel).await;
    for (event, seq) in [
        ("herald:delivered", 5),
        ("herald:read", 5),
        ("herald:read", 3),
    ] {
        bob.send_event(event, json!({ "channel": channel, "seq": seq }))
            .await
            .unwrap();
    }
    // Frames of one socket are handled in order, and a receipt is sent to
    // JetStream before the next frame is read: once bob's ping is answered,
    // all three were handled, and the marker (published after that on the
    // same NATS connection) is stored after them.
    bob.send_event("pusher:ping", json!({})).await.unwrap();
    let receipts = ["herald:delivered", "herald:read"];
    let mut own = Vec::new();
    loop {
        let frame = bob
            .next_event_of(&["pusher:pong", receipts[0], receipts[1]])
            .await
            .unwrap();
        if frame["event"] == "pusher:pong" {
            break;
        }
        own.push(frame);
    }
    let marker = stack.api(&gateway);
    marker.trigger(&[channel], "marker", "{}").await.unwrap();
    let mut got = Vec::new();
    loop {
        let frame = alice
            .next_event_of(&["herald:delivered", "herald:read", "marker"])
            .await
            .unwrap();
        if frame["event"] == "marker" {
            break;
        }
        let data = data_of(&frame);
        assert_eq!(frame["user_id"], "bob");
        assert!(frame["seq"].as_u64().is_some(), "a stored event");
        got.push((
            frame["event"].as_str().unwrap().to_owned(),
            data["seq"].as_u64().unwrap(),
            data["user_id"].clone(),
        ));
    }
    assert_eq!(
        got,
        [
            ("herald:delivered".to_owned(), 5, json!("bob")),
            ("herald:read".to_owned(), 5, json!("bob")),
        ],
        "a read receipt below the last one adds nothing"
    );
    // The sender gets its own receipts too: nothing else tells it their
    // seq, which the next event's prev_seq names.
    loop {
        let frame = bob
            .next_event_of(&[receipts[0], receipts[1], "marker"])
            .await
            .unwrap();
        if frame["event"] == "marker" {
            assert_eq!(frame["prev_seq"], own.last().unwrap()["seq"]);
            break;
        }
        own.push(frame);
    }
    let own: Vec<_> = own.iter().map(|f| f["event"].clone()).collect();
    assert_eq!(own, [json!("herald:delivered"), json!("herald:read")]);
    // A receipt from a socket without a user is refused.
    let mut anonymous = PusherSocket::connect(gateway.port, KEY).await.unwrap();
    anonymous.subscribe_private(SECRET, channel).await.unwrap();
    anonymous
        .send_event("herald:read", json!({ "channel": channel, "seq": 1 }))
        .await
        .unwrap();
    assert_eq!(answer(&mut anonymous).await.1["code"], "not_allowed");
    anonymous
        .send_event("herald:read", json!({ "channel": channel, "seq": "x" }))
        .await
        .unwrap();
    assert_eq!(answer(&mut anonymous).await.1["code"], "invalid");
}

#[tokio::test]
async fn a_burst_of_read_receipts_collapses_to_fewer_stored_ones_and_the_highest_always_arrives() {
    let mut app = dev_app();
    app.limits.enable_client_publish = true;
    app.limits.client_publishes_per_second = 1_000_000;
    let stack = Stack::with_apps(herald_config::AppRegistry::single(app));
    let gateway = stack.gateway().await;
    let channel = "private-scroll";
    let mut alice = signed_in_member(gateway.port, "alice", channel).await;
    let mut bob = signed_in_member(gateway.port, "bob", channel).await;
    // Bob scrolls through 300 messages, marking each read as it goes.
    const N: u64 = 300;
    for seq in 1..=N {
        bob.send_event("herald:read", json!({ "channel": channel, "seq": seq }))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&N) {
        let frame = alice.next_event_of(&["herald:read"]).await.unwrap();
        seen.push(data_of(&frame)["seq"].as_u64().unwrap());
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "increasing, each once: {seen:?}"
    );
    // While one is in flight the next ones wait, collapsed to the highest:
    // a burst of 300 stores far fewer.
    assert!(
        seen.len() < (N / 2) as usize,
        "{} stored: {seen:?}",
        seen.len()
    );
    // What alice saw is what the stream holds, and nothing else is coming.
    let stored = stack.stored_events(channel).await;
    let stored: Vec<u64> = stored
        .iter()
        .map(|(_, env)| {
            serde_json::from_str::<Value>(&env.data).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(stored, seen);
}

#[tokio::test]
async fn an_http_publish_retried_with_its_idempotency_key_stores_each_channels_copy_once() {
    let stack = Stack::start();
    let gateway = stack.gateway().await;
    let api = stack.api(&gateway);
    let channels = ["idem-a", "idem-b", "idem-c"];
    let body = json!({
        "name": "e", "channels": channels, "data": "{}", "idempotency_key": "order-42"
    });
    for _ in 0..2 {
        let (status, answer) = api.post("/events", &body).await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer, json!({}), "the retry answers as the first did");
    }
    let mut total = 0;
    for channel in channels {
        let n = stored_count(&stack, channel).await;
        assert_eq!(n, 1, "{channel}");
        total += n;
    }
    assert_eq!(total, 3, "3 events stored, not 6");
    // Without a key, a repeat is a new event (as in Pusher).
    let plain = json!({ "name": "e", "channels": ["idem-a"], "data": "{}" });
    api.post("/events", &plain).await.unwrap();
    api.post("/events", &plain).await.unwrap();
    assert_eq!(stored_count(&stack, "idem-a").await, 3);
    // A batch with keys is idempotent per event too.
    let batch = json!({ "batch": [
        { "name": "e", "channel": "idem-d", "data": "1", "idempotency_key": "k1" },
        { "name": "e", "channel": "idem-d", "data": "2", "idempotency_key": "k2" },
    ]});
    for _ in 0..2 {
        let (status, _) = api.post("/batch_events", &batch).await.unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(stored_count(&stack, "idem-d").await, 2);
    let (status, answer) = api
        .post(
            "/events",
            &json!({ "name": "e", "channels": ["x"], "data": "{}", "idempotency_key": "" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{answer}");
}
