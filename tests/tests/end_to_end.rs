//! The walking skeleton end to end: the Pusher HTTP API publishes, the event
//! is stored in JetStream, every gateway delivers it, and the history service
//! projects it into Postgres and serves it back, paginated.

use base64::Engine;
use herald_testkit::TestDatabase;
use herald_tests::{eventually, PusherSocket, Stack};
use serde_json::Value;
use sqlx::Connection;
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn basic(key: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    )
}

async fn page(port: u16, channel: &str, query: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/v1/apps/app-id/channels/{channel}/messages{query}"
        ))
        .header("authorization", basic("app-key", "app-secret"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Seqs of every stored row of a channel, straight from Postgres.
async fn stored_seqs(db: &TestDatabase, channel: &str) -> Vec<i64> {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query_scalar(
        "SELECT seq FROM history.messages WHERE app_id = 'app-id' AND channel = $1 ORDER BY seq",
    )
    .bind(channel)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

async fn publish_n(
    stack: &Stack,
    gw: &herald_tests::Running,
    channel: &str,
    from: usize,
    to: usize,
) {
    let api = stack.api(gw);
    for i in from..to {
        let (status, body) = api
            .trigger(&[channel], "msg", &format!("{{\"n\":{i}}}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn two_gateway_instances_both_deliver_one_published_event() {
    let stack = Stack::start();
    let gw1 = stack.gateway().await;
    let gw2 = stack.gateway().await;
    let mut on1 = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut on2 = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    on1.subscribe("news").await.unwrap();
    on2.subscribe("news").await.unwrap();
    let (status, _) = stack
        .api(&gw1)
        .trigger(&["news"], "breaking", "\"hi\"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let a = on1.next_event_of(&["breaking"]).await.unwrap();
    let b = on2.next_event_of(&["breaking"]).await.unwrap();
    assert_eq!(a, b, "both gateways deliver the same stored event");
    assert_eq!(a["data"], "\"hi\"");
    // Exactly once each: nothing else follows.
    assert!(on1
        .next_frame_within(Duration::from_millis(300))
        .await
        .is_err());
    assert!(on2
        .next_frame_within(Duration::from_millis(300))
        .await
        .is_err());
}

#[tokio::test]
async fn a_published_event_is_served_by_history_with_the_seq_clients_saw() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let gw = stack.gateway().await;
    let history = stack.history(&db).await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    s.subscribe("room.1").await.unwrap();
    stack
        .api(&gw)
        .trigger(&["room.1"], "said", "{\"text\":\"hello\"}")
        .await
        .unwrap();
    let live = s.next_event_of(&["said"]).await.unwrap();
    let body = eventually(WAIT, "the event in history", || async {
        let (status, body) = page(history.port, "room.1", "").await;
        assert_eq!(status, 200);
        (!body["messages"].as_array().unwrap().is_empty()).then_some(body)
    })
    .await;
    let item = &body["messages"][0];
    assert_eq!(item["seq"], live["seq"]);
    assert_eq!(item["id"], live["id"]);
    assert_eq!(item["ts"], live["ts"]);
    assert_eq!(item["event"], "said");
    assert_eq!(item["data"], "{\"text\":\"hello\"}");
    assert_eq!(body["next_before"], Value::Null);
}

#[tokio::test]
async fn a_restarted_history_service_neither_loses_nor_duplicates_rows() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let gw = stack.gateway().await;
    let history = stack.history(&db).await;
    publish_n(&stack, &gw, "log", 0, 50).await;
    eventually(WAIT, "50 rows", || async {
        (stored_seqs(&db, "log").await.len() == 50).then_some(())
    })
    .await;

    // A crash (no graceful stop), events published while it is down, then a
    // fresh instance.
    history.kill().await;
    publish_n(&stack, &gw, "log", 50, 100).await;
    let history = stack.history(&db).await;
    publish_n(&stack, &gw, "log", 100, 120).await;
    let seqs = eventually(WAIT, "120 rows", || async {
        let seqs = stored_seqs(&db, "log").await;
        (seqs.len() >= 120).then_some(seqs)
    })
    .await;
    // Give a duplicate the chance to show up before checking there is none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seqs_after = stored_seqs(&db, "log").await;
    assert_eq!(seqs, seqs_after);
    assert_eq!(seqs.len(), 120);
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), 120);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one channel, contiguous stream seqs"
    );
    // And the payloads are all there, in order.
    let (_, body) = page(history.port, "log", "?limit=1000").await;
    let ns: Vec<i64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m["data"].as_str().unwrap()).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, (0..120).rev().collect::<Vec<_>>());
    history.stop().await;
}

