//! Presence channels end to end: pusher clients on two gateways, the
//! presence service, real NATS.

use futures::StreamExt;
use herald_config::{AppConfig, AppRegistry};
use herald_proto::presence::PresenceKey;
use herald_proto::pusher;
use herald_tests::{data_of, eventually, GatewayProcess, PusherSocket, Stack, SECRET};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// The members an observer was told of, and whatever was wrong with what it
/// was told.
#[derive(Default)]
struct Followed {
    members: BTreeSet<String>,
    wrong: Vec<String>,
}

/// The `user_info` every test member has.
fn info(user: &str) -> Value {
    json!({"name": format!("User {user}")})
}

/// Join `channel` as `user`; returns the `presence` object of the success.
async fn join(socket: &mut PusherSocket, channel: &str, user: &str) -> Value {
    socket
        .join_presence(SECRET, channel, user, info(user))
        .await
        .unwrap()
}

fn is_member_event(frame: &Value, event: &str, user: &str) -> bool {
    frame["event"] == format!("pusher_internal:{event}") && data_of(frame)["user_id"] == user
}

/// The next frame must be `member_added` for `user`: nothing else first.
async fn next_is_added(socket: &mut PusherSocket, user: &str) -> Value {
    socket
        .quiet_until(&format!("member_added {user}"), |f| {
            is_member_event(f, "member_added", user)
        })
        .await
        .unwrap()
}

/// The next frame must be `member_removed` for `user`: nothing else first.
async fn next_is_removed(socket: &mut PusherSocket, user: &str) -> Value {
    socket
        .quiet_until(&format!("member_removed {user}"), |f| {
            is_member_event(f, "member_removed", user)
        })
        .await
        .unwrap()
}

