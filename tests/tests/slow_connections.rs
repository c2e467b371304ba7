//! Slow and stuck connections: a client that stops reading is let go of
//! within the write timeout with everything it held released; a client
//! that sends without reading cannot wedge its connection; a burst of small
//! frames is not mistaken for a slow client; and a stuck socket delays
//! nobody else's control requests.

use futures::{SinkExt, StreamExt};
use herald_config::{AppConfig, AppRegistry};
use herald_proto::pusher;
use herald_tests::{eventually, metric, PusherSocket, Stack};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

type Raw = WebSocketStream<TcpStream>;

fn data_of(frame: &Value) -> Value {
    serde_json::from_str(frame["data"].as_str().expect("data string")).expect("data json")
}

/// A WebSocket client whose socket takes at most a few KiB before the
/// gateway's writes block: it stands for a client that stops reading, without
/// the tens of MiB a loopback socket would otherwise buffer.
async fn connect_small_window(port: u16) -> (Raw, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let url = format!("ws://127.0.0.1:{port}/app/app-key?protocol=7");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let established = next_json(&mut ws).await;
    assert_eq!(established["event"], "pusher:connection_established");
    let socket_id = data_of(&established)["socket_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (ws, socket_id)
}

async fn next_json(ws: &mut Raw) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("readable");
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Read frames until one whose event is `event`.
async fn next_event(ws: &mut Raw, event: &str) -> Value {
    loop {
        let frame = next_json(ws).await;
        if frame["event"] == event {
            return frame;
        }
    }
}

fn presence_subscribe(socket_id: &str, channel: &str, user: &str) -> String {
    let channel_data = json!({ "user_id": user }).to_string();
    let auth = pusher::channel_auth(
        "app-key",
        "app-secret",
        socket_id,
        channel,
        Some(&channel_data),
    );
    json!({
        "event": "pusher:subscribe",
        "data": { "channel": channel, "auth": auth, "channel_data": channel_data },
    })
    .to_string()
}

fn signin(socket_id: &str, user: &str) -> String {
    let user_data = json!({ "id": user }).to_string();
    let auth = format!(
        "app-key:{}",
        pusher::user_signature("app-secret", socket_id, &user_data)
    );
    json!({ "event": "pusher:signin", "data": { "user_data": user_data, "auth": auth } })
        .to_string()
}

/// A frame the gateway answers with a ~9 KB `pusher:error` (it names the
/// unsupported event), so that a client sending it without reading fills
/// its socket fast.
fn frame_drawing_a_big_reply() -> String {
    json!({ "event": "x".repeat(9000) }).to_string()
}

/// Send `frame` in a loop until the socket fails (the gateway dropped it).
fn spam_until_dropped(mut ws: Raw, frame: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while ws.send(Message::text(frame.clone())).await.is_ok() {} })
}

