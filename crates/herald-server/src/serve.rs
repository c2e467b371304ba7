//! Serving: binding a listener, serving a router until shutdown (with the
//! JSON error layer of [`crate::http`] and the [`ServeLimits`] that close
//! connections which never finish a request), the shutdown signal, and the
//! [`Service`] trait behind every service's thin `main`.

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A token cancelled on SIGINT or SIGTERM: the root of every service's
/// shutdown. Child tokens are handed to each loop, which `select!`s on them.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

/// Bind a TCP listener, returning it with its actual port (for port 0).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(tokio::net::TcpListener, u16)> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Limits of an HTTP server against clients that hold connections without
/// finishing a request.
///
/// Every connection's request head must arrive within
/// `header_read_timeout`, also between the requests of a kept-alive
/// connection (an idle kept-alive connection is closed after it); at most
/// `max_pending_connections` connections may be waiting for their first
/// request head at once (more are closed as they are accepted); and a
/// WebSocket upgrade's `101 Switching Protocols` must be written to the
/// client within `handshake_timeout`. `socket_send_buffer`, when set,
/// bounds the kernel's send buffer of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// Most connections still waiting for their first request head.
    pub max_pending_connections: usize,
    /// How long the switch to WebSocket may take once it was answered.
    pub handshake_timeout: Duration,
    /// `SO_SNDBUF` of every accepted socket; `None` leaves it to the
    /// kernel, which grows it up to `net.ipv4.tcp_wmem`'s maximum (4 MiB
    /// on Linux by default): that much of a client that stops reading then
    /// sits in kernel memory, besides what the server queues for it.
    pub socket_send_buffer: Option<usize>,
}

/// Default seconds for a request head ([`ServeLimits::header_read_timeout`]).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default cap on connections without a request yet.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1024;
/// Default seconds for the WebSocket switch.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            socket_send_buffer: None,
        }
    }
}

/// Serve `router` with the default [`ServeLimits`] until `shutdown` is
/// cancelled; see [`serve_with`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(listener, router, shutdown, ServeLimits::default()).await
}

/// Serve `router` over HTTP/1.1 (with upgrades, for WebSockets) until
/// `shutdown` is cancelled, then finish the requests in flight. Unknown
/// routes and every rejection axum makes by itself answer the JSON error of
/// [`crate::http`]. Handlers can extract the peer's address as
/// `axum::extract::ConnectInfo<SocketAddr>`.
///
/// hyper serves the connections directly rather than through `axum::serve`,
/// which sets no timer, so hyper's header read timeout never fired: a probe
/// held 1,000 half-sent requests open for minutes on every service.
///
/// Sockets get `TCP_NODELAY`: WebSocket frames and API answers are small,
/// and Nagle's algorithm would hold them back waiting for the peer's delayed
/// ACK (tens of milliseconds per frame).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ServeLimits,
) -> anyhow::Result<()> {
    let router = crate::http::json_errors(router);
    let pending = Arc::new(Semaphore::new(limits.max_pending_connections.max(1)));
    // Every connection task holds a receiver; the sender's `closed` resolves
    // when the last one is gone.
    let (tasks, task) = watch::channel(());
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            metrics::counter!("herald_http_connections_refused_total", "cause" => "pending")
                .increment(1);
            tracing::debug!(%remote, "too many connections without a request: closed");
            continue;
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        if let Some(bytes) = limits.socket_send_buffer {
            if let Err(err) = socket2::SockRef::from(&tcp).set_send_buffer_size(bytes) {
                tracing::debug!(%err, "cannot set SO_SNDBUF");
            }
        }
        let conn = ConnTask {
            router: router.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
            _task: task.clone(),
        };
        tokio::spawn(conn.run(tcp, remote, permit));
    }
    drop(task);
    tasks.closed().await;
    Ok(())
}

/// Errors accepting a connection: those about one connection are skipped;
/// others (out of file descriptors) are logged and waited out, as hyper's
/// own server did.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%err, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One accepted connection.
struct ConnTask {
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
    _task: watch::Receiver<()>,
}