/// Wait until no presence key of `socket_id` is left in the bucket: its
/// gateway has processed the socket's close, so whatever presence does about
/// it comes before the events of any later change.
async fn wait_keys_gone(stack: &Stack, socket_id: &str) {
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let kv = js
        .get_key_value(stack.subjects.presence_bucket())
        .await
        .unwrap();
    eventually(
        WAIT,
        "the closed socket's presence keys deleted",
        || async {
            let keys: Vec<String> = kv
                .keys()
                .await
                .unwrap()
                .filter_map(|k| async move { k.ok() })
                .collect()
                .await;
            let of_socket = |key: &String| match PresenceKey::parse(key) {
                Ok(
                    PresenceKey::Subscription { socket_id: s, .. }
                    | PresenceKey::Connection { socket_id: s, .. },
                ) => s == socket_id,
                _ => false,
            };
            (!keys.iter().any(of_socket)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn members_on_two_gateways_see_each_other_join_and_leave() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut alice = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let presence = join(&mut alice, "presence-room", "alice").await;
    assert_eq!(presence["count"], 1);
    assert_eq!(presence["ids"], json!(["alice"]));
    assert_eq!(presence["hash"]["alice"]["name"], "User alice");

    let mut bob = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    let presence = join(&mut bob, "presence-room", "bob").await;
    assert_eq!(presence["count"], 2);
    assert_eq!(presence["ids"], json!(["alice", "bob"]));
    // Bob's join is alice's marker: no member_added for her own join
    // before it.
    let added = next_is_added(&mut alice, "bob").await;
    assert_eq!(added["channel"], "presence-room");
    assert_eq!(
        data_of(&added),
        json!({"user_id": "bob", "user_info": {"name": "User bob"}})
    );

    // Carol's join is bob's marker, and alice's: nothing else before it.
    let mut carol = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    assert_eq!(join(&mut carol, "presence-room", "carol").await["count"], 3);
    next_is_added(&mut bob, "carol").await;
    next_is_added(&mut alice, "carol").await;

    bob.send_event("pusher:unsubscribe", json!({"channel": "presence-room"}))
        .await
        .unwrap();
    for socket in [&mut alice, &mut carol] {
        let removed = next_is_removed(socket, "bob").await;
        assert_eq!(data_of(&removed), json!({"user_id": "bob"}));
    }
}

#[tokio::test]
async fn a_user_on_two_devices_is_one_member() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut watcher = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    join(&mut watcher, "presence-team", "watcher").await;
    let mut marker = PusherSocket::connect(gw2.port, "app-key").await.unwrap();

    let mut phone = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    join(&mut phone, "presence-team", "carol").await;
    next_is_added(&mut watcher, "carol").await;

    let mut laptop = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    let presence = join(&mut laptop, "presence-team", "carol").await;
    assert_eq!(presence["count"], 2, "carol counts once");
    // Each marker is a change made after the one under test: had that one
    // produced an event, it would come first.
    join(&mut marker, "presence-team", "dave").await;
    next_is_added(&mut watcher, "dave").await; // a second device adds no member

    let phone_id = phone.socket_id.clone();
    drop(phone);
    wait_keys_gone(&stack, &phone_id).await;
    marker
        .send_event("pusher:unsubscribe", json!({"channel": "presence-team"}))
        .await
        .unwrap();
    next_is_removed(&mut watcher, "dave").await; // closing one device removes no member

    let laptop_id = laptop.socket_id.clone();
    drop(laptop);
    next_is_removed(&mut watcher, "carol").await;
    wait_keys_gone(&stack, &laptop_id).await;
    join(&mut marker, "presence-team", "erin").await;
    next_is_added(&mut watcher, "erin").await; // carol was removed once
}

#[tokio::test]
async fn forged_or_oversized_channel_data_is_refused() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let gw = stack.gateway().await;
    let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let good = json!({"user_id": "u"}).to_string();
    let forged = json!({"user_id": "admin"}).to_string();
    let signed_for_good = pusher::channel_auth(
        "app-key",
        "app-secret",
        &s.socket_id,
        "presence-x",
        Some(&good),
    );
    let sign = |data: &str| {
        pusher::channel_auth(
            "app-key",
            "app-secret",
            &s.socket_id,
            "presence-x",
            Some(data),
        )
    };
    let long_id = json!({"user_id": "u".repeat(129)}).to_string();
    let big_info = json!({"user_id": "u", "user_info": "x".repeat(1100)}).to_string();
    let no_id = json!({"user_info": {}}).to_string();
    let cases = [
        (
            json!({"channel": "presence-x", "auth": signed_for_good, "channel_data": forged}),
            401,
        ),
        (
            json!({"channel": "presence-x", "auth": signed_for_good}),
            401,
        ),
        (
            json!({"channel": "presence-x", "auth": sign(&long_id), "channel_data": long_id}),
            400,
        ),
        (
            json!({"channel": "presence-x", "auth": sign(&big_info), "channel_data": big_info}),
            413,
        ),
        (
            json!({"channel": "presence-x", "auth": sign(&no_id), "channel_data": no_id}),
            400,
        ),
    ];
    for (data, status) in cases {
        let frame = s.subscribe_with(data.clone()).await.unwrap();
        assert_eq!(frame["event"], "pusher:subscription_error", "{data}");
        assert_eq!(data_of(&frame)["status"], status, "{data}");
    }
    join(&mut s, "presence-x", "u").await;
}

#[tokio::test]
async fn a_full_presence_channel_refuses_new_members() {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_presence_members = 2;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let _presence = stack.presence().await;
    let gw = stack.gateway().await;
    let mut sockets = Vec::new();
    for user in ["a", "b"] {
        let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
        join(&mut s, "presence-small", user).await;
        sockets.push(s);
    }
    let mut third = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let frame = third
        .try_join_presence(SECRET, "presence-small", "c", info("c"))
        .await
        .unwrap();
    assert_eq!(frame["event"], "pusher:subscription_error");
    assert_eq!(data_of(&frame)["type"], "LimitReached");
    // A second device of an existing member still gets in.
    let mut again = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    assert_eq!(join(&mut again, "presence-small", "a").await["count"], 2);
}

#[tokio::test]
async fn many_users_joining_at_once_on_two_gateways_fill_the_channel_exactly_to_its_limit() {
    const LIMIT: usize = 6;
    const JOINERS: usize = 24;
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_presence_members = LIMIT;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let _presence = stack.presence().await;
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    // One member on each gateway before the rush, to watch it.
    let mut watchers = Vec::new();
    for (port, user) in [(gw1.port, "watcher-1"), (gw2.port, "watcher-2")] {
        let mut s = PusherSocket::connect(port, "app-key").await.unwrap();
        join(&mut s, "presence-rush", user).await;
        watchers.push((user.to_owned(), s));
    }
    next_is_added(&mut watchers[0].1, "watcher-2").await;

    // Everyone connected first, then every subscribe at once, half of them
    // on each gateway.
    let mut rush = Vec::new();
    for i in 0..JOINERS {
        let port = if i % 2 == 0 { gw1.port } else { gw2.port };
        let socket = PusherSocket::connect(port, "app-key").await.unwrap();
        rush.push((format!("user-{i:02}"), socket));
    }
    let answers = futures::future::join_all(rush.into_iter().map(|(user, mut s)| async move {
        let frame = s
            .try_join_presence(SECRET, "presence-rush", &user, info(&user))
            .await
            .unwrap();
        (user, s, frame)
    }))
    .await;
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for (user, socket, frame) in answers {
        match frame["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") => {
                let count = data_of(&frame)["presence"]["count"].as_u64().unwrap();
                assert!(count as usize <= LIMIT, "{user} was shown {count} members");
                admitted.push((user, socket));
            }
            _ => {
                assert_eq!(frame["event"], "pusher:subscription_error", "{frame}");
                assert_eq!(frame["channel"], "presence-rush");
                let data = data_of(&frame);
                assert_eq!(data["type"], "LimitReached", "{frame}");
                assert_eq!(data["status"], 403, "{frame}");
                assert!(data["error"].as_str().unwrap().contains("full"), "{frame}");
                refused.push((user, socket));
            }
        }
    }
    assert_eq!(admitted.len(), LIMIT - watchers.len(), "admitted");
    assert_eq!(refused.len(), JOINERS + watchers.len() - LIMIT, "refused");
    let members: BTreeSet<String> = watchers
        .iter()
        .chain(&admitted)
        .map(|(user, _)| user.clone())
        .collect();
    let (_, body) = stack
        .api(&gw1)
        .get("/channels/presence-rush/users", &[])
        .await
        .unwrap();
    let listed: BTreeSet<String> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, members);

    // The marker: one admitted user leaves, after every join and every
    // refused subscription's removal. Before it, each member may only have
    // seen member_added for admitted users (each once, never itself), and no
    // member_removed.
    let (leaver, mut leaving) = admitted.pop().unwrap();
    leaving
        .send_event("pusher:unsubscribe", json!({"channel": "presence-rush"}))
        .await
        .unwrap();
    for (user, socket) in watchers.iter_mut().chain(admitted.iter_mut()) {
        let (before, _) = socket
            .frames_until(&format!("member_removed {leaver}"), |f| {
                is_member_event(f, "member_removed", &leaver)
            })
            .await
            .unwrap();
        let mut added = HashMap::new();
        for frame in &before {
            assert_eq!(
                frame["event"], "pusher_internal:member_added",
                "{user} got {frame}"
            );
            let who = data_of(frame)["user_id"].as_str().unwrap().to_owned();
            assert!(members.contains(&who), "{user} was told {who} joined");
            assert_ne!(&who, user, "{user} was told of its own join");
            *added.entry(who).or_insert(0) += 1;
        }
        assert!(added.values().all(|n| *n == 1), "{user}: {added:?}");
    }
    // The refused sockets are still open and got nothing at all: their
    // gateways have fanned out the marker, so anything for them was queued
    // before the pong.
    for (user, socket) in &mut refused {
        socket
            .quiet_until_pong()
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
    }
}

