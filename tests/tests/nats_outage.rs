//! When NATS (or part of JetStream) is unavailable, the gateway says so
//! instead of pretending: a publish that cannot be stored answers 503, a
//! control query not every gateway answered is 503 rather than a partial
//! count, and a presence key whose delete failed is deleted later instead of
//! keeping its member online.

use herald_proto::presence::{GatewayHeartbeat, PresenceKey};
use herald_proto::pusher;
use herald_tests::{eventually, metric, PusherSocket, Stack};
use serde_json::{json, Value};
use std::time::Duration;

fn data_of(frame: &Value) -> Value {
    serde_json::from_str(frame["data"].as_str().expect("data string")).expect("data json")
}

async fn join(socket: &mut PusherSocket, channel: &str, user: &str) {
    let channel_data = json!({ "user_id": user }).to_string();
    let auth = pusher::channel_auth(
        "app-key",
        "app-secret",
        &socket.socket_id,
        channel,
        Some(&channel_data),
    );
    socket
        .send_event(
            "pusher:subscribe",
            json!({"channel": channel, "auth": auth, "channel_data": channel_data}),
        )
        .await
        .unwrap();
    socket
        .next_event_of(&["pusher_internal:subscription_succeeded"])
        .await
        .unwrap();
}

#[tokio::test]
async fn while_nats_is_down_a_publish_answers_503_with_a_retryable_error_and_200_once_it_is_back() {
    let mut stack = Stack::start();
    let gw = stack.gateway().await;
    let api = stack.api(&gw);
    let mut subscriber = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    subscriber.subscribe("news").await.unwrap();

    stack.nats.stop();
    let (status, body) = api.trigger(&["news"], "lost", "{}").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );

    stack.nats.restart().unwrap();
    eventually(Duration::from_secs(30), "a stored publish", || async {
        let (status, _) = api.trigger(&["news"], "stored", "{}").await.unwrap();
        (status == 200).then_some(())
    })
    .await;
    let event = subscriber.next_event_of(&["stored"]).await.unwrap();
    assert_eq!(event["channel"], "news");
}

#[tokio::test]
async fn a_channel_query_that_not_every_live_gateway_answers_is_503_not_a_partial_count() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let api = stack.api(&gw);
    let (status, body) = api.get("/channels", &[]).await.unwrap();
    assert_eq!((status, &body), (200, &json!({"channels": {}})));

    // A gateway that heartbeats but does not answer (stalled, partitioned).
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let kv = js
        .get_key_value(stack.subjects.presence_bucket())
        .await
        .unwrap();
    let key = PresenceKey::Gateway {
        gateway: "silent".into(),
    }
    .render();
    let beat = GatewayHeartbeat {
        at: herald_proto::now_ms(),
        interval_ms: 5000,
    };
    kv.put(key, serde_json::to_vec(&beat).unwrap().into())
        .await
        .unwrap();

    let (status, body) = eventually(Duration::from_secs(10), "a 503", || async {
        let (status, body) = api.get("/channels", &[]).await.unwrap();
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 of 2 gateways"),
        "{body}"
    );
    let (status, body) = api
        .post("/users/someone/terminate_connections", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn a_presence_key_whose_delete_failed_is_deleted_at_a_later_heartbeat() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let mut config = stack.gateway_config();
    config.heartbeat_interval = Duration::from_millis(500);
    let gw = stack.gateway_with(config).await;
    let mut observer = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    join(&mut observer, "presence-room", "observer").await;
    let mut alice = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    join(&mut alice, "presence-room", "alice").await;
    let added = observer
        .next_event_of(&["pusher_internal:member_added"])
        .await
        .unwrap();
    assert_eq!(data_of(&added)["user_id"], "alice");

    // Writes to the bucket's `sub.` keys find no stream for a while (as
    // when JetStream is not ready yet after a restart); heartbeats still do.
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let bucket = stack.subjects.presence_bucket();
    let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    let full = stream.info().await.unwrap().config.clone();
    let mut narrowed = full.clone();
    narrowed.subjects = vec![format!("$KV.{bucket}.gw.>"), format!("$KV.{bucket}.conn.>")];
    js.update_stream(narrowed).await.unwrap();

    alice
        .send_event("pusher:unsubscribe", json!({"channel": "presence-room"}))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "a failed delete", || async {
        (metric(gw.port, "herald_gateway_presence_delete_failures_total").await >= 1.0)
            .then_some(())
    })
    .await;
    js.update_stream(full).await.unwrap();

    // A later heartbeat deletes it: alice is not online for ever.
    let removed = observer
        .next_event_of(&["pusher_internal:member_removed"])
        .await
        .unwrap();
    assert_eq!(data_of(&removed)["user_id"], "alice");
}
