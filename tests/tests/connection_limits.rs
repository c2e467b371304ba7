//! The limits a public gateway needs: connections per client address
//! (believing `X-Forwarded-For` only from trusted proxies), allowed origins
//! per app, RFC 6455 close codes for frames the WebSocket layer refuses, and
//! the HTTP server's header read timeout.

use futures::SinkExt;
use herald_config::{AppConfig, AppRegistry};
use herald_proto::pusher::codes;
use herald_tests::{PusherSocket, Stack};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Open a WebSocket to the gateway with extra request headers; returns the
/// socket and its first frame.
async fn open_with(port: u16, headers: &[(&str, &str)]) -> (PusherRaw, Value) {
    let url = format!("ws://127.0.0.1:{port}/app/app-key?protocol=7");
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut raw = PusherRaw(ws);
    let first = raw.next_frame().await;
    (raw, first)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct PusherRaw(Ws);

impl PusherRaw {
    async fn next_frame(&mut self) -> Value {
        use futures::StreamExt;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("readable");
            if let Message::Text(text) = msg {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    /// The close code the gateway sends (skipping frames before it).
    async fn close_code(&mut self) -> Option<u16> {
        use futures::StreamExt;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("closed in time");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    }
}

/// Assert a Pusher refusal: `pusher:error` with `code` and a message
/// containing `says`, then the close with the same code.
async fn assert_refused(raw: &mut PusherRaw, first: &Value, code: u16, says: &str) {
    assert_eq!(first["event"], "pusher:error", "{first}");
    assert_eq!(first["data"]["code"], code, "{first}");
    let message = first["data"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
    assert_eq!(raw.close_code().await, Some(code));
}

fn established(first: &Value) -> bool {
    first["event"] == "pusher:connection_established"
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_refused_with_4100_until_one_closes() {
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.max_connections_per_ip = 2;
    let gw = stack.gateway_with(config).await;
    let (first, a) = open_with(gw.port, &[]).await;
    let (_second, b) = open_with(gw.port, &[]).await;
    assert!(established(&a) && established(&b), "{a} {b}");
    let (mut third, c) = open_with(gw.port, &[]).await;
    assert_refused(&mut third, &c, codes::OVER_CAPACITY, "Too many connections").await;

    drop(first);
    herald_tests::eventually(Duration::from_secs(5), "a free slot", || async {
        let (_s, frame) = open_with(gw.port, &[]).await;
        established(&frame).then_some(())
    })
    .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_limit() {
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.max_connections_per_ip = 1;
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let gw = stack.gateway_with(config).await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let (_a, first) = open_with(gw.port, &from("203.0.113.5")).await;
    assert!(established(&first), "{first}");
    let (mut again, second) = open_with(gw.port, &from("203.0.113.5")).await;
    assert_refused(
        &mut again,
        &second,
        codes::OVER_CAPACITY,
        "Too many connections",
    )
    .await;
    let (_b, other) = open_with(gw.port, &from("203.0.113.6")).await;
    assert!(
        established(&other),
        "another client behind the proxy: {other}"
    );
}

#[tokio::test]
async fn a_forwarded_address_from_an_untrusted_peer_is_ignored() {
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.max_connections_per_ip = 1;
    let gw = stack.gateway_with(config).await;
    let (_a, first) = open_with(gw.port, &[("X-Forwarded-For", "203.0.113.5")]).await;
    assert!(established(&first), "{first}");
    let (mut b, second) = open_with(gw.port, &[("X-Forwarded-For", "203.0.113.6")]).await;
    assert_refused(
        &mut b,
        &second,
        codes::OVER_CAPACITY,
        "Too many connections",
    )
    .await;
}

#[tokio::test]
async fn a_page_from_an_origin_the_app_does_not_allow_is_refused_with_4009() {
    let mut app = AppConfig::new("app-id", "app-key", "app-secret");
    app.allowed_origins = vec![
        "https://chat.example.com".into(),
        "https://*.example.org".into(),
    ];
    let stack = Stack::with_apps(AppRegistry::single(app));
    let gw = stack.gateway().await;
    for allowed in ["https://chat.example.com", "https://eu.example.org"] {
        let (_s, first) = open_with(gw.port, &[("Origin", allowed)]).await;
        assert!(established(&first), "{allowed}: {first}");
    }
    let (_s, first) = open_with(gw.port, &[]).await;
    assert!(established(&first), "no Origin (not a browser): {first}");

    let (mut evil, first) = open_with(gw.port, &[("Origin", "https://evil.example.net")]).await;
    assert_refused(&mut evil, &first, codes::UNAUTHORIZED, "is not allowed").await;
    let (mut lookalike, first) =
        open_with(gw.port, &[("Origin", "https://chat.example.com.evil.net")]).await;
    assert_refused(
        &mut lookalike,
        &first,
        codes::UNAUTHORIZED,
        "is not allowed",
    )
    .await;
}

#[tokio::test]
async fn an_app_without_allowed_origins_accepts_any_origin() {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let (_s, first) = open_with(gw.port, &[("Origin", "https://anywhere.example")]).await;
    assert!(established(&first), "{first}");
}

/// Send `frame` on a fresh connection and return the close code.
async fn close_code_after(frame: Message) -> Option<u16> {
    let stack = Stack::start();
    let gw = stack.gateway().await;
    let (mut raw, first) = open_with(gw.port, &[]).await;
    assert!(established(&first));
    let _ = raw.0.send(frame).await;
    let code = raw.close_code().await;
    // Only that socket: the gateway still serves others.
    let mut other = PusherSocket::connect(gw.port, "app-key").await.unwrap();
    other.subscribe("still-served").await.unwrap();
    code
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    assert_eq!(close_code_after(Message::Frame(frame)).await, Some(1007));
}

#[tokio::test]
async fn a_message_beyond_the_hard_size_limit_closes_with_1009() {
    assert_eq!(
        close_code_after(Message::text("x".repeat(200 * 1024))).await,
        Some(1009)
    );
}

#[tokio::test]
async fn a_frame_with_a_reserved_opcode_closes_with_1002() {
    let frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Reserved(3)), true);
    assert_eq!(close_code_after(Message::Frame(frame)).await, Some(1002));
}

#[tokio::test]
async fn the_gateway_closes_a_half_sent_upgrade_request_after_the_header_read_timeout() {
    let stack = Stack::start();
    let mut config = stack.gateway_config();
    config.http.header_read_timeout = Duration::from_millis(500);
    let gw = stack.gateway_with(config).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    tcp.write_all(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the half-sent request is still open");
    // The next request is served as usual.
    let (status, _) = stack.api(&gw).get("/channels", &[]).await.unwrap();
    assert_eq!(status, 200);
}