#[tokio::test]
async fn a_redelivered_stream_is_not_applied_twice() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let gw = stack.gateway().await;
    let history = stack.history(&db).await;
    publish_n(&stack, &gw, "dup", 0, 20).await;
    eventually(WAIT, "20 rows", || async {
        (stored_seqs(&db, "dup").await.len() == 20).then_some(())
    })
    .await;
    history.stop().await;

    // Simulate acks lost after commit: the consumer's position goes back to
    // the start of the stream, so every event is delivered again.
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let stream = js
        .get_stream(stack.subjects.channels_stream())
        .await
        .unwrap();
    stream
        .delete_consumer(&stack.subjects.durable("history"))
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    // Keep the checkpoint, drop nothing: the projector must skip all 20.
    let history = stack.history(&db).await;
    publish_n(&stack, &gw, "dup", 20, 25).await;
    eventually(WAIT, "25 rows", || async {
        (stored_seqs(&db, "dup").await.len() >= 25).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_seqs(&db, "dup").await.len(), 25);
    let checkpoint: i64 = sqlx::query_scalar("SELECT last_seq FROM history.projection_checkpoints")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(checkpoint, *stored_seqs(&db, "dup").await.last().unwrap());
    history.stop().await;
}

#[tokio::test]
async fn a_reset_database_is_rebuilt_from_the_stream() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let gw = stack.gateway().await;
    let history = stack.history(&db).await;
    publish_n(&stack, &gw, "r", 0, 10).await;
    eventually(WAIT, "10 rows", || async {
        (stored_seqs(&db, "r").await.len() == 10).then_some(())
    })
    .await;
    history.stop().await;
    // A brand-new database while the durable consumer is already at the end:
    // the projector notices it is ahead and replays from the start.
    let fresh = TestDatabase::create().await.unwrap();
    let history = stack.history(&fresh).await;
    eventually(WAIT, "10 rows rebuilt", || async {
        (stored_seqs(&fresh, "r").await.len() == 10).then_some(())
    })
    .await;
    assert_eq!(stored_seqs(&fresh, "r").await, stored_seqs(&db, "r").await);
    history.stop().await;
}

#[tokio::test]
async fn pagination_walks_a_thousand_messages_with_no_gap_or_repeat() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let gw = stack.gateway().await;
    let history = stack.history(&db).await;
    // Publish 1,000 events, 100 at a time in parallel over the HTTP API,
    // with some noise on another channel interleaved.
    let api = stack.api(&gw);
    for batch in 0..10 {
        let sends = (0..100).map(|i| {
            let api = api.clone();
            async move {
                let n = batch * 100 + i;
                let (status, _) = api.trigger(&["page"], "m", &n.to_string()).await.unwrap();
                assert_eq!(status, 200);
                if n % 10 == 0 {
                    api.trigger(&["noise"], "m", "x").await.unwrap();
                }
            }
        });
        futures::future::join_all(sends).await;
    }
    eventually(WAIT, "1000 rows", || async {
        (stored_seqs(&db, "page").await.len() == 1000).then_some(())
    })
    .await;

    let mut seen = Vec::new();
    let mut query = "?limit=77".to_string();
    let mut pages = 0;
    loop {
        let (status, body) = page(history.port, "page", &query).await;
        assert_eq!(status, 200, "{body}");
        let items = body["messages"].as_array().unwrap();
        assert!(items.len() <= 77);
        seen.extend(items.iter().map(|m| m["seq"].as_i64().unwrap()));
        pages += 1;
        match body["next_before"].as_i64() {
            Some(before) => query = format!("?limit=77&before={before}"),
            None => break,
        }
    }
    assert_eq!(pages, 1000_usize.div_ceil(77));
    assert_eq!(seen.len(), 1000);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first"
    );
    let mut expected = stored_seqs(&db, "page").await;
    expected.reverse();
    assert_eq!(seen, expected, "every stored row exactly once");
    let payloads: HashSet<String> = {
        let (_, body) = page(history.port, "page", "?limit=1000").await;
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(payloads.len(), 1000);
}

