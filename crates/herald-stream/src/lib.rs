//! JetStream plumbing shared by the services, one concept a module:
//!
//! * [`settings`](StreamSettings) and [`channels`](channels_stream_config) —
//!   the `CHANNELS` stream's configuration, created idempotently by whichever
//!   service starts first, with a warning when services disagree about it;
//! * [`ensure_bucket`] — the one get-or-create of every KV bucket;
//! * [`TokenBindings`] — single-use session tokens bound to one socket;
//! * [`publish_envelope`] — publishing an [`Envelope`] with its headers;
//!   [`AckRouter`] does it with the acks routed by one subscription (the
//!   gateway's client publishes);
//! * [`LiveEvent`] — reading a live (republished) message back;
//! * [`last_event`] — a channel's last stored event;
//! * [`ensure_webhook_streams`] and [`publish_webhook`] — the webhook
//!   streams and storing one event;
//! * [`server_barrier`] — a round trip proving the server has our SUBs;
//! * [`StreamError`] — the crate's one error type.
//!
//! [`Envelope`]: herald_proto::Envelope

mod acks;
mod barrier;
mod bindings;
mod bucket;
mod channels;
mod error;
mod live;
mod publish;
mod read;
pub mod replay;
mod settings;
mod webhooks;

pub use acks::{AckRouter, AckWait, ACK_TIMEOUT, MAX_WAITING};
pub use barrier::server_barrier;
pub use bindings::{BindOutcome, TokenBindings};
pub use bucket::{ensure_bucket, ensure_presence_bucket, BucketSpec};
pub use channels::{channels_stream_config, config_drift, ensure_channels_stream, SettingDrift};
pub use error::{BarrierLoss, BarrierStep, ReplayStep, StreamError};
pub use live::LiveEvent;
pub use publish::{
    await_stored, publish_envelope, PublishOptions, Stored, HEADER_DEDUPE, HEADER_EXCLUDE_SOCKET,
    STORE_TIMEOUT,
};
pub use read::{last_event, stored_event};
pub use settings::{
    StreamArgs, StreamSettings, DEFAULT_DUPLICATE_WINDOW_SECS, DEFAULT_MAX_AGE_SECS,
    DEFAULT_MAX_MSGS_PER_CHANNEL, DEFAULT_REPLICAS,
};
pub use webhooks::{
    ensure_webhook_streams, publish_webhook, WEBHOOKS_DUPLICATE_WINDOW, WEBHOOKS_MAX_AGE,
};