#[tokio::test]
async fn the_http_api_lists_and_counts_presence_users_across_gateways() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let mut a = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    let mut b = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    let mut b2 = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    join(&mut a, "presence-lobby", "ann").await;
    join(&mut b, "presence-lobby", "ben").await;
    join(&mut b2, "presence-lobby", "ben").await;
    let api = stack.api(&gw1);
    let (status, body) = api
        .get("/channels/presence-lobby/users", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"users": [{"id": "ann"}, {"id": "ben"}]}));
    let (_, body) = api
        .get(
            "/channels/presence-lobby",
            &[("info", "user_count,subscription_count")],
        )
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    let (_, body) = api
        .get(
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await
        .unwrap();
    assert_eq!(body["channels"]["presence-lobby"]["user_count"], 2);
}

#[tokio::test]
async fn a_killed_gateways_members_are_removed_within_the_ttl_and_one_sweep_and_others_stay() {
    const TTL: Duration = Duration::from_secs(3);
    const SWEEP: Duration = Duration::from_millis(500);
    /// Beyond TTL + sweep: the deletes' round trip through the KV watch and
    /// the event's fan-out by the surviving gateway, on a loaded machine.
    const MARGIN: Duration = Duration::from_secs(1);
    let stack = Stack::start();
    let mut config = stack.presence_config();
    config.heartbeat_ttl = TTL;
    config.sweep_interval = SWEEP;
    let _presence = stack.presence_with(config).await;
    let mut gw_config = stack.gateway_config();
    gw_config.heartbeat_interval = Duration::from_secs(1);
    gw_config.gateway_ttl = TTL;
    let survivor_gw = stack.gateway_with(gw_config).await;
    let doomed_gw = GatewayProcess::start(&stack, 1, TTL.as_secs()).await;

    let mut survivor = PusherSocket::connect(survivor_gw.port, "app-key")
        .await
        .unwrap();
    join(&mut survivor, "presence-ops", "stays").await;
    let mut victim = PusherSocket::connect(doomed_gw.port, "app-key")
        .await
        .unwrap();
    join(&mut victim, "presence-ops", "goes").await;
    next_is_added(&mut survivor, "goes").await;

    // The doomed gateway's last heartbeat is no later than its death: it is
    // dead one TTL after that at the latest, and seen dead by the next sweep.
    let killed_at = tokio::time::Instant::now();
    doomed_gw.kill();
    let bound = TTL + SWEEP + MARGIN;
    let removed = survivor
        .next_frame_within(bound)
        .await
        .unwrap_or_else(|e| panic!("no member_removed within {bound:?} of the kill: {e}"));
    assert!(
        is_member_event(&removed, "member_removed", "goes"),
        "{removed}"
    );
    assert!(killed_at.elapsed() <= bound);
    let (_, body) = stack
        .api(&survivor_gw)
        .get("/channels/presence-ops/users", &[])
        .await
        .unwrap();
    assert_eq!(body, json!({"users": [{"id": "stays"}]}));
}

