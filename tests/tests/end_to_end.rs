//! The walking skeleton end to end: the Pusher HTTP API publishes, the event
//! is stored in JetStream, every gateway delivers it, and the history service
//! projects it into Postgres and serves it back, paginated.

use base64::Engine;
use herald_testkit::TestDatabase;
use herald_tests::{eventually, PusherSocket, Running, Stack, TcpProxy};
use serde_json::Value;
use sqlx::{Connection, Executor};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn basic(key: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    )
}

/// Every message of a channel, newest first, paging 100 at a time (the
/// largest page).
async fn all_messages(port: u16, channel: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut query = "?limit=100".to_owned();
    loop {
        let (status, body) = page(port, channel, &query).await;
        assert_eq!(status, 200, "{body}");
        all.extend(body["messages"].as_array().unwrap().iter().cloned());
        match body["next_before"].as_i64() {
            Some(before) => query = format!("?limit=100&before={before}"),
            None => return all,
        }
    }
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

/// Make every application of an event to the read model visible: the
/// history schema is created (as the service would), then a trigger records
/// each row the projector writes, committed with it. A row the primary key
/// turns away (`ON CONFLICT DO NOTHING`) is recorded too, so an event applied
/// twice shows up here even though the table keeps one row.
async fn record_applications(db: &TestDatabase) {
    herald_history::connect_database(db.url(), 1)
        .await
        .expect("history schema")
        .pool
        .close()
        .await;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    conn.execute(
        r#"
        CREATE TABLE public.applied (
            n       BIGSERIAL PRIMARY KEY,
            channel TEXT   NOT NULL,
            seq     BIGINT NOT NULL,
            data    TEXT   NOT NULL
        );
        CREATE FUNCTION public.record_applied() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.applied (channel, seq, data) VALUES (NEW.channel, NEW.seq, NEW.data);
            RETURN NEW;
        END $$;
        CREATE TRIGGER record_applied BEFORE INSERT ON history.messages
            FOR EACH ROW EXECUTE FUNCTION public.record_applied();
        "#,
    )
    .await
    .unwrap();
}

/// `(seq, data)` of every stored row of a channel, by seq.
async fn stored_rows(db: &TestDatabase, channel: &str) -> Vec<(i64, String)> {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query_as(
        "SELECT seq, data FROM history.messages WHERE app_id = 'app-id' AND channel = $1 ORDER BY seq",
    )
    .bind(channel)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// The read model is the stream, exactly: the channel holds the `published`
/// events `{"n":0}`, `{"n":1}`, … in order; each is a row with its own seq and
/// payload; and each was applied once (see [`record_applications`]). Call it
/// once every history instance has stopped, so nothing is still in flight.
async fn assert_projected_exactly_once(
    stack: &Stack,
    db: &TestDatabase,
    channel: &str,
    published: usize,
) {
    let stream: Vec<(i64, String)> = stack
        .stored_events(channel)
        .await
        .into_iter()
        .map(|(seq, env)| (seq as i64, env.data))
        .collect();
    let payloads: Vec<&str> = stream.iter().map(|(_, data)| data.as_str()).collect();
    let expected: Vec<String> = (0..published).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(payloads, expected, "the stream holds what was published");
    let rows = stored_rows(db, channel).await;
    assert_eq!(
        rows, stream,
        "every event is a row, with its seq and payload"
    );
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let applied: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, data FROM public.applied WHERE channel = $1 ORDER BY n")
            .bind(channel)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut times: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (seq, data) in &applied {
        times.entry(*seq).or_default().push(data);
    }
    let twice: Vec<_> = times.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(twice.is_empty(), "events applied more than once: {twice:?}");
    let mut applied = applied;
    applied.sort();
    assert_eq!(applied, stream, "each event applied once, as it is");
}

/// The projection checkpoint.
async fn checkpoint(db: &TestDatabase) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query_scalar("SELECT last_seq FROM history.projection_checkpoints")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Sessions of this database waiting for a lock (a projector that holds a
/// batch and waits for the checkpoint row).
async fn lock_waiters(db: &TestDatabase) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Wait until `n` sessions wait for a lock.
async fn wait_lock_waiters(db: &TestDatabase, n: i64, what: &str) {
    eventually(WAIT, what, || async {
        (lock_waiters(db).await == n).then_some(())
    })
    .await;
}

/// End the session holding the projector's advisory lock, as a lost
/// connection would; returns how many were ended. (The exclusive one: a
/// batch also holds the apply lock, shared, in its transaction.)
async fn terminate_lock_holder(db: &TestDatabase) -> usize {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    ended.into_iter().filter(|ok| *ok).count()
}

/// End the sessions waiting for a lock: a projector's transaction lost in
/// the middle of a batch.
async fn terminate_lock_waiters(db: &TestDatabase) -> usize {
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    ended.into_iter().filter(|ok| *ok).count()
}

/// A transaction holding the checkpoint row lock: a projector with a batch
/// in hand waits for it inside its own transaction, before it writes.
struct CheckpointHold(sqlx::PgConnection);

impl CheckpointHold {
    async fn take(db: &TestDatabase) -> Self {
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        conn.execute("BEGIN").await.unwrap();
        conn.execute("SELECT last_seq FROM history.projection_checkpoints FOR UPDATE")
            .await
            .unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        self.0.execute("ROLLBACK").await.unwrap();
        self.0.close().await.unwrap();
    }
}

/// Publish numbered events to `channel` one after the other until `stop`;
/// returns how many.
fn keep_publishing(
    api: herald_tests::PusherApi,
    channel: &'static str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.is_cancelled() {
            let (status, body) = api
                .trigger(&[channel], "msg", &format!("{{\"n\":{n}}}"))
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
            n += 1;
            // Not flat out: the 2 cores are shared with the projectors.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    })
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
    let a = on1.quiet_until_event("breaking").await.unwrap();
    let b = on2.quiet_until_event("breaking").await.unwrap();
    assert_eq!(a, b, "both gateways deliver the same stored event");
    assert_eq!(a["data"], "\"hi\"");
    // Exactly once each: the next event on the channel is the next frame.
    stack
        .api(&gw2)
        .trigger(&["news"], "marker", "{}")
        .await
        .unwrap();
    on1.quiet_until_event("marker").await.unwrap();
    on2.quiet_until_event("marker").await.unwrap();
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
    record_applications(&db).await;
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
    eventually(WAIT, "120 rows", || async {
        (stored_seqs(&db, "log").await.len() >= 120).then_some(())
    })
    .await;
    // The payloads are served in order too.
    let messages = all_messages(history.port, "log").await;
    let ns: Vec<i64> = messages
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m["data"].as_str().unwrap()).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, (0..120).rev().collect::<Vec<_>>());
    // Stopped, it can apply nothing late: the check sees everything it did.
    history.stop().await;
    assert_projected_exactly_once(&stack, &db, "log", 120).await;
}

#[tokio::test]
async fn a_batch_redelivered_to_the_next_leader_after_a_lock_hand_over_is_not_applied_twice() {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    record_applications(&db).await;
    let gw = stack.gateway().await;
    let first = stack.history(&db).await;
    publish_n(&stack, &gw, "dup", 0, 10).await;
    eventually(WAIT, "10 rows", || async {
        (stored_seqs(&db, "dup").await.len() == 10).then_some(())
    })
    .await;
    let before = checkpoint(&db).await;

    // The leader takes its next batch and waits for the checkpoint row (held
    // here) inside its transaction.
    let hold = CheckpointHold::take(&db).await;
    publish_n(&stack, &gw, "dup", 10, 20).await;
    wait_lock_waiters(&db, 1, "the leader waiting with its batch").await;
    // A second instance; the leader loses its lock connection mid-batch, so
    // the second takes over, with a consumer from the checkpoint it reads:
    // the same events, redelivered while the first still holds them.
    let second = stack.history(&db).await;
    assert_eq!(terminate_lock_holder(&db).await, 1);
    wait_lock_waiters(&db, 2, "the new leader waiting with the same events").await;
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let consumer = js
        .get_stream(stack.subjects.channels_stream())
        .await
        .unwrap()
        .consumer_info(stack.subjects.durable("history"))
        .await
        .unwrap();
    assert_eq!(
        consumer.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: before as u64 + 1
        },
        "the new leader's consumer starts at the first event of the held batch"
    );

    // The old leader commits first (it waited first); the new one then gets
    // the row and must skip what it was given again.
    hold.release().await;
    publish_n(&stack, &gw, "dup", 20, 25).await;
    eventually(WAIT, "25 rows", || async {
        (stored_seqs(&db, "dup").await.len() == 25).then_some(())
    })
    .await;
    first.stop().await;
    second.stop().await;
    assert_projected_exactly_once(&stack, &db, "dup", 25).await;
    let rows = stored_rows(&db, "dup").await;
    assert_eq!(checkpoint(&db).await, rows.last().unwrap().0);
}

