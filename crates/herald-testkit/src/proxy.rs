//! A TCP proxy that can stop forwarding, to cut one client off from a server
//! (say, a service from NATS) without closing its connection.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards every connection made to [`TcpProxy::port`] to a target port on
/// 127.0.0.1, in both directions, until paused. Dropping it drops every
/// connection and whatever it held.
pub struct TcpProxy {
    port: u16,
    paused: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listen on a free loopback port and forward to `target_port`.
    pub async fn start(target_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let paused = Arc::new(watch::Sender::new(false));
        let accept = tokio::spawn({
            let paused = paused.clone();
            async move {
                // Dropping the set (when this task is aborted) aborts every
                // connection's pipes.
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    connections.spawn(pipe(client_read, server_write, paused.subscribe()));
                    connections.spawn(pipe(server_read, client_write, paused.subscribe()));
                }
            }
        });
        Ok(Self {
            port,
            paused,
            accept,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop forwarding, both ways: the connections stay open, and what is
    /// sent from now on is held (and lost if the proxy is dropped).
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forward again, starting with what was held.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut paused: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if paused.wait_for(|paused| !*paused).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
