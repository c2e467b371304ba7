//! Serving: binding a listener, serving a router until shutdown (with the
//! JSON error layer of [`crate::http`]), the shutdown signal, and the
//! [`Service`] trait behind every service's thin `main`.

use axum::Router;
use tokio_util::sync::CancellationToken;

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

/// Serve `router` until `shutdown` is cancelled. Unknown routes and every
/// rejection axum makes by itself answer the JSON error of [`crate::http`].
///
/// Sockets get `TCP_NODELAY`: WebSocket frames and API answers are small,
/// and Nagle's algorithm would hold them back waiting for the peer's delayed
/// ACK (tens of milliseconds per frame).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, crate::http::json_errors(router))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
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