#[tokio::test]
async fn a_restarted_presence_service_emits_no_false_leaves_or_joins() {
    let stack = Stack::start();
    let presence = stack.presence().await;
    let gw = stack.gateway().await;
    let mut a = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut b = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    join(&mut a, "presence-calm", "a").await;
    join(&mut b, "presence-calm", "b").await;
    next_is_added(&mut a, "b").await;

    presence.kill().await;
    let _presence = stack.presence().await;
    // A join after the restart is the marker: no event for the members who
    // stayed comes before it, and the restarted service works.
    let mut c = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    assert_eq!(join(&mut c, "presence-calm", "c").await["count"], 3);
    next_is_added(&mut a, "c").await;
    next_is_added(&mut b, "c").await;
}

/// Client events on, a 300 ms typing timeout: the presence service and a
/// gateway (the stack keeps them alive).
async fn typing_stack() -> (Stack, herald_tests::Running, herald_tests::Running) {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.enable_client_messages = true;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let mut config = stack.presence_config();
    config.typing_timeout = Duration::from_millis(300);
    let presence = stack.presence_with(config).await;
    let gw = stack.gateway().await;
    (stack, presence, gw)
}

#[tokio::test]
async fn typing_stops_by_itself_when_the_typist_goes_quiet() {
    let (_stack, _presence, gw) = typing_stack().await;
    let mut typist = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut reader = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    join(&mut typist, "presence-chat", "typist").await;
    join(&mut reader, "presence-chat", "reader").await;
    typist
        .send_client_event("presence-chat", "client-typing", json!({}))
        .await
        .unwrap();
    let typing = reader.next_event_of(&["client-typing"]).await.unwrap();
    assert_eq!(typing["user_id"], "typist");
    let stopped = reader
        .next_event_of(&["herald:typing_stopped"])
        .await
        .unwrap();
    assert_eq!(stopped["channel"], "presence-chat");
    assert_eq!(stopped["data"]["user_id"], "typist");
}

