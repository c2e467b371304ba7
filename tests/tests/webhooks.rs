//! Webhooks end to end: gateways, the presence service and its dispatcher
//! against a local HTTP receiver that checks every request's signature.
//! Events are counted by id (delivery is at least once, so duplicates are
//! allowed but must carry the same id), never by wall-clock timings.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use herald_config::{AppConfig, AppRegistry, WebhookConfig};
use herald_presence::WebhookSettings;
use herald_proto::presence::PresenceKey;
use herald_proto::webhook::WebhookKind;
use herald_proto::{AppId, ChannelName};
use herald_tests::{dev_app, eventually, GatewayProcess, PusherSocket, Stack, SECRET};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Generous bound for anything to arrive (a timeout, not a timing claim).
const WAIT: Duration = Duration::from_secs(40);

/// What the receiver saw.
#[derive(Default)]
struct Receiver {
    /// Events of every request answered 200, in arrival order.
    events: Mutex<Vec<Value>>,
    /// Answer 503 (and record nothing) while set.
    failing: AtomicBool,
    /// Requests answered 503.
    failed: AtomicUsize,
    /// Requests whose key, signature, id header or custom header was wrong.
    bad: AtomicUsize,
}

impl Receiver {
    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Distinct ids of the events named `name` on `channel`.
    fn ids(&self, name: &str, channel: &str) -> HashSet<String> {
        self.events()
            .iter()
            .filter(|e| e["name"] == name && e["channel"] == channel)
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Wait until an event `name` on `channel` arrived.
    async fn wait_for(&self, name: &str, channel: &str) {
        eventually(WAIT, &format!("{name} on {channel}"), || async {
            (!self.ids(name, channel).is_empty()).then_some(())
        })
        .await;
    }

    /// Every event with the same id is the same event.
    fn assert_ids_are_stable(&self) {
        let mut by_id: HashMap<String, Value> = HashMap::new();
        for event in self.events() {
            let id = event["id"].as_str().unwrap().to_owned();
            if let Some(seen) = by_id.insert(id, event.clone()) {
                assert_eq!(seen, event, "two events share an id");
            }
        }
        assert_eq!(self.bad.load(Ordering::SeqCst), 0, "badly signed requests");
    }
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = hex::encode(mac.finalize().into_bytes());
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        r.bad.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    };
    let events = parsed["events"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    if header("X-Pusher-Key") != "app-key"
        || header("X-Pusher-Signature") != expected
        || header("X-Herald-Webhook-Ids") != ids.join(",")
        || header("X-Test") != "yes"
        || !parsed["time_ms"].is_i64()
        || ids.len() != events.len()
    {
        r.bad.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if r.failing.load(Ordering::SeqCst) {
        r.failed.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.events.lock().unwrap().extend(events);
    StatusCode::OK
}

/// A receiver on 127.0.0.1 and its URL.
async fn receiver() -> (String, Arc<Receiver>) {
    receiver_on("127.0.0.1").await
}

/// A receiver on a loopback address and its URL.
async fn receiver_on(host: &str) -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), state)
}

/// A receiver over TLS on 127.0.0.1, with the certificate of
/// `tests/fixtures/tls` (issued by its test CA for 127.0.0.1), and its URL.
async fn tls_receiver() -> (String, Arc<Receiver>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto, ServerConfig};
    let certs = CertificateDer::pem_slice_iter(include_bytes!("../fixtures/tls/localhost.crt"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key =
        PrivateKeyDer::from_pem_slice(include_bytes!("../fixtures/tls/localhost.key")).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let state = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}/hook"), state)
}

/// The development app with one webhook of every event type to `url`.
fn hooked_app(url: &str) -> AppConfig {
    let mut app = dev_app();
    app.limits.enable_client_messages = true;
    app.webhooks = vec![WebhookConfig {
        url: url.to_owned(),
        event_types: WebhookKind::ALL.to_vec(),
        filter: Default::default(),
        headers: BTreeMap::from([("X-Test".to_owned(), "yes".to_owned())]),
    }];
    app
}

