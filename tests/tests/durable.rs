//! Nothing a client was sent is lost: `resume_from` after a disconnect, the
//! live path's gap repair across a NATS reconnect and a NATS restart, and
//! `herald:resume_failed` when the stream cannot serve a position. Every
//! test checks each sequence number a client got against what is stored.

use herald_tests::{data_of, metric, PusherApi, PusherSocket, Stack, TcpProxy, SECRET};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// One durable event as a client got it.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    seq: u64,
    prev_seq: Option<u64>,
    data: String,
}

fn got(frame: &Value) -> Got {
    Got {
        seq: frame["seq"].as_u64().expect("a durable event has seq"),
        prev_seq: frame["prev_seq"].as_u64(),
        data: frame["data"].as_str().expect("data is a string").to_owned(),
    }
}

/// Subscribe with `resume_from` and wait for the subscription to succeed.
async fn subscribe_resuming(socket: &mut PusherSocket, channel: &str, from: u64) {
    let frame = socket
        .subscribe_with(json!({ "channel": channel, "resume_from": from }))
        .await
        .unwrap();
    assert_eq!(
        frame["event"], "pusher_internal:subscription_succeeded",
        "{frame}"
    );
}

/// Read `event` frames until one carries `last` as its data.
async fn read_until(socket: &mut PusherSocket, event: &str, last: &str, into: &mut Vec<Got>) {
    loop {
        let frame = socket.next_event_of(&[event]).await.unwrap();
        let g = got(&frame);
        let done = g.data == last;
        into.push(g);
        if done {
            return;
        }
    }
}

/// Every stored event exactly once, in order, each one's `prev_seq` naming
/// the one before it.
fn assert_complete_chain(client: &str, got: &[Got], stored: &[u64]) {
    let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    assert_eq!(
        seqs.len(),
        stored.len(),
        "{client}: got {} events, {} are stored",
        seqs.len(),
        stored.len()
    );
    assert_eq!(
        seqs, stored,
        "{client}: not every stored event once, in order"
    );
    for pair in got.windows(2) {
        assert_eq!(
            pair[1].prev_seq,
            Some(pair[0].seq),
            "{client}: event {} does not chain to {}",
            pair[1].seq,
            pair[0].seq
        );
    }
}

