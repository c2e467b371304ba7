//! Harness for Herald's cross-service integration tests: one real
//! `nats-server` per test, a fresh database per test, and any number of
//! gateway and history instances started in-process on port 0.

use herald_config::AppRegistry;
use herald_proto::Subjects;
use herald_server::Service;
use herald_testkit::{NatsServer, TestDatabase};
use tokio_util::sync::CancellationToken;

pub use herald_testkit::{data_of, dev_app, eventually, Closed, PusherApi, PusherSocket, TcpProxy};

/// The development app's secret, which tests sign channel auth and sign-ins with.
pub const SECRET: &str = "app-secret";

/// The dependencies one test shares between its services.
pub struct Stack {
    /// The test's own NATS server.
    pub nats: NatsServer,
    /// A unique prefix (a second line of defence against collisions).
    pub subjects: Subjects,
    /// The apps every service is configured with.
    pub apps: AppRegistry,
}

/// A service running in-process; stopped when dropped.
pub struct Running {
    /// The port it listens on.
    pub port: u16,
    token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn spawn<S: Service + Send + 'static>(app: S, port: u16) -> Self {
        let token = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        Self {
            port,
            token,
            handle: Some(handle),
        }
    }

    /// Stop gracefully and wait until it has stopped.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("service task")
                .expect("service stopped cleanly");
        }
    }

    /// Stop abruptly, as a crash would: abort the task without cleanup, and
    /// wait until it is gone so it cannot overlap what the test does next.
    /// (Tasks a service spawned on its own, like per-connection tasks, are
    /// not aborted: crash a gateway with [`GatewayProcess`] instead.)
    pub async fn kill(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Running {
    /// `http://127.0.0.1:{port}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The status and body of `/readyz` (`None` while it does not answer).
    pub async fn readiness(&self) -> Option<(u16, String)> {
        let resp = reqwest::get(self.url("/readyz")).await.ok()?;
        Some((resp.status().as_u16(), resp.text().await.ok()?))
    }

    /// Wait until `/readyz` answers 200 (for a presence service: until it is
    /// the active instance with its state loaded).
    pub async fn wait_ready(&self) {
        wait_ready(self.port, std::time::Duration::from_secs(30)).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Stack {
    /// A NATS server and the development app.
    pub fn start() -> Self {
        Self::with_apps(AppRegistry::single(dev_app()))
    }

    /// A NATS server and the given apps.
    pub fn with_apps(apps: AppRegistry) -> Self {
        Self {
            nats: NatsServer::start().expect("nats-server starts"),
            subjects: Subjects::new(&herald_testkit::unique_prefix()).expect("valid prefix"),
            apps,
        }
    }

    /// The gateway configuration tests start from.
    pub fn gateway_config(&self) -> herald_gateway::Config {
        herald_gateway::Config::new(&self.nats.url(), self.subjects.clone(), self.apps.clone())
    }

    /// Start a gateway with the default test configuration.
    pub async fn gateway(&self) -> Running {
        self.gateway_with(self.gateway_config()).await
    }

    /// Start a gateway with a given configuration.
    pub async fn gateway_with(&self, config: herald_gateway::Config) -> Running {
        let app = herald_gateway::Application::build(config)
            .await
            .expect("gateway builds");
        let port = app.port();
        Running::spawn(app, port).await
    }

    /// The history configuration tests start from.
    pub fn history_config(&self, db: &TestDatabase) -> herald_history::Config {
        herald_history::Config::new(
            &self.nats.url(),
            self.subjects.clone(),
            db.url(),
            self.apps.clone(),
        )
    }

    /// Start a history service on `db`.
    pub async fn history(&self, db: &TestDatabase) -> Running {
        self.history_with(self.history_config(db)).await
    }

    /// Start a history service with a given configuration.
    pub async fn history_with(&self, config: herald_history::Config) -> Running {
        let app = herald_history::Application::build(config)
            .await
            .expect("history builds");
        let port = app.port();
        Running::spawn(app, port).await
    }

    /// Every event stored on a channel of the development app, in stream
    /// order: `(stream sequence, envelope)`, read straight from the stream.
    pub async fn stored_events(&self, channel: &str) -> Vec<(u64, herald_proto::Envelope)> {
        self.nats
            .stored_events(&self.subjects, "app-id", channel)
            .await
            .expect("the stored events")
    }

    /// The stream sequences of [`Self::stored_events`].
    pub async fn stored_seqs(&self, channel: &str) -> Vec<u64> {
        let events = self.stored_events(channel).await;
        events.into_iter().map(|(seq, _)| seq).collect()
    }

    /// A Pusher HTTP API client for the development app on `gateway`.
    pub fn api(&self, gateway: &Running) -> PusherApi {
        PusherApi::new(gateway.port, "app-id", "app-key", "app-secret")
    }
}

impl Stack {
    /// Start an auth service.
    pub async fn auth(&self) -> Running {
        let config =
            herald_auth::Config::new(&self.nats.url(), self.subjects.clone(), self.apps.clone());
        let app = herald_auth::Application::build(config)
            .await
            .expect("auth builds");
        let port = app.port();
        Running::spawn(app, port).await
    }

    /// The auth configuration tests start from, on `db`.
    pub fn auth_config(&self, db: &TestDatabase) -> herald_auth::Config {
        herald_auth::Config::new(&self.nats.url(), self.subjects.clone(), self.apps.clone())
            .with_database(db.url())
    }

    /// Start an auth service with a given configuration.
    pub async fn auth_with(&self, config: herald_auth::Config) -> Running {
        let app = herald_auth::Application::build(config)
            .await
            .expect("auth builds");
        let port = app.port();
        Running::spawn(app, port).await
    }

    /// The presence configuration tests start from.
    pub fn presence_config(&self) -> herald_presence::Config {
        let mut config = herald_presence::Config::new(
            &self.nats.url(),
            self.subjects.clone(),
            self.apps.clone(),
        );
        // A crashed instance's lease lasts this long: a restart waits for it.
        config.lease_ttl = std::time::Duration::from_secs(3);
        config
    }

    /// Start a presence service.
    pub async fn presence(&self) -> Running {
        self.presence_with(self.presence_config()).await
    }

    /// Start a presence service with a given configuration, and wait until
    /// it is the active instance.
    pub async fn presence_with(&self, config: herald_presence::Config) -> Running {
        let running = self.spawn_presence(config).await;
        // Member queries are answered once it is the active instance with
        // its state loaded, which `/readyz` reports.
        wait_ready(running.port, std::time::Duration::from_secs(30)).await;
        running
    }

    /// Start a presence service without waiting for it to be the active
    /// instance (a standby never is until the active one goes).
    pub async fn spawn_presence(&self, config: herald_presence::Config) -> Running {
        let app = herald_presence::Application::build(config)
            .await
            .expect("presence builds");
        let port = app.port();
        Running::spawn(app, port).await
    }
}

/// A gateway running as its own process (the built `herald-gateway`
/// binary), so that a test can kill it with SIGKILL like a crash would.
pub struct GatewayProcess {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
}

impl GatewayProcess {
    /// Start `target/<profile>/herald-gateway` against this stack.
    pub async fn start(stack: &Stack, heartbeat_secs: u64, ttl_secs: u64) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> -> target/<profile>/herald-gateway
        let bin = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("herald-gateway"))
            .expect("target directory");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --bins` first",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let apps = stack
            .apps
            .iter()
            .map(|a| serde_json::json!({"id": a.id.as_str(), "key": a.key, "secret": a.secret, "enable_client_messages": a.limits.enable_client_messages, "webhooks": a.webhooks}))
            .collect::<Vec<_>>();
        let child = std::process::Command::new(bin)
            .env("NATS_URL", stack.nats.url())
            .env("HERALD_PREFIX", stack.subjects.prefix())
            .env("HERALD_PORT", port.to_string())
            .env("HERALD_APPS", serde_json::Value::Array(apps).to_string())
            .env("HERALD_HEARTBEAT_SECS", heartbeat_secs.to_string())
            .env("HERALD_PRESENCE_TTL_SECS", ttl_secs.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("gateway process starts");
        eventually(
            std::time::Duration::from_secs(20),
            "gateway process listening",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        Self { child, port }
    }

    /// SIGKILL: no goodbye, no cleanup.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric in a service's Prometheus text (`name` may carry
/// labels, e.g. `x_total{event="connected"}`), summed over every series of
/// that metric (not of others whose names merely start with it); 0 if absent.
pub async fn metric(port: u16, name: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until the service on `port` answers `/readyz` with 200.
pub async fn wait_ready(port: u16, timeout: std::time::Duration) {
    let ready = format!("http://127.0.0.1:{port}/readyz");
    eventually(timeout, "readiness", || async {
        let status = reqwest::get(&ready).await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
}

/// The presence KV key of a gateway's heartbeat (named in herald-proto).
pub fn gateway_key(gateway: &str) -> String {
    herald_proto::presence::PresenceKey::Gateway {
        gateway: gateway.to_owned(),
    }
    .render()
}

/// Who calls a Herald REST endpoint in a test: the development app (HTTP
/// Basic with its key and secret) or a user (a session token as Bearer).
#[derive(Debug, Clone, Copy)]
pub enum As<'a> {
    /// The app's credentials.
    App,
    /// A user's session token.
    User(&'a str),
}

/// Call a REST endpoint as `who` with an optional JSON body; the status and
/// the body (JSON, or the text as a JSON string when it is not JSON).
pub async fn rest(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    who: As<'_>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, url);
    req = match who {
        As::App => req.basic_auth("app-key", Some(SECRET)),
        As::User(token) => req.bearer_auth(token),
    };
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("the request is answered");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// The CORS preflight a browser page on another origin sends before calling
/// `url` with `method` and the `Authorization` and `Content-Type` headers:
/// the answer's status and headers.
pub async fn cors_preflight(
    http: &reqwest::Client,
    url: String,
    method: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap) {
    let resp = http
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", "https://chat.example")
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("the preflight is answered");
    (resp.status(), resp.headers().clone())
}