#[tokio::test]
async fn the_projection_stays_exactly_once_through_overlapping_instances_lost_connections_and_crashes(
) {
    let stack = Stack::start();
    let db = TestDatabase::create().await.unwrap();
    record_applications(&db).await;
    let gw = stack.gateway().await;
    // The first leader talks to NATS through a proxy, to be cut off.
    let proxy = TcpProxy::start(stack.nats.port()).await.unwrap();
    let mut config = stack.history_config(&db);
    config.nats_url = format!("nats://127.0.0.1:{}", proxy.port());
    let leader = stack.history_with(config).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = keep_publishing(stack.api(&gw), "chaos", stop.clone());
    eventually(WAIT, "the first leader projecting", || async {
        (!stored_seqs(&db, "chaos").await.is_empty()).then_some(())
    })
    .await;
    let mut instances: Vec<Running> = vec![stack.history(&db).await];

    // 1. A crash between commit and ack: the leader, holding a batch, is cut
    // off from NATS, commits, and dies before its ack gets anywhere.
    let hold = CheckpointHold::take(&db).await;
    wait_lock_waiters(&db, 1, "the leader waiting with its batch").await;
    let before = checkpoint(&db).await;
    proxy.pause();
    hold.release().await;
    eventually(WAIT, "the cut-off leader's commit", || async {
        (checkpoint(&db).await > before).then_some(())
    })
    .await;
    leader.kill().await;
    drop(proxy);
    instances.push(stack.history(&db).await);

    // 2. The leader's lock connection lost mid-batch: another instance
    // takes over and is given the same events while the old leader still
    // holds them (it commits first, so the new one must skip them).
    let hold = CheckpointHold::take(&db).await;
    wait_lock_waiters(&db, 1, "the leader waiting with its batch").await;
    assert_eq!(terminate_lock_holder(&db).await, 1);
    wait_lock_waiters(&db, 2, "the new leader waiting with the same events").await;
    hold.release().await;

    // 3. The leader's transaction connection lost mid-batch: nothing of the
    // batch is stored, and whoever leads next applies it.
    let hold = CheckpointHold::take(&db).await;
    eventually(WAIT, "a leader waiting with its batch", || async {
        (lock_waiters(&db).await >= 1).then_some(())
    })
    .await;
    assert!(terminate_lock_waiters(&db).await >= 1);
    hold.release().await;

    // 4. Every instance crashes; two new ones start side by side.
    let rows = stored_seqs(&db, "chaos").await.len();
    eventually(WAIT, "projection going on", || async {
        (stored_seqs(&db, "chaos").await.len() > rows).then_some(())
    })
    .await;
    for instance in instances.drain(..) {
        instance.kill().await;
    }
    instances.push(stack.history(&db).await);
    instances.push(stack.history(&db).await);

    stop.cancel();
    let published = publisher.await.unwrap();
    // Polled rather than `eventually`, so that a timeout says how far the
    // projection got (a stall and a miscount look alike otherwise).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored = stored_seqs(&db, "chaos").await.len();
        if stored == published {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {WAIT:?}: {stored} rows of {published} published events, checkpoint {}, \
             {} events in the stream",
            checkpoint(&db).await,
            stack.stored_seqs("chaos").await.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for instance in instances {
        instance.stop().await;
    }
    assert_projected_exactly_once(&stack, &db, "chaos", published).await;
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
        all_messages(history.port, "page")
            .await
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