#[tokio::test]
async fn typing_stopped_on_a_private_channel_names_the_signed_in_typist() {
    let (_stack, _presence, gw) = typing_stack().await;
    // A direct message: a private channel, both sides signed in.
    let channel = "private-dm-ann-bo";
    let mut ann = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut bo = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    for (socket, user) in [(&mut ann, "ann"), (&mut bo, "bo")] {
        socket.sign_in(SECRET, user, Value::Null).await.unwrap();
        socket.subscribe_private(SECRET, channel).await.unwrap();
    }
    ann.send_client_event(channel, "client-typing", json!({}))
        .await
        .unwrap();
    let typing = bo.next_event_of(&["client-typing"]).await.unwrap();
    assert_eq!(
        typing.get("user_id"),
        None,
        "a client event on a private channel carries no user_id, as with Pusher"
    );
    let stopped = bo.next_event_of(&["herald:typing_stopped"]).await.unwrap();
    assert_eq!(stopped["channel"], channel);
    assert_eq!(stopped["data"]["user_id"], "ann");
}

#[tokio::test]
async fn a_thousand_members_join_and_leave_with_correct_counts() {
    const N: usize = 1000;
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_presence_members = 2 * N;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let _presence = stack.presence().await;
    let (gw1, gw2) = (stack.gateway().await, stack.gateway().await);
    let api = stack.api(&gw1);

    // One observer follows the member events: each add must be of a user
    // not yet a member, each removal of a member (so a duplicate cannot make
    // up for a lost one). Every member socket is drained by its own task so
    // no queue fills up.
    let mut observer = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    join(&mut observer, "presence-big", "observer").await;
    let seen = Arc::new(Mutex::new(Followed::default()));
    let observer_task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let frame = match observer.next_frame_within(Duration::from_secs(60)).await {
                    Ok(frame) => frame,
                    Err(e) => {
                        seen.lock().unwrap().wrong.push(format!("observer: {e}"));
                        break;
                    }
                };
                let mut seen = seen.lock().unwrap();
                let user = || data_of(&frame)["user_id"].as_str().unwrap().to_owned();
                match frame["event"].as_str() {
                    Some("pusher_internal:member_added") => {
                        let user = user();
                        if !seen.members.insert(user.clone()) {
                            seen.wrong.push(format!("+{user} twice"));
                        }
                    }
                    Some("pusher_internal:member_removed") => {
                        let user = user();
                        if !seen.members.remove(&user) {
                            seen.wrong.push(format!("-{user} not a member"));
                        }
                    }
                    _ => seen.wrong.push(format!("unexpected {frame}")),
                }
            }
        }
    });
    let observed = |expected: BTreeSet<String>| {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().unwrap();
            assert!(seen.wrong.is_empty(), "{:?}", seen.wrong);
            (seen.members == expected).then_some(())
        }
    };
    let users = |range: std::ops::Range<usize>| -> BTreeSet<String> {
        range.map(|i| format!("user-{i}")).collect()
    };

    let user_count = |api: herald_tests::PusherApi| async move {
        let (_, body) = api
            .get("/channels/presence-big", &[("info", "user_count")])
            .await
            .unwrap();
        body["user_count"].as_i64().unwrap()
    };
    let mut closers = Vec::new();
    for step in 0..(N / 100) {
        let joins = (0..100).map(|i| {
            let port = if i % 2 == 0 { gw1.port } else { gw2.port };
            let user = format!("user-{}", step * 100 + i);
            async move {
                let mut s = PusherSocket::connect(port, "app-key").await.unwrap();
                join(&mut s, "presence-big", &user).await;
                s
            }
        });
        for s in futures::future::join_all(joins).await {
            let (close_tx, mut close_rx) = tokio::sync::oneshot::channel::<()>();
            closers.push(close_tx);
            tokio::spawn(async move {
                let mut s = s;
                loop {
                    tokio::select! {
                        _ = &mut close_rx => break,
                        frame = s.inner().next() => if frame.is_none() { break },
                    }
                }
            });
        }
        let expected = 1 + (step as i64 + 1) * 100;
        eventually(WAIT, "member count after joins", || {
            let api = api.clone();
            async move { (user_count(api).await == expected).then_some(()) }
        })
        .await;
        let joined = users(0..(step + 1) * 100);
        eventually(WAIT, "the observer's members after joins", || {
            observed(joined.clone())
        })
        .await;
    }
    for (i, closer) in closers.into_iter().enumerate() {
        let _ = closer.send(());
        if (i + 1) % 250 == 0 {
            let expected = 1 + (N - i - 1) as i64;
            eventually(WAIT, "member count after leaves", || {
                let api = api.clone();
                async move { (user_count(api).await == expected).then_some(()) }
            })
            .await;
            let left = users(i + 1..N);
            eventually(WAIT, "the observer's members after leaves", || {
                observed(left.clone())
            })
            .await;
        }
    }
    observer_task.abort();
}