/// Publish one event `e` and insist that it is stored. A 503 (the
/// documented retryable answer: no ack within the store timeout, which a
/// 200 KiB event can miss while the whole suite loads the machine) is
/// retried with the same `idempotency_key`, as a real publisher would, so
/// the retry is stored once and every chain check stays exact.
async fn trigger_ok(api: &PusherApi, channel: &str, data: &str) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = format!("durable-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let body = json!({ "name": "e", "channel": channel, "data": data, "idempotency_key": key });
    for attempt in 1..=5 {
        let (status, answer) = api.post("/events", &body).await.unwrap();
        if status == 200 {
            return;
        }
        assert!(status == 503 && attempt < 5, "{status}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reconnects_with_resume_from_gets_every_event_once_in_order() {
    let stack = Stack::start();
    let gateway = stack.gateway().await;
    let api = stack.api(&gateway);
    let channel = "resume-room";
    const TOTAL: usize = 2000;

    let mut first = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    first.subscribe(channel).await.unwrap();

    // The publisher keeps going the whole time; `published` says how far.
    let (published_tx, mut published) = watch::channel(0usize);
    let publisher = tokio::spawn({
        let api = stack.api(&gateway);
        async move {
            for i in 0..TOTAL {
                trigger_ok(&api, channel, &i.to_string()).await;
                published_tx.send_replace(i + 1);
            }
        }
    });

    let mut got = Vec::new();
    while got.len() < 100 {
        got.push(got_frame(&mut first).await);
    }
    drop(first);
    // Reconnect well behind the publisher, while it is still publishing.
    published
        .wait_for(|n| *n >= 1000)
        .await
        .expect("publisher alive");
    let mut second = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    let last = got.last().unwrap().seq;
    subscribe_resuming(&mut second, channel, last).await;
    read_until(&mut second, "e", &(TOTAL - 1).to_string(), &mut got).await;
    publisher.await.unwrap();

    let data: Vec<String> = got.iter().map(|g| g.data.clone()).collect();
    let expected: Vec<String> = (0..TOTAL).map(|i| i.to_string()).collect();
    assert_eq!(data, expected, "every event once, in publish order");
    assert_eq!(got[0].prev_seq, Some(0), "the channel's first event");
    assert_complete_chain("resumed", &got, &stack.stored_seqs(channel).await);
    drop(api);
}

async fn got_frame(socket: &mut PusherSocket) -> Got {
    got(&socket.next_event_of(&["e"]).await.unwrap())
}

#[tokio::test]
async fn resuming_at_the_newest_event_replays_nothing_and_stays_live() {
    let stack = Stack::start();
    let gateway = stack.gateway().await;
    let api = stack.api(&gateway);
    let channel = "resume-up-to-date";
    trigger_ok(&api, channel, "a").await;
    let newest = *stack.stored_seqs(channel).await.last().unwrap();
    let mut socket = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    subscribe_resuming(&mut socket, channel, newest).await;
    trigger_ok(&api, channel, "b").await;
    let frame = socket
        .next_event_of(&["e", "herald:resume_failed"])
        .await
        .unwrap();
    assert_eq!(frame["event"], "e");
    assert_eq!(frame["data"], "b", "nothing replayed, the next live event");
    assert_eq!(frame["prev_seq"].as_u64(), Some(newest));
}

#[tokio::test]
async fn a_malformed_resume_from_is_refused_with_a_subscription_error() {
    let stack = Stack::start();
    let gateway = stack.gateway().await;
    let mut socket = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    for bad in [json!(-1), json!("x"), json!(1.5), json!({})] {
        socket
            .send_event(
                "pusher:subscribe",
                json!({ "channel": "c", "resume_from": bad }),
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
        assert_eq!(frame["event"], "pusher:subscription_error", "{bad}");
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["type"], "InvalidRequest");
        assert_eq!(data["status"], 400);
    }
}

/// What `herald:resume_failed` said.
fn resume_failed(frame: &Value) -> (u64, String) {
    assert_eq!(frame["event"], "herald:resume_failed", "{frame}");
    let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    (
        data["oldest_seq"].as_u64().unwrap(),
        data["reason"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_position_older_than_retention_gets_resume_failed_with_the_oldest_seq_and_a_live_subscription(
) {
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.stream.max_msgs_per_channel = 5;
    let gateway = stack.gateway_with(config).await;
    let api = stack.api(&gateway);
    let channel = "resume-retention";
    for i in 0..10 {
        trigger_ok(&api, channel, &i.to_string()).await;
    }
    let stored = stack.stored_seqs(channel).await;
    assert_eq!(stored.len(), 5, "the stream keeps the channel's last 5");
    let mut socket = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    // The client has up to event 2, long gone.
    subscribe_resuming(&mut socket, channel, stored[0] - 3).await;
    let frame = socket
        .next_event_of(&["e", "herald:resume_failed"])
        .await
        .unwrap();
    assert_eq!(resume_failed(&frame), (stored[0], "retention".to_owned()));
    // Nothing of the old events is replayed, but the subscription is live.
    trigger_ok(&api, channel, "live").await;
    let frame = socket.next_event_of(&["e"]).await.unwrap();
    assert_eq!(frame["data"], "live");

    // A position that is still stored resumes as usual.
    let mut other = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    subscribe_resuming(&mut other, channel, stored[2]).await;
    let mut got = Vec::new();
    read_until(&mut other, "e", "live", &mut got).await;
    let data: Vec<&str> = got.iter().map(|g| g.data.as_str()).collect();
    assert_eq!(data, ["8", "9", "live"]);
}

#[tokio::test]
async fn a_position_further_back_than_the_replay_bound_or_past_the_end_gets_resume_failed() {
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.resume_max_events = 3;
    let gateway = stack.gateway_with(config).await;
    let api = stack.api(&gateway);
    let channel = "resume-bound";
    for i in 0..6 {
        trigger_ok(&api, channel, &i.to_string()).await;
    }
    let stored = stack.stored_seqs(channel).await;
    let mut socket = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    subscribe_resuming(&mut socket, channel, stored[0]).await;
    let frame = socket
        .next_event_of(&["e", "herald:resume_failed"])
        .await
        .unwrap();
    assert_eq!(
        resume_failed(&frame),
        (stored[0], "too_far_behind".to_owned())
    );

    // Exactly at the bound: replayed.
    let mut near = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    subscribe_resuming(&mut near, channel, stored[2]).await;
    let mut got = Vec::new();
    read_until(&mut near, "e", "5", &mut got).await;
    assert_eq!(got.len(), 3);

    let mut future = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    subscribe_resuming(&mut future, "resume-bound", 1_000_000).await;
    let frame = future
        .next_event_of(&["e", "herald:resume_failed"])
        .await
        .unwrap();
    assert_eq!(resume_failed(&frame).1, "unknown_position");
}

/// Wait until the gateway's gap-repair counter moved past `before`.
async fn gap_repaired(port: u16, before: f64) {
    herald_testkit::eventually(
        Duration::from_secs(30),
        "the gateway to repair the gap",
        || async {
            (metric(port, "herald_gateway_gaps_repaired_total").await > before).then_some(())
        },
    )
    .await;
}

/// `n` sockets subscribed to `channel`.
async fn subscribers(port: u16, channel: &str, n: usize) -> Vec<PusherSocket> {
    let mut subs = Vec::new();
    for _ in 0..n {
        let mut s = PusherSocket::connect(port, "app-key").await.unwrap();
        s.subscribe(channel).await.unwrap();
        subs.push(s);
    }
    subs
}

/// A gateway whose NATS connection goes through a [`TcpProxy`]: cut, it
/// closes the gateway's connection and refuses new ones, while NATS and every
/// other client carry on.
async fn gateway_behind_proxy(stack: &Stack) -> (TcpProxy, herald_tests::Running) {
    let proxy = TcpProxy::start(stack.nats.port()).await.unwrap();
    let mut config = stack.gateway_config();
    config.nats_url = format!("nats://127.0.0.1:{}", proxy.port());
    let gateway = stack.gateway_with(config).await;
    (proxy, gateway)
}

/// Publish straight to the channel's stream (as another gateway would)
/// and wait for the ack.
async fn store_directly(
    js: &async_nats::jetstream::Context,
    stack: &Stack,
    channel: &str,
    data: &str,
) {
    let app = herald_proto::AppId::parse("app-id").unwrap();
    let name = herald_proto::ChannelName::parse(channel).unwrap();
    let envelope = herald_proto::Envelope::new(
        herald_proto::EventKind::Trigger,
        "app-id",
        channel,
        "e",
        data.to_owned(),
        None,
    );
    herald_stream::publish_envelope(
        js,
        &stack.subjects,
        &app,
        &name,
        &envelope,
        &envelope.id,
        &herald_stream::PublishOptions::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Connected subscribers read until the marker; each must hold every
/// stored event exactly once, in order.
async fn assert_subscribers_complete(
    stack: &Stack,
    channel: &str,
    subs: &mut [PusherSocket],
    from: usize,
    marker: &str,
) {
    let stored = stack.stored_seqs(channel).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        read_until(sub, "e", marker, &mut got).await;
        assert_complete_chain(&format!("subscriber {i}"), &got, &stored[from..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_while_a_gateway_was_cut_off_from_nats_reach_its_connected_subscribers_once_in_order(
) {
    let stack = Stack::start();
    let (proxy, gateway) = gateway_behind_proxy(&stack).await;
    let channel = "cut-room";
    let mut subs = subscribers(gateway.port, channel, 2).await;
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    for i in 0..20 {
        store_directly(&js, &stack, channel, &format!("before-{i}")).await;
    }
    let gaps_before = metric(gateway.port, "herald_gateway_gaps_repaired_total").await;
    proxy.cut();
    // Stored while the gateway cannot hear the live subject.
    for i in 0..30 {
        store_directly(&js, &stack, channel, &format!("during-{i}")).await;
    }
    proxy.reopen();
    // After the reconnect, more events; the marker ends each reader.
    gap_repaired(gateway.port, gaps_before).await;
    for i in 0..20 {
        store_directly(&js, &stack, channel, &format!("after-{i}")).await;
    }
    store_directly(&js, &stack, channel, "marker").await;
    assert_subscribers_complete(&stack, channel, &mut subs, 0, "marker").await;
    assert!(metric(gateway.port, "herald_gateway_events_repaired_total").await >= 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_restart_every_acknowledged_event_reaches_every_connected_subscriber_once_in_order(
) {
    let mut stack = Stack::start();
    let (proxy, gateway) = gateway_behind_proxy(&stack).await;
    let api = stack.api(&gateway);
    let channel = "restart-room";
    let mut subs = subscribers(gateway.port, channel, 2).await;
    for i in 0..20 {
        trigger_ok(&api, channel, &format!("before-{i}")).await;
    }
    let gaps_before = metric(gateway.port, "herald_gateway_gaps_repaired_total").await;
    // The restart: the gateway stays cut off until events were stored on
    // the restarted server, so it has something to repair for certain.
    proxy.cut();
    stack.nats.restart().unwrap();
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    for i in 0..25 {
        store_directly(&js, &stack, channel, &format!("while-away-{i}")).await;
    }
    proxy.reopen();
    gap_repaired(gateway.port, gaps_before).await;
    // Acknowledged publishes through the gateway's own HTTP API again.
    for i in 0..20 {
        trigger_ok(&api, channel, &format!("after-{i}")).await;
    }
    trigger_ok(&api, channel, "marker").await;
    assert_subscribers_complete(&stack, channel, &mut subs, 0, "marker").await;
}

/// Join the presence `channel` as `user`.
async fn join_presence(socket: &mut PusherSocket, channel: &str, user: &str) {
    socket
        .join_presence(SECRET, channel, user, json!({ "name": user }))
        .await
        .unwrap();
}

fn is_member_event(frame: &Value) -> bool {
    frame["event"]
        .as_str()
        .is_some_and(|e| e.starts_with("pusher_internal:member_"))
}

/// The frames a socket gets before `marker`'s member event, every one a
/// member event, as (event, user).
async fn member_events_until(socket: &mut PusherSocket, marker: &str) -> Vec<(String, String)> {
    let (before, _) = socket
        .frames_until(&format!("{marker}'s member event"), |f| {
            is_member_event(f) && data_of(f)["user_id"] == marker
        })
        .await
        .unwrap();
    before
        .iter()
        .map(|f| {
            assert!(is_member_event(f), "{f}");
            let user = data_of(f)["user_id"].as_str().unwrap().to_owned();
            (f["event"].as_str().unwrap().to_owned(), user)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_changes_missed_while_a_gateway_was_cut_off_from_nats_are_sent_as_differences_after_the_reconnect(
) {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let (proxy, cut_off) = gateway_behind_proxy(&stack).await;
    let other = stack.gateway().await;
    let channel = "presence-cut";
    let mut observer = PusherSocket::connect(cut_off.port, "app-key")
        .await
        .unwrap();
    join_presence(&mut observer, channel, "observer").await;
    let mut leaver = PusherSocket::connect(other.port, "app-key").await.unwrap();
    join_presence(&mut leaver, channel, "leaver").await;
    let added = member_events_until(&mut observer, "leaver").await;
    assert!(added.is_empty(), "{added:?}");

    let repaired_before =
        metric(cut_off.port, "herald_gateway_member_changes_repaired_total").await;
    proxy.cut();
    // While the observer's gateway cannot hear member events: one joins,
    // one leaves (on the other gateway; well within the presence TTL).
    drop(leaver);
    let mut joiner = PusherSocket::connect(other.port, "app-key").await.unwrap();
    join_presence(&mut joiner, channel, "joiner").await;
    let members = |port| async move {
        let api = herald_tests::PusherApi::new(port, "app-id", "app-key", "app-secret");
        let (_, body) = api
            .get(&format!("/channels/{channel}/users"), &[])
            .await
            .unwrap();
        let mut ids: Vec<String> = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    herald_testkit::eventually(
        Duration::from_secs(10),
        "the presence service to see both changes",
        || async { (members(other.port).await == ["joiner", "observer"]).then_some(()) },
    )
    .await;
    proxy.reopen();
    herald_testkit::eventually(
        Duration::from_secs(20),
        "the member differences to be sent",
        || async {
            (metric(cut_off.port, "herald_gateway_member_changes_repaired_total").await
                >= repaired_before + 2.0)
                .then_some(())
        },
    )
    .await;
    // A marker joins after the repair: everything before it is what the
    // observer was told about the cut, each change exactly once.
    let mut marker = PusherSocket::connect(other.port, "app-key").await.unwrap();
    join_presence(&mut marker, channel, "marker").await;
    let mut changes = member_events_until(&mut observer, "marker").await;
    changes.sort();
    assert_eq!(
        changes,
        [
            (
                "pusher_internal:member_added".to_owned(),
                "joiner".to_owned()
            ),
            (
                "pusher_internal:member_removed".to_owned(),
                "leaver".to_owned()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_closed_with_4200_resumes_and_has_lost_nothing() {
    let mut app = herald_config::AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_message_bytes = 256 * 1024;
    let stack = Stack::with_apps(herald_config::AppRegistry::single(app));
    let mut config = stack.gateway_config();
    config.outbound_queue_bytes = 1024 * 1024;
    let gateway = stack.gateway_with(config).await;
    let api = stack.api(&gateway);
    let channel = "slow-resume";
    let mut slow = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    slow.subscribe(channel).await.unwrap();

    // The socket stops reading; 200 KiB events until the gateway gives up
    // on it (the loopback buffers hold a few MiB).
    let padding = "x".repeat(200 * 1024);
    let mut published = 0u64;
    while metric(gateway.port, "herald_gateway_slow_consumers_total").await < 1.0 {
        assert!(published < 400, "no slow consumer after {published} events");
        for _ in 0..10 {
            trigger_ok(&api, channel, &format!("{published:06}{padding}")).await;
            published += 1;
        }
    }
    // What was queued for it arrives, then 4200.
    let mut got = Vec::new();
    let code = loop {
        match slow.next_frame().await {
            Ok(frame) if frame["event"] == "e" => got.push(super_got(&frame)),
            Ok(_) => {}
            Err(err) => break err.to_string(),
        }
    };
    assert!(code.contains("4200"), "closed with 4200: {code}");
    // More events while it is away, then it resumes from what it has.
    for i in 0..20 {
        trigger_ok(&api, channel, &format!("after-{i}")).await;
    }
    trigger_ok(&api, channel, "marker").await;
    let from = got.last().map(|g| g.seq).unwrap_or(0);
    let mut again = PusherSocket::connect(gateway.port, "app-key")
        .await
        .unwrap();
    subscribe_resuming(&mut again, channel, from).await;
    let mut rest = Vec::new();
    read_until(&mut again, "e", "marker", &mut rest).await;
    got.extend(rest);
    let stored = stack.stored_seqs(channel).await;
    assert_complete_chain("slow then resumed", &got, &stored);
}

/// `got` of a frame whose data may be large (only its seq chain matters).
fn super_got(frame: &Value) -> Got {
    got(frame)
}

#[tokio::test]
async fn private_presence_and_cache_channels_resume_after_their_usual_authorization() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let gateway = stack.gateway().await;
    let api = stack.api(&gateway);
    for channel in ["private-r", "presence-r", "cache-r"] {
        for i in 0..5 {
            trigger_ok(&api, channel, &format!("{channel}-{i}")).await;
        }
        trigger_ok(&api, channel, "last").await;
        let stored = stack.stored_seqs(channel).await;
        let from = stored[1];
        let mut socket = PusherSocket::connect(gateway.port, "app-key")
            .await
            .unwrap();
        // Without authorization a resume is refused like any subscribe.
        let refused = socket
            .subscribe_with(
                json!({ "channel": channel, "resume_from": from, "auth": "app-key:bad" }),
            )
            .await
            .unwrap();
        if channel != "cache-r" {
            assert_eq!(refused["event"], "pusher:subscription_error", "{channel}");
        }
        let mut socket = PusherSocket::connect(gateway.port, "app-key")
            .await
            .unwrap();
        let auth = |socket: &PusherSocket, data: Option<&str>| {
            herald_proto::pusher::channel_auth("app-key", SECRET, &socket.socket_id, channel, data)
        };
        let frame = match channel {
            "private-r" => socket
                .subscribe_with(
                    json!({ "channel": channel, "resume_from": from, "auth": auth(&socket, None) }),
                )
                .await
                .unwrap(),
            "presence-r" => {
                let data = json!({ "user_id": "u1" }).to_string();
                socket
                    .subscribe_with(json!({ "channel": channel, "resume_from": from,
                        "auth": auth(&socket, Some(&data)), "channel_data": data }))
                    .await
                    .unwrap()
            }
            _ => socket
                .subscribe_with(json!({ "channel": channel, "resume_from": from }))
                .await
                .unwrap(),
        };
        assert_eq!(
            frame["event"], "pusher_internal:subscription_succeeded",
            "{channel}: {frame}"
        );
        // The events after the position, in order; for the cache channel
        // instead of its last event alone (and no cache_miss).
        let mut got = Vec::new();
        read_until(&mut socket, "e", "last", &mut got).await;
        let data: Vec<&str> = got.iter().map(|g| g.data.as_str()).collect();
        let expected = [2, 3, 4].map(|i| format!("{channel}-{i}"));
        assert_eq!(
            &data[..3],
            &expected.iter().map(String::as_str).collect::<Vec<_>>()[..],
            "{channel}"
        );
        assert_eq!(data.len(), 4, "{channel}: {data:?}");
        assert_complete_chain(channel, &got, &stored[2..]);
    }
}
