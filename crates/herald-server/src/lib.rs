//! The runtime every Herald service shares: how a service binds, serves and
//! stops, connects to NATS, reports its health and metrics, answers errors,
//! and authorizes an app's REST calls.
//!
//! * [`serve`] — bind, serve with graceful shutdown, the [`Service`] trait
//!   and [`run_main`], the whole of each service's `main`.
//! * [`nats`] — the NATS connection with retry and event logging.
//! * [`ops`] — `/healthz`, `/readyz`, `/metrics`.
//! * [`telemetry`] — logs and the Prometheus recorder.
//! * [`http`] — the one JSON error answer, for handlers and for every
//!   rejection axum makes by itself.
//! * [`auth`] — the [`auth::AuthorizedApp`] extractor of the REST APIs.
//! * [`token`] — session and channel token verification against the
//!   auth service's JWKS.

pub mod auth;
pub mod http;
pub mod nats;
pub mod ops;
pub mod serve;
pub mod telemetry;
pub mod token;

pub use nats::{connect_nats, connect_nats_watching, redact_url};
pub use ops::{nats_ready, ops_router, ops_router_explained, ReadyCheck};
pub use serve::{bind, run_main, serve, serve_with, shutdown_on_signals, ServeLimits, Service};
pub use telemetry::{init_tracing, metrics_handle};