#[tokio::test]
async fn a_gateway_whose_keys_were_expired_while_it_lived_announces_its_members_again() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let mut config = stack.gateway_config();
    config.heartbeat_interval = Duration::from_millis(200);
    let id = config.gateway_id.clone();
    let gw1 = stack.gateway_with(config).await;
    let gw2 = stack.gateway().await;
    let mut alice = PusherSocket::connect(gw1.port, "app-key").await.unwrap();
    join(&mut alice, "presence-revive", "alice").await;
    let mut bob = PusherSocket::connect(gw2.port, "app-key").await.unwrap();
    join(&mut bob, "presence-revive", "bob").await;

    // What the presence service does to a gateway silent for longer than
    // the TTL (here without waiting for one): delete its keys, then its
    // heartbeat. The gateway and its sockets are alive all along.
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let kv = js
        .get_key_value(stack.subjects.presence_bucket())
        .await
        .unwrap();
    let keys: Vec<String> = kv
        .keys()
        .await
        .unwrap()
        .filter_map(|k| async move { k.ok() })
        .collect()
        .await;
    let of_gw1 = |key: &String| match PresenceKey::parse(key) {
        Ok(PresenceKey::Subscription { gateway, .. } | PresenceKey::Connection { gateway, .. }) => {
            gateway == id
        }
        _ => false,
    };
    let doomed: Vec<&String> = keys.iter().filter(|k| of_gw1(k)).collect();
    assert_eq!(doomed.len(), 1, "{keys:?}");
    for key in doomed {
        kv.delete(key).await.unwrap();
    }
    kv.delete(herald_tests::gateway_key(&id)).await.unwrap();

    // Bob is told alice left, then, once her gateway's next heartbeat finds
    // its key gone, that she is back.
    let removed = bob
        .next_event_of(&["pusher_internal:member_removed"])
        .await
        .unwrap();
    assert_eq!(data_of(&removed)["user_id"], "alice");
    let added = bob
        .next_event_of(&["pusher_internal:member_added"])
        .await
        .unwrap();
    assert_eq!(data_of(&added)["user_id"], "alice");
    let (_, body) = stack
        .api(&gw2)
        .get("/channels/presence-revive/users", &[])
        .await
        .unwrap();
    let mut ids: Vec<String> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
}

#[tokio::test]
async fn a_presence_cache_channel_sends_the_member_list_then_the_last_event() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let gw = stack.gateway().await;
    let (status, body) = stack
        .api(&gw)
        .trigger(&["presence-cache-room"], "topic", "{\"t\":\"hello\"}")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut alice = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let presence = join(&mut alice, "presence-cache-room", "alice").await;
    assert_eq!(presence["ids"], json!(["alice"]));
    let cached = alice.next_frame().await.unwrap();
    assert_eq!(cached["event"], "topic", "{cached}");
    assert_eq!(data_of(&cached)["t"], "hello");
}