#[tokio::test]
async fn history_requires_the_apps_own_credentials() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let history = stack.history(&db).await;
    let url = format!(
        "http://127.0.0.1:{}/v1/apps/app-id/channels/c/messages",
        history.port
    );
    let http = reqwest::Client::new();
    let cases = [
        None,
        Some(basic("app-key", "wrong")),
        Some(basic("other", "app-secret")),
        Some("Bearer abc".to_string()),
        Some("Basic !!!notbase64".to_string()),
    ];
    for auth in cases {
        let mut req = http.get(&url);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // Another app's path with this app's credentials: also 401.
    let other = format!(
        "http://127.0.0.1:{}/v1/apps/other-app/channels/c/messages",
        history.port
    );
    let resp = http
        .get(other)
        .header("authorization", basic("app-key", "app-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn history_rejects_bad_paging_parameters_and_channel_names() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let history = stack.history(&db).await;
    for query in [
        "?limit=0",
        "?limit=-3",
        "?limit=abc",
        "?limit=1001",
        "?before=0",
        "?before=x",
    ] {
        let (status, body) = page(history.port, "c", query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = page(history.port, "bad%20name", "").await;
    assert_eq!(status, 400);
    let (status, body) = page(history.port, "empty", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"], serde_json::json!([]));
}

#[tokio::test]
async fn every_service_reports_health_and_readiness() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let history = stack.history(&db).await;
    let auth = stack.auth().await;
    let presence = stack.presence().await;
    let http = reqwest::Client::new();
    for port in [history.port, auth.port, presence.port] {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let resp = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{port}{path}");
        }
    }
}

#[tokio::test]
async fn history_serves_its_openapi_document() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let history = stack.history(&db).await;
    let doc: Value = reqwest::get(format!("http://127.0.0.1:{}/v1/openapi.json", history.port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let path = &doc["paths"]["/v1/apps/{app}/channels/{channel}/messages"]["get"];
    assert!(path["responses"]["200"].is_object(), "{doc}");
    assert!(doc["components"]["schemas"]["Page"].is_object());
}

#[tokio::test]
async fn events_a_crashed_projector_had_received_but_not_stored_are_projected_by_the_next_one() {
    use futures::StreamExt;
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    let gw = stack.gateway().await;
    let history = stack.history(&db).await;
    publish_n(&stack, &gw, "held", 0, 10).await;
    eventually(WAIT, "10 rows", || async {
        (stored_seqs(&db, "held").await.len() == 10).then_some(())
    })
    .await;

    // The crashed projector's last act: it pulled the next events from its
    // durable consumer and died holding them, unacknowledged.
    history.kill().await;
    publish_n(&stack, &gw, "held", 10, 20).await;
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stack.subjects.channels_stream())
        .await
        .unwrap()
        .get_consumer(&stack.subjects.durable("history"))
        .await
        .unwrap();
    let mut held = consumer.fetch().max_messages(5).messages().await.unwrap();
    let mut count = 0;
    while let Some(msg) = held.next().await {
        msg.unwrap();
        count += 1;
    }
    assert_eq!(count, 5);

    // The next projector stores them and everything after, in order, well
    // before their redelivery (the consumer's ack wait is 60 s).
    let _history = stack.history(&db).await;
    publish_n(&stack, &gw, "held", 20, 30).await;
    let seqs = eventually(WAIT, "30 rows", || async {
        let seqs = stored_seqs(&db, "held").await;
        (seqs.len() == 30).then_some(seqs)
    })
    .await;
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}