impl ConnTask {
    async fn run(
        self,
        tcp: tokio::net::TcpStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        // Released by the first request head: until then this connection
        // counts against `max_pending_connections`.
        let permit = Arc::new(Mutex::new(Some(permit)));
        let switching = Arc::new(Notify::new());
        let service = {
            let router = self.router.clone();
            let switching = switching.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                permit.lock().expect("permit lock").take();
                req.extensions_mut().insert(ConnectInfo(remote));
                let router = router.clone();
                let switching = switching.clone();
                async move {
                    let response = router
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|never| match never {});
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        switching.notify_one();
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        tokio::pin!(conn);
        // Once a 101 was answered, hyper hands the socket to the WebSocket
        // as soon as the answer is written; a client that does not take
        // those few bytes within the handshake timeout is dropped.
        let handshake = async {
            switching.notified().await;
            tokio::time::sleep(self.limits.handshake_timeout).await;
        };
        tokio::pin!(handshake);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        if err.is_timeout() {
                            metrics::counter!("herald_http_header_timeouts_total").increment(1);
                        }
                        tracing::debug!(%err, %remote, "connection ended");
                    }
                    return;
                }
                () = &mut handshake => {
                    metrics::counter!("herald_http_handshake_timeouts_total").increment(1);
                    tracing::debug!(%remote, "WebSocket handshake not completed in time");
                    return;
                }
                () = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What a service's `Application` offers its `main`.
pub trait Service {
    /// Cancelling this token stops the service.
    fn shutdown_token(&self) -> CancellationToken;
    /// Serve until stopped.
    fn run_until_stopped(self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// The whole of a service's `main`: build it, stop it on SIGINT/SIGTERM.
pub async fn run_main<S: Service>(
    build: impl std::future::Future<Output = anyhow::Result<S>>,
) -> anyhow::Result<()> {
    let app = build.await?;
    let signals = shutdown_on_signals();
    let token = app.shutdown_token();
    tokio::spawn(async move {
        signals.cancelled().await;
        token.cancel();
    });
    app.run_until_stopped().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Serve a one-route router with `limits`; returns its port and the
    /// token that stops it.
    async fn start(limits: ServeLimits) -> (u16, CancellationToken) {
        let (listener, port) = bind("127.0.0.1", 0).await.unwrap();
        let router = Router::new().route("/ok", get(|| async { "ok" }));
        let token = CancellationToken::new();
        tokio::spawn(serve_with(listener, router, token.clone(), limits));
        (port, token)
    }

    /// Read until the server closes the connection; returns what it sent.
    async fn read_to_close(tcp: &mut TcpStream, within: Duration) -> Option<String> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(within, tcp.read_to_end(&mut got)).await;
        match read {
            Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
            Err(_) => None,
        }
    }

    fn limits(header_read_timeout: Duration, max_pending_connections: usize) -> ServeLimits {
        ServeLimits {
            header_read_timeout,
            max_pending_connections,
            ..ServeLimits::default()
        }
    }

    #[tokio::test]
    async fn a_half_sent_request_is_closed_after_the_header_read_timeout() {
        let (port, _stop) = start(limits(Duration::from_millis(300), 16)).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let answer = read_to_close(&mut tcp, Duration::from_secs(5))
            .await
            .expect("the server closes the half-sent request");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "not before the timeout: {:?}",
            started.elapsed()
        );
        // hyper answers 408 to a request whose head timed out, or just closes.
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
        let (port, _stop) = start(limits(Duration::from_millis(300), 16)).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(read_to_close(&mut tcp, Duration::from_secs(5))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn a_kept_alive_connection_that_goes_idle_is_closed_after_the_header_read_timeout() {
        let (port, _stop) = start(limits(Duration::from_millis(300), 16)).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut tcp, Duration::from_secs(5))
            .await
            .expect("closed once idle");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_pending_cap_are_closed_at_once_and_served_again_after() {
        let (port, _stop) = start(limits(Duration::from_secs(30), 2)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            tcp.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
            held.push(tcp);
        }
        // Accepting is asynchronous: give the server a moment to count both.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let answer = read_to_close(&mut third, Duration::from_secs(2))
            .await
            .expect("the third pending connection is closed at once");
        assert!(answer.is_empty(), "{answer}");

        // A pending connection that finishes its request frees its place.
        held[0].write_all(b"Host: x\r\n\r\n").await.unwrap();
        let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        fresh
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut fresh, Duration::from_secs(5))
            .await
            .expect("served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