/// A stack whose app sends its webhooks to a fresh receiver.
async fn hooked_stack() -> (Stack, Arc<Receiver>) {
    let (url, receiver) = receiver().await;
    (
        Stack::with_apps(AppRegistry::single(hooked_app(&url))),
        receiver,
    )
}

/// Presence settings with quick batches and retries.
fn presence_config(stack: &Stack) -> herald_presence::Config {
    let mut config = stack.presence_config();
    config.webhooks = WebhookSettings {
        batch_delay: Duration::from_millis(20),
        backoff: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        ..WebhookSettings::default()
    };
    config
}

async fn unsubscribe(socket: &mut PusherSocket, channel: &str) {
    socket
        .send_event("pusher:unsubscribe", json!({ "channel": channel }))
        .await
        .unwrap();
}

/// The presence KV key of `gateway` serving `channel` of the development app.
fn occupancy_key(gateway: &str, channel: &str) -> String {
    PresenceKey::Occupancy {
        app: AppId::parse("app-id").unwrap(),
        channel: ChannelName::parse(channel).unwrap(),
        gateway: gateway.to_owned(),
    }
    .render()
}

/// Wait until the presence bucket no longer holds `gateway`'s occupancy key
/// of `channel`.
async fn wait_occupancy_gone(stack: &Stack, gateway: &str, channel: &str) {
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let kv = js
        .get_key_value(stack.subjects.presence_bucket())
        .await
        .unwrap();
    let key = occupancy_key(gateway, channel);
    eventually(WAIT, "the occupancy key deleted", || async {
        kv.get(&key).await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_channel_split_across_gateways_is_vacated_only_when_its_last_subscriber_anywhere_leaves()
{
    let (stack, hooks) = hooked_stack().await;
    let _presence = stack.presence_with(presence_config(&stack)).await;
    let a_config = stack.gateway_config();
    let a_id = a_config.gateway_id.clone();
    let gw_a = stack.gateway_with(a_config).await;
    let gw_b = stack.gateway().await;
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let kv = js
        .get_key_value(stack.subjects.presence_bucket())
        .await
        .unwrap();

    let mut a1 = PusherSocket::connect(gw_a.port, "app-key").await.unwrap();
    let mut a2 = PusherSocket::connect(gw_a.port, "app-key").await.unwrap();
    let mut b1 = PusherSocket::connect(gw_b.port, "app-key").await.unwrap();
    a1.subscribe("split").await.unwrap();
    a2.subscribe("split").await.unwrap();
    hooks.wait_for("channel_occupied", "split").await;

    // One of gateway A's two subscribers leaves: A still serves the channel.
    // A fence subscribed after it: once its webhook is in, anything the
    // leave caused has been written and delivered.
    unsubscribe(&mut a1, "split").await;
    a1.subscribe("fence-a").await.unwrap();
    hooks.wait_for("channel_occupied", "fence-a").await;
    assert!(
        kv.get(occupancy_key(&a_id, "split"))
            .await
            .unwrap()
            .is_some(),
        "gateway A forgot a channel it still has a subscriber of"
    );
    assert!(hooks.ids("channel_vacated", "split").is_empty());

    // B subscribes (its success means its key is written), then A's last
    // subscriber leaves: A's key goes, B's stays.
    b1.subscribe("split").await.unwrap();
    unsubscribe(&mut a2, "split").await;
    wait_occupancy_gone(&stack, &a_id, "split").await;
    // A marker written after A's delete: once its webhook is in, any
    // vacated caused by that delete would have been delivered before it.
    b1.subscribe("marker").await.unwrap();
    hooks.wait_for("channel_occupied", "marker").await;
    assert!(
        hooks.ids("channel_vacated", "split").is_empty(),
        "vacated while a subscriber remains: {:?}",
        hooks.events()
    );

    unsubscribe(&mut b1, "split").await;
    hooks.wait_for("channel_vacated", "split").await;
    assert_eq!(hooks.ids("channel_occupied", "split").len(), 1);
    assert_eq!(hooks.ids("channel_vacated", "split").len(), 1);
    let names: Vec<Value> = hooks
        .events()
        .iter()
        .filter(|e| e["channel"] == "split")
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names.first().unwrap(), "channel_occupied");
    assert_eq!(names.last().unwrap(), "channel_vacated");
    hooks.assert_ids_are_stable();
}

#[tokio::test]
async fn a_killed_gateway_produces_member_removed_and_channel_vacated() {
    const TTL: Duration = Duration::from_secs(3);
    let (stack, hooks) = hooked_stack().await;
    let mut config = presence_config(&stack);
    config.heartbeat_ttl = TTL;
    config.sweep_interval = Duration::from_millis(500);
    let _presence = stack.presence_with(config).await;
    let doomed = GatewayProcess::start(&stack, 1, TTL.as_secs()).await;

    let mut victim = PusherSocket::connect(doomed.port, "app-key").await.unwrap();
    victim
        .join_presence(SECRET, "presence-doom", "goes", json!({}))
        .await
        .unwrap();
    victim.subscribe("public-doom").await.unwrap();
    hooks.wait_for("member_added", "presence-doom").await;
    hooks.wait_for("channel_occupied", "public-doom").await;

    doomed.kill();
    hooks.wait_for("member_removed", "presence-doom").await;
    hooks.wait_for("channel_vacated", "presence-doom").await;
    hooks.wait_for("channel_vacated", "public-doom").await;
    let removed: Vec<Value> = hooks
        .events()
        .into_iter()
        .filter(|e| e["name"] == "member_removed")
        .collect();
    assert_eq!(removed[0]["user_id"], "goes");
    eventually(WAIT, "user_offline", || async {
        hooks
            .events()
            .iter()
            .any(|e| e["name"] == "user_offline" && e["user_id"] == "goes")
            .then_some(())
    })
    .await;
    hooks.assert_ids_are_stable();
}

/// Subscribe to and leave `channels` on `gw`: an occupied and a vacated
/// event for each.
async fn churn(port: u16, channels: &[String]) {
    let mut socket = PusherSocket::connect(port, "app-key").await.unwrap();
    for channel in channels {
        socket.subscribe(channel).await.unwrap();
    }
    for channel in channels {
        unsubscribe(&mut socket, channel).await;
    }
    // A round trip, so every unsubscribe was read before the socket closes.
    socket.subscribe("fence").await.unwrap();
}

fn all_delivered(hooks: &Receiver, channels: &[String]) -> bool {
    channels.iter().all(|c| {
        hooks.ids("channel_occupied", c).len() == 1 && hooks.ids("channel_vacated", c).len() == 1
    })
}

#[tokio::test]
async fn a_receiver_failing_then_recovering_gets_every_event() {
    let (stack, hooks) = hooked_stack().await;
    let _presence = stack.presence_with(presence_config(&stack)).await;
    let gw = stack.gateway().await;
    hooks.failing.store(true, Ordering::SeqCst);

    let channels: Vec<String> = (0..8).map(|i| format!("down-{i}")).collect();
    churn(gw.port, &channels).await;
    eventually(WAIT, "several failed attempts", || async {
        (hooks.failed.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await;
    assert!(hooks.events().is_empty());

    hooks.failing.store(false, Ordering::SeqCst);
    eventually(WAIT, "every event after the receiver recovered", || async {
        all_delivered(&hooks, &channels).then_some(())
    })
    .await;
    hooks.assert_ids_are_stable();
}

#[tokio::test]
async fn a_dispatcher_killed_mid_delivery_loses_nothing_after_restart() {
    let (stack, hooks) = hooked_stack().await;
    let presence = stack.presence_with(presence_config(&stack)).await;
    let gw = stack.gateway().await;
    hooks.failing.store(true, Ordering::SeqCst);

    let before: Vec<String> = (0..6).map(|i| format!("before-{i}")).collect();
    churn(gw.port, &before).await;
    // The dispatcher holds these events and is retrying them.
    eventually(WAIT, "failed attempts", || async {
        (hooks.failed.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    presence.kill().await;
    hooks.failing.store(false, Ordering::SeqCst);

    let _presence = stack.presence_with(presence_config(&stack)).await;
    let after: Vec<String> = (0..3).map(|i| format!("after-{i}")).collect();
    churn(gw.port, &after).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(all_delivered(&hooks, &before) && all_delivered(&hooks, &after)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event arrived: {:?}",
            hooks.events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hooks.assert_ids_are_stable();
}

#[tokio::test]
async fn client_events_reach_the_webhook_with_socket_and_user() {
    let (stack, hooks) = hooked_stack().await;
    let _presence = stack.presence_with(presence_config(&stack)).await;
    let gw = stack.gateway().await;
    let mut a = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    let mut b = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    a.join_presence(SECRET, "presence-talk", "alice", json!({}))
        .await
        .unwrap();
    b.join_presence(SECRET, "presence-talk", "bob", json!({}))
        .await
        .unwrap();
    a.send_client_event("presence-talk", "client-wave", json!({"hi": 1}))
        .await
        .unwrap();
    hooks.wait_for("client_event", "presence-talk").await;
    let event = hooks
        .events()
        .into_iter()
        .find(|e| e["name"] == "client_event")
        .unwrap();
    assert_eq!(event["event"], "client-wave");
    assert_eq!(event["user_id"], "alice");
    assert_eq!(event["socket_id"], a.socket_id.as_str());
    let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"hi": 1}));
    hooks.assert_ids_are_stable();
}

#[tokio::test]
async fn with_a_vacate_delay_a_quick_rejoin_sends_neither_vacated_nor_a_second_occupied() {
    let (stack, hooks) = hooked_stack().await;
    let mut config = presence_config(&stack);
    // Far longer than a leave and a rejoin take, yet short for the test.
    config.webhooks.vacate_delay = Duration::from_secs(3);
    let _presence = stack.presence_with(config).await;
    let gw = stack.gateway().await;
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    socket
        .join_presence(SECRET, "presence-flaky", "u", json!({}))
        .await
        .unwrap();
    hooks.wait_for("member_added", "presence-flaky").await;

    // A reconnect: leave and come back at once.
    drop(socket);
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    socket
        .join_presence(SECRET, "presence-flaky", "u", json!({}))
        .await
        .unwrap();
    // Then leave for good: the end goes out once the delay is over.
    unsubscribe(&mut socket, "presence-flaky").await;
    hooks.wait_for("channel_vacated", "presence-flaky").await;
    hooks.wait_for("member_removed", "presence-flaky").await;
    for name in [
        "channel_occupied",
        "member_added",
        "member_removed",
        "channel_vacated",
    ] {
        assert_eq!(
            hooks.ids(name, "presence-flaky").len(),
            1,
            "{name}: {:?}",
            hooks.events()
        );
    }
    hooks.assert_ids_are_stable();
}

#[tokio::test]
async fn subscribing_to_a_channel_this_gateway_already_serves_writes_nothing() {
    let (stack, hooks) = hooked_stack().await;
    let _presence = stack.presence_with(presence_config(&stack)).await;
    let gw = stack.gateway().await;
    let writes = "herald_gateway_occupancy_writes_total";
    let before = herald_tests::metric(gw.port, writes).await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
        socket.subscribe("busy").await.unwrap();
        sockets.push(socket);
    }
    hooks.wait_for("channel_occupied", "busy").await;
    // 20 subscribers, one write (the first one's).
    assert_eq!(herald_tests::metric(gw.port, writes).await - before, 1.0);
    for socket in &mut sockets[1..] {
        unsubscribe(socket, "busy").await;
    }
    // A round trip on the remaining socket's gateway: the 19 leaves are read.
    sockets[0].subscribe("fence").await.unwrap();
    hooks.wait_for("channel_occupied", "fence").await;
    assert_eq!(herald_tests::metric(gw.port, writes).await - before, 2.0);
    assert!(hooks.ids("channel_vacated", "busy").is_empty());
}

#[tokio::test]
async fn a_cache_channel_with_nothing_cached_sends_cache_miss() {
    let (stack, hooks) = hooked_stack().await;
    let _presence = stack.presence_with(presence_config(&stack)).await;
    let gw = stack.gateway().await;
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    socket.subscribe("cache-empty").await.unwrap();
    hooks.wait_for("cache_miss", "cache-empty").await;
    hooks.wait_for("channel_occupied", "cache-empty").await;
    hooks.assert_ids_are_stable();
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed_and_the_events_are_dead_lettered() {
    // The real receiver, on another loopback host, and a redirect to it.
    let (elsewhere, other) = receiver_on("127.0.0.2").await;
    let redirect = Router::new().route(
        "/hook",
        post(move || {
            let location = elsewhere.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", location)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirect).await });
    let stack = Stack::with_apps(AppRegistry::single(hooked_app(&url)));
    let mut config = presence_config(&stack);
    config.webhooks.retry_for = Duration::from_secs(1);
    let presence = stack.presence_with(config).await;
    let gw = stack.gateway().await;
    churn(gw.port, &["moved".to_owned()]).await;

    // Both events (and the fence's occupied) end in the dead-letter stream.
    let js = async_nats::jetstream::new(stack.nats.client().await.unwrap());
    let mut dead = js
        .get_stream(stack.subjects.webhook_dead_stream())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.info().await.unwrap().state.messages < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = dead.get_raw_message(1).await.unwrap();
    let headers = first.headers;
    assert_eq!(headers.get("Herald-Webhook-Url").unwrap().as_str(), url);
    let subject = headers
        .get("Herald-Webhook-Subject")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(subject.starts_with(&format!("{}.hooks.app-id.", stack.subjects.prefix())));
    let event: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(event["name"], "channel_occupied");
    assert_eq!(event["channel"], "moved");
    assert!(
        herald_tests::metric(presence.port, "herald_presence_webhook_events_dead_total").await
            >= 2.0
    );
    // The other host never heard a thing.
    assert_eq!(
        other.events().len()
            + other.failed.load(Ordering::SeqCst)
            + other.bad.load(Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn an_app_without_occupancy_webhooks_records_no_occupancy() {
    let stack = Stack::start();
    let _presence = stack.presence().await;
    let gw = stack.gateway().await;
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    for i in 0..5 {
        socket.subscribe(&format!("quiet-{i}")).await.unwrap();
    }
    let writes = herald_tests::metric(gw.port, "herald_gateway_occupancy_writes_total").await;
    assert_eq!(writes, 0.0);
}

#[tokio::test]
async fn webhooks_reach_an_https_receiver_whose_authority_is_configured() {
    let (url, hooks) = tls_receiver().await;
    let stack = Stack::with_apps(AppRegistry::single(hooked_app(&url)));
    let mut config = presence_config(&stack);
    config.webhooks.ca_file =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls/ca.crt"));
    let _presence = stack.presence_with(config).await;
    let gw = stack.gateway().await;
    let mut socket = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    socket.subscribe("secure").await.unwrap();
    // Signed, with the app's key and the configured header: `receive`
    // counts any request that is not as bad.
    hooks.wait_for("channel_occupied", "secure").await;
    assert_eq!(hooks.bad.load(Ordering::SeqCst), 0);
}
