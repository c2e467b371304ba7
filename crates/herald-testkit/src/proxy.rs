//! A TCP proxy between one client and a server (say, a service and NATS)
//! that a test can pause (the connection stays up, nothing gets through) or
//! cut (the connections close and new ones are refused).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards every connection made to [`TcpProxy::port`] to a target port on
/// 127.0.0.1, in both directions. Dropping it drops every connection and
/// whatever it held.
pub struct TcpProxy {
    port: u16,
    paused: Arc<watch::Sender<bool>>,
    /// Bumped by each cut: every connection carried so far closes.
    cuts: Arc<watch::Sender<u64>>,
    open: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listen on a free loopback port and forward to `target_port`.
    pub async fn start(target_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let paused = Arc::new(watch::Sender::new(false));
        let cuts = Arc::new(watch::Sender::new(0u64));
        let open = Arc::new(AtomicBool::new(true));
        let accept = tokio::spawn({
            let (paused, cuts, open) = (paused.clone(), cuts.clone(), open.clone());
            async move {
                // Dropping the set (when this task is aborted) aborts every
                // connection's pipes.
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                        let (paused, cut) = (paused.subscribe(), cuts.subscribe());
                        connections.spawn(pipe(from, to, paused, cut));
                    }
                }
            }
        });
        Ok(Self {
            port,
            paused,
            cuts,
            open,
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

    /// Close every connection it carries, and refuse new ones until
    /// [`Self::reopen`]: the client sees its server go away while the
    /// server (and its other clients) carry on.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Accept connections again (after [`Self::cut`]).
    pub fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copy one direction until either side ends or the proxy is cut (then the
/// halves are dropped, closing both sockets at once).
async fn pipe(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    paused: watch::Receiver<bool>,
    mut cut: watch::Receiver<u64>,
) {
    tokio::select! {
        ended = copy(from, &mut to, paused) => {
            if ended {
                let _ = to.shutdown().await;
            }
        }
        _ = cut.changed() => {}
    }
}

/// Copy, holding each chunk while paused; true when the reader ended.
async fn copy(
    mut from: OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => n,
        };
        if paused.wait_for(|paused| !*paused).await.is_err() {
            return false;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}
