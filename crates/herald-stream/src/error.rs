//! The crate's one error type: each variant names what failed and carries
//! the async-nats error as its source, so callers match on the variant
//! instead of on message text.

use async_nats::jetstream::{context, stream};

/// Errors talking to JetStream, or reading what it delivered.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Creating or updating the stream failed.
    #[error("cannot set up stream {name}: {source}")]
    Setup {
        /// Stream name.
        name: String,
        /// The JetStream error.
        #[source]
        source: context::CreateStreamError,
    },
    /// Sending a publish failed before an ack could be awaited.
    #[error("publish failed: {0}")]
    Publish(#[from] context::PublishError),
    /// A publish through [`crate::AckRouter`] could not be sent, or its
    /// answer was a refusal or unreadable (what, in words).
    #[error("publish failed: {0}")]
    AckRoute(String),
    /// JetStream did not acknowledge a publish in time.
    #[error("the stream did not acknowledge the publish in time")]
    AckTimeout,
    /// The stream to read from could not be opened.
    #[error("cannot open stream {name}: {source}")]
    OpenStream {
        /// Stream name.
        name: String,
        /// The JetStream error.
        #[source]
        source: context::GetStreamError,
    },
    /// Reading a stored message failed (other than there being none).
    #[error("reading {subject} from the stream failed: {source}")]
    Read {
        /// The subject whose message was asked for.
        subject: String,
        /// The JetStream error.
        #[source]
        source: stream::LastRawMessageError,
    },
    /// Reading a range of a channel's stored events (a resume, a gap
    /// repair) failed at `step`.
    #[error("replaying {subject}: cannot {step}: {source}")]
    Replay {
        /// The channel's subject.
        subject: String,
        /// What was being done.
        step: ReplayStep,
        /// The NATS client's error.
        #[source]
        source: async_nats::Error,
    },
    /// A stored event of a range did not arrive in time (the server is
    /// unreachable), or the read ended before the range did.
    #[error("replaying {subject}: the stream stopped answering")]
    ReplayStalled {
        /// The channel's subject.
        subject: String,
    },
    /// Reading the stored message at a sequence failed.
    #[error("reading sequence {seq} from the stream failed: {source}")]
    ReadSeq {
        /// The sequence asked for.
        seq: u64,
        /// The JetStream error.
        #[source]
        source: stream::RawMessageError,
    },
    /// A KV bucket was neither there nor could be created.
    #[error("cannot open KV bucket {bucket}: {source}")]
    Bucket {
        /// Bucket name.
        bucket: String,
        /// Why creating it failed (opening it had failed before).
        #[source]
        source: context::CreateKeyValueError,
    },
    /// Binding a session token to a socket failed (NATS unreachable).
    #[error("cannot record the token's binding: {source}")]
    Binding {
        /// The KV error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A live message lacks JetStream's sequence headers: it was not
    /// republished by the stream.
    #[error("message lacks the {0} header")]
    MissingHeader(&'static str),
    /// A payload is not an envelope this build understands.
    #[error(transparent)]
    Envelope(#[from] herald_proto::Error),
    /// A step of the server barrier's round trip failed.
    #[error("server barrier: cannot {step}: {source}")]
    Barrier {
        /// The step that failed.
        step: BarrierStep,
        /// The NATS client's error.
        #[source]
        source: async_nats::Error,
    },
    /// The server barrier's echo did not come back.
    #[error("server barrier: {0}")]
    BarrierLost(BarrierLoss),
}

/// The steps of reading a range of stored events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStep {
    /// Finding the channel's first stored event.
    FirstEvent,
    /// Creating the ephemeral ordered consumer.
    CreateConsumer,
    /// Reading the consumer's messages.
    Read,
}

impl std::fmt::Display for ReplayStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplayStep::FirstEvent => "find the channel's first event",
            ReplayStep::CreateConsumer => "create an ordered consumer",
            ReplayStep::Read => "read the next event",
        })
    }
}

/// The steps of [`crate::server_barrier`]'s round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierStep {
    /// Subscribing to the echo inbox.
    Subscribe,
    /// Publishing the echo.
    Publish,
    /// Flushing the client's buffer.
    Flush,
}

impl std::fmt::Display for BarrierStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BarrierStep::Subscribe => "subscribe to the echo inbox",
            BarrierStep::Publish => "publish the echo",
            BarrierStep::Flush => "flush",
        })
    }
}

/// How the server barrier's echo went missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierLoss {
    /// The echo subscription ended first.
    Closed,
    /// The server did not echo within the barrier's time limit.
    TimedOut,
}

impl std::fmt::Display for BarrierLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BarrierLoss::Closed => "subscription closed before the barrier returned",
            BarrierLoss::TimedOut => "the NATS server did not echo the barrier in time",
        })
    }
}