fn big_events_app() -> AppConfig {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_message_bytes = 256 * 1024;
    app
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_within_the_write_timeout_and_releases_everything() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
    let mut app = big_events_app();
    app.limits.max_connections = 1;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let _presence = stack.presence().await;
    let mut config = stack.gateway_config();
    config.write_timeout = WRITE_TIMEOUT;
    // A queue far larger than what is published below: only the write
    // timeout can find this client out.
    config.outbound_queue_bytes = 256 * 1024 * 1024;
    config.max_connections = 1;
    let gw = stack.gateway_with(config).await;
    let other_gw = stack.gateway().await;

    let mut observer = PusherSocket::connect(other_gw.port, "app-key")
        .await
        .unwrap();
    observer
        .send_text(presence_subscribe(
            &observer.socket_id,
            "presence-room",
            "observer",
        ))
        .await
        .unwrap();
    observer
        .next_event_of(&["pusher_internal:subscription_succeeded"])
        .await
        .unwrap();

    let (mut stuck, socket_id) = connect_small_window(gw.port).await;
    stuck
        .send(Message::text(presence_subscribe(
            &socket_id,
            "presence-room",
            "stuck",
        )))
        .await
        .unwrap();
    next_event(&mut stuck, "pusher_internal:subscription_succeeded").await;
    stuck
        .send(Message::text(
            json!({"event": "pusher:subscribe", "data": {"channel": "firehose"}}).to_string(),
        ))
        .await
        .unwrap();
    next_event(&mut stuck, "pusher_internal:subscription_succeeded").await;
    let added = observer
        .next_event_of(&["pusher_internal:member_added"])
        .await
        .unwrap();
    assert_eq!(data_of(&added)["user_id"], "stuck");

    // From here on the client reads nothing. 8 MiB is more than its socket
    // and the gateway's take, so the gateway's writes block.
    let api = stack.api(&gw);
    let data = "x".repeat(200 * 1024);
    for _ in 0..40 {
        let (status, body) = api.trigger(&["firehose"], "big", &data).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let published = Instant::now();

    // Its presence membership is released: the observer sees it leave.
    let removed = observer
        .next_event_of(&["pusher_internal:member_removed"])
        .await
        .unwrap();
    assert_eq!(data_of(&removed)["user_id"], "stuck");
    let waited = published.elapsed();
    assert!(
        waited <= WRITE_TIMEOUT + Duration::from_secs(3),
        "released {waited:?} after the writes blocked"
    );
    // Its task, connection permit and app slot are released: the gateway
    // (max 1 connection, the app max 1) takes a new connection.
    eventually(
        Duration::from_secs(5),
        "the stuck connection's task gone",
        || async { (metric(gw.port, "herald_gateway_connections").await == 1.0).then_some(()) },
    )
    .await;
    PusherSocket::connect(gw.port, "app-key")
        .await
        .expect("a new connection is accepted once the stuck one is gone");
    // And its socket: once the client reads again it gets what was buffered,
    // then the end of the stream.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(msg)) = stuck.next().await {
            if let Message::Close(_) = msg {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the gateway closed the socket");
    assert!(metric(gw.port, "herald_gateway_write_timeouts_total").await >= 1.0);
}

#[tokio::test]
async fn a_client_that_keeps_sending_frames_that_draw_replies_but_never_reads_is_closed_as_a_slow_consumer(
) {
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    // Long enough that it is the queue's bound, not a write timeout, that
    // finds this client out; short enough to bound the close.
    config.write_timeout = Duration::from_secs(3);
    let gw = stack.gateway_with(config).await;
    let (ws, _) = connect_small_window(gw.port).await;
    let started = Instant::now();
    let spam = spam_until_dropped(ws, frame_drawing_a_big_reply());
    tokio::time::timeout(Duration::from_secs(30), spam)
        .await
        .expect("the gateway drops the connection")
        .unwrap();
    assert!(metric(gw.port, "herald_gateway_slow_consumers_total").await >= 1.0);
    eventually(
        Duration::from_secs(5),
        "the connection's task gone",
        || async { (metric(gw.port, "herald_gateway_connections").await == 0.0).then_some(()) },
    )
    .await;
    // A probe kept such a connection open for over 180 s.
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Join `channel` as `user` on the gateway on `port`; the task returned
/// reads (and drops) whatever the member is sent until `leave`, then drops
/// the connection without a goodbye.
async fn member_until(
    port: u16,
    channel: &str,
    user: String,
    leave: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut s = PusherSocket::connect(port, "app-key").await.unwrap();
    s.send_text(presence_subscribe(&s.socket_id, channel, &user))
        .await
        .unwrap();
    let ok = s
        .next_event_of(&[
            "pusher_internal:subscription_succeeded",
            "pusher:subscription_error",
        ])
        .await
        .unwrap();
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    tokio::spawn(async move {
        let ws = s.inner();
        loop {
            tokio::select! {
                _ = leave.cancelled() => break,
                msg = ws.next() => if !matches!(msg, Some(Ok(_))) { break },
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_1999_of_2000_members_leave_at_once_the_one_who_stays_gets_every_member_removed_and_stays(
) {
    const MEMBERS: usize = 2000;
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.limits.max_presence_members = MEMBERS;
    let stack = Stack::with_apps(AppRegistry::single(app));
    let _presence = stack.presence().await;
    // Over loopback the kernel would buffer the whole burst (its send
    // buffer grows to MiBs); over a real network much of it waits at the
    // gateway. A small socket buffer makes it wait there here too.
    // (One configuration each: each has its own gateway id.)
    let small_buffers = || {
        let mut config = stack.gateway_config();
        config.http.socket_send_buffer = Some(16 * 1024);
        config
    };
    let gateways = [
        stack.gateway_with(small_buffers()).await,
        stack.gateway_with(small_buffers()).await,
    ];
    let channel = "presence-crowd";
    let started = Instant::now();

    // 1,999 members over both gateways, each draining what it is sent (the
    // member_added of everyone after it) until told to leave.
    let leave = CancellationToken::new();
    let ports: Vec<u16> = gateways.iter().map(|g| g.port).collect();
    let members = futures::stream::iter(0..MEMBERS - 1)
        .map(|i| member_until(ports[i % 2], channel, format!("u{i:04}"), leave.clone()))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let joined = started.elapsed();

    // The one who stays reads through a small window and pauses for 2 s
    // while they leave (a tab in the background): most of 1,999 member
    // events (~180 KB) wait for it in the gateway's queue. That is neither
    // bytes beyond the queue's bound nor a write beyond the write timeout,
    // so it is not a slow consumer.
    let (mut stayer, socket_id) = connect_small_window(gateways[0].port).await;
    stayer
        .send(Message::text(presence_subscribe(
            &socket_id, channel, "stayer",
        )))
        .await
        .unwrap();
    let ok = next_event(&mut stayer, "pusher_internal:subscription_succeeded").await;
    assert_eq!(data_of(&ok)["presence"]["count"], MEMBERS);

    leave.cancel();
    for member in members {
        member.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut removed = HashSet::new();
    while removed.len() < MEMBERS - 1 {
        let frame = next_json(&mut stayer).await;
        match frame["event"].as_str() {
            Some("pusher_internal:member_removed") => {
                let user = data_of(&frame)["user_id"].as_str().unwrap().to_owned();
                assert!(removed.insert(user.clone()), "{user} removed twice");
            }
            Some("pusher_internal:member_added") => {}
            _ => panic!("after {} member_removed: unexpected {frame}", removed.len()),
        }
    }
    // Still connected, on the same socket, and nothing more (no duplicate,
    // no close) before the pong.
    stayer
        .send(Message::text(
            json!({"event": "pusher:ping", "data": {}}).to_string(),
        ))
        .await
        .unwrap();
    let pong = next_json(&mut stayer).await;
    assert_eq!(pong["event"], "pusher:pong", "{pong}");
    eprintln!(
        "joined {} members in {joined:?}, all done in {:?}",
        MEMBERS,
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stuck_socket_delays_no_termination_subscription_or_user_event_for_anyone_else() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.write_timeout = WRITE_TIMEOUT;
    let gw = stack.gateway_with(config).await;
    let api = stack.api(&gw);

    let mut others = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut s = PusherSocket::connect(gw.port, "app-key").await.unwrap();
        let frame = signin(&s.socket_id, user);
        s.send_text(frame).await.unwrap();
        s.next_event_of(&["pusher:signin_success"]).await.unwrap();
        others.push(s);
    }
    let [mut alice, mut bob, mut carol]: [PusherSocket; 3] = others.try_into().ok().unwrap();

    let (mut stuck, socket_id) = connect_small_window(gw.port).await;
    stuck
        .send(Message::text(signin(&socket_id, "stuck")))
        .await
        .unwrap();
    next_event(&mut stuck, "pusher:signin_success").await;
    // From here on it never reads, and keeps sending frames that draw
    // replies, so its socket is full and its queue fills up.
    let stuck_since = Instant::now();
    let spam = spam_until_dropped(stuck, frame_drawing_a_big_reply());
    // Its socket and queue fill within a few hundred milliseconds; a reader
    // that waited for queue space would be stuck from then on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The app server asks things of the stuck user too: more requests than
    // a connection's control queue holds.
    let stuck_requests: Vec<_> = (0..20)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let body = json!({ "channels": [format!("stuck-{i}")] });
                api.post("/users/stuck/subscriptions", &body).await.unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Everyone else is served promptly.
    let prompt = Duration::from_secs(1);
    let channels: Vec<String> = (0..20).map(|i| format!("bob-{i}")).collect();
    let asked = Instant::now();
    let (status, body) = api
        .post("/users/bob/subscriptions", &json!({ "channels": channels }))
        .await
        .unwrap();
    assert_eq!((status, &body), (200, &json!({"connections": 1})));
    let (status, body) = api
        .post("/users/alice/terminate_connections", &json!({}))
        .await
        .unwrap();
    assert_eq!((status, &body), (200, &json!({"connections": 1})));
    let (status, body) = api
        .trigger(&["#server-to-user-carol"], "hello", "{}")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        asked.elapsed() < prompt,
        "answered in {:?}",
        asked.elapsed()
    );

    let mut subscribed = HashSet::new();
    while subscribed.len() < channels.len() {
        let frame = bob
            .next_event_of(&["pusher_internal:subscription_succeeded"])
            .await
            .unwrap();
        subscribed.insert(frame["channel"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        alice.closed().await.unwrap(),
        Some(pusher::codes::UNAUTHORIZED)
    );
    let event = carol.next_event_of(&["hello"]).await.unwrap();
    assert_eq!(event["channel"], "#server-to-user-carol");
    assert!(
        asked.elapsed() < prompt,
        "acted on in {:?}",
        asked.elapsed()
    );

    // The stuck socket itself is dropped within the write timeout of
    // getting stuck (it takes well under a second to fill).
    tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(1), spam)
        .await
        .expect("the stuck socket is dropped")
        .unwrap();
    assert!(stuck_since.elapsed() <= WRITE_TIMEOUT + Duration::from_secs(1));
    for request in stuck_requests {
        let (status, _) = request.await.unwrap();
        assert_eq!(status, 200);
    }
}
