//! JetStream plumbing shared by the services: the `CHANNELS` stream's
//! configuration (created idempotently by whichever service starts first),
//! publishing an [`Envelope`] with its headers, and reading a live
//! (republished) message back.

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use herald_proto::envelope::{HEADER_KIND, HEADER_LAST_SEQUENCE, HEADER_SEQUENCE};
use herald_proto::{AppId, ChannelName, Envelope, Subjects};
use std::time::Duration;

pub mod replay;

/// Header grouping the per-channel copies of one multi-channel publish whose
/// publisher asked for de-duplicated delivery (Herald extension).
pub const HEADER_DEDUPE: &str = "Herald-Dedupe";

/// Header naming a socket that must not receive the event (Pusher's
/// `socket_id` exclusion on publish).
pub const HEADER_EXCLUDE_SOCKET: &str = "Herald-Exclude-Socket";

/// Errors talking to JetStream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Creating or updating the stream failed.
    #[error("cannot set up stream {name}: {source}")]
    Setup {
        /// Stream name.
        name: String,
        /// The JetStream error.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// Sending a publish failed before an ack could be awaited.
    #[error("publish failed: {0}")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
    /// Reading a stored event failed.
    #[error("reading the stream failed: {0}")]
    Read(String),
}

/// The last stored event of a channel and its stream sequence, if any (what
/// a Pusher cache channel sends a new subscriber). An event that cannot be
/// decoded counts as none.
pub async fn last_event(
    js: &jetstream::Context,
    subjects: &Subjects,
    app: &AppId,
    channel: &ChannelName,
) -> Result<Option<(u64, Envelope)>, StreamError> {
    let stream = js
        .get_stream_no_info(subjects.channels_stream())
        .await
        .map_err(|e| StreamError::Read(e.to_string()))?;
    match stream
        .get_last_raw_message_by_subject(&subjects.channel(app, channel))
        .await
    {
        Ok(msg) => Ok(Envelope::decode(&msg.payload)
            .ok()
            .map(|envelope| (msg.sequence, envelope))),
        Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(StreamError::Read(err.to_string())),
    }
}

/// Retention and de-duplication settings of the channel stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Drop events older than this (zero keeps them forever).
    pub max_age: Duration,
    /// Keep at most this many events per channel (-1 for no limit).
    pub max_msgs_per_channel: i64,
    /// Window within which a repeated `Nats-Msg-Id` is stored once.
    pub duplicate_window: Duration,
    /// Replicas (1 for a single server, 3 in a cluster).
    pub replicas: usize,
}

/// Command-line / environment flags for [`StreamSettings`].
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Keep channel events this many seconds (0 = forever).
    #[arg(long, env = "HERALD_STREAM_MAX_AGE_SECS", default_value_t = 30 * 24 * 3600)]
    pub stream_max_age_secs: u64,
    /// Keep at most this many events per channel (-1 = no limit).
    #[arg(long, env = "HERALD_STREAM_MAX_MSGS_PER_CHANNEL", default_value_t = -1, allow_hyphen_values = true)]
    pub stream_max_msgs_per_channel: i64,
    /// De-duplication window for retried publishes, in seconds.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub duplicate_window_secs: u64,
    /// Stream replicas (3 on a NATS cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
}

impl StreamArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> StreamSettings {
        StreamSettings {
            max_age: Duration::from_secs(self.stream_max_age_secs),
            max_msgs_per_channel: self.stream_max_msgs_per_channel,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            replicas: self.stream_replicas,
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_msgs_per_channel: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// The `CHANNELS` stream configuration described in DESIGN.md: one subject
/// per channel, republished to the live subjects, with a duplicate window.
pub fn channels_stream_config(subjects: &Subjects, settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects.channels_stream(),
        description: Some("Herald durable channel events".into()),
        subjects: vec![subjects.channels_filter()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: settings.max_age,
        max_messages_per_subject: settings.max_msgs_per_channel,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subjects.channels_filter(),
            destination: subjects.live_republish_destination(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Create the channel stream, or bring an existing one to this configuration.
pub async fn ensure_channels_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &StreamSettings,
) -> Result<(), StreamError> {
    let config = channels_stream_config(subjects, settings);
    let name = config.name.clone();
    js.create_or_update_stream(config)
        .await
        .map_err(|source| StreamError::Setup { name, source })?;
    Ok(())
}

/// Delivery options carried as headers next to the envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions<'a> {
    /// A socket that must not receive the event.
    pub exclude_socket: Option<&'a str>,
    /// De-duplication group of a multi-channel publish.
    pub dedupe_group: Option<&'a str>,
}

/// Publish `envelope` to its channel's subject and return the ack future, so
/// callers can pipeline many publishes before awaiting their acks.
///
/// `msg_id` is the de-duplication key (a client id, or the envelope id).
pub async fn publish_envelope(
    js: &jetstream::Context,
    subjects: &Subjects,
    app: &AppId,
    channel: &ChannelName,
    envelope: &Envelope,
    msg_id: &str,
    options: &PublishOptions<'_>,
) -> Result<jetstream::context::PublishAckFuture, StreamError> {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_KIND, envelope.kind.as_str());
    if let Some(socket) = options.exclude_socket {
        headers.insert(HEADER_EXCLUDE_SOCKET, socket);
    }
    if let Some(group) = options.dedupe_group {
        headers.insert(HEADER_DEDUPE, group);
    }
    let publish = PublishMessage::build()
        .payload(Bytes::from(envelope.encode()))
        .headers(headers)
        .message_id(msg_id);
    Ok(js
        .send_publish(subjects.channel(app, channel), publish)
        .await?)
}

/// Open the presence KV bucket (see `herald_proto::presence`), creating it
/// when missing. Gateways and the presence service both call this at start.
pub async fn ensure_presence_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<jetstream::kv::Store, BucketError> {
    let bucket = subjects.presence_bucket();
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(jetstream::kv::Config {
            bucket: bucket.clone(),
            description:
                "Herald presence: subscriptions, signed-in connections, gateway heartbeats".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another service created it in the meantime.
        Err(_) => js
            .get_key_value(&bucket)
            .await
            .map_err(|e| BucketError(bucket, e.to_string())),
    }
}

/// A KV bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[error("cannot open KV bucket {0}: {1}")]
pub struct BucketError(pub String, pub String);

/// Wait until the NATS server has processed everything this client sent so
/// far (in particular its SUBs).
///
/// `Client::flush` only writes the client's buffer to the socket; it does not
/// wait for the server. The server handles one connection's protocol in
/// order, so a message published to a fresh inbox of our own and received
/// back proves every earlier SUB is registered: events published by *other*
/// connections from then on reach us.
pub async fn server_barrier(nats: &async_nats::Client) -> Result<(), async_nats::Error> {
    use futures::StreamExt;
    let inbox = nats.new_inbox();
    let mut echo = nats.subscribe(inbox.clone()).await?;
    nats.publish(inbox, Bytes::new()).await?;
    nats.flush().await?;
    match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("subscription closed before the barrier returned".into()),
        Err(_) => Err("the NATS server did not echo the barrier in time".into()),
    }
}

/// A durable event as it arrives on a live (republished) subject.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// Stream sequence.
    pub seq: u64,
    /// Previous sequence on the same channel (0 for the first).
    pub last_seq: u64,
    /// Socket to skip, if the publisher asked for one.
    pub exclude_socket: Option<String>,
    /// De-duplication group, if the publisher asked for one.
    pub dedupe_group: Option<String>,
    /// The decoded envelope.
    pub envelope: Envelope,
}

/// Why a live message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// JetStream's sequence headers are missing: not a republished message.
    #[error("message lacks the {0} header")]
    MissingHeader(&'static str),
    /// The payload is not an envelope this build understands.
    #[error(transparent)]
    Envelope(#[from] herald_proto::Error),
}

fn header_u64(headers: Option<&HeaderMap>, name: &'static str) -> Result<u64, LiveError> {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
        .ok_or(LiveError::MissingHeader(name))
}

impl LiveEvent {
    /// Decode a message received on a live subject.
    pub fn from_message(msg: &async_nats::Message) -> Result<Self, LiveError> {
        let headers = msg.headers.as_ref();
        Ok(Self {
            seq: header_u64(headers, HEADER_SEQUENCE)?,
            last_seq: header_u64(headers, HEADER_LAST_SEQUENCE).unwrap_or(0),
            exclude_socket: headers
                .and_then(|h| h.get(HEADER_EXCLUDE_SOCKET))
                .map(|v| v.as_str().to_owned()),
            dedupe_group: headers
                .and_then(|h| h.get(HEADER_DEDUPE))
                .map(|v| v.as_str().to_owned()),
            envelope: Envelope::decode(&msg.payload)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use herald_proto::EventKind;
    use herald_testkit::NatsServer;

    #[tokio::test]
    async fn a_published_envelope_is_stored_once_and_republished_with_sequences() {
        let nats = NatsServer::start().unwrap();
        let client = nats.client().await.unwrap();
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new("t").unwrap();
        let settings = StreamSettings::default();
        ensure_channels_stream(&js, &subjects, &settings)
            .await
            .unwrap();
        // Idempotent: a second service starting up changes nothing.
        ensure_channels_stream(&js, &subjects, &settings)
            .await
            .unwrap();

        let app = AppId::parse("a").unwrap();
        let channel = ChannelName::parse("room.1").unwrap();
        let mut live = client
            .subscribe(subjects.live(&app, &channel))
            .await
            .unwrap();
        let env = Envelope::new(EventKind::Trigger, "a", "room.1", "e", "{}".into(), None);
        let first = publish_envelope(
            &js,
            &subjects,
            &app,
            &channel,
            &env,
            "k1",
            &PublishOptions {
                exclude_socket: Some("1.2"),
                dedupe_group: None,
            },
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let again = publish_envelope(
            &js,
            &subjects,
            &app,
            &channel,
            &env,
            "k1",
            &PublishOptions::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.sequence, first.sequence);

        let msg = live.next().await.unwrap();
        let event = LiveEvent::from_message(&msg).unwrap();
        assert_eq!(event.seq, first.sequence);
        assert_eq!(event.last_seq, 0);
        assert_eq!(event.exclude_socket.as_deref(), Some("1.2"));
        assert_eq!(event.envelope, env);

        let env2 = Envelope::new(EventKind::Trigger, "a", "room.1", "e", "{}".into(), None);
        let second = publish_envelope(
            &js,
            &subjects,
            &app,
            &channel,
            &env2,
            "k2",
            &PublishOptions::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let event = LiveEvent::from_message(&live.next().await.unwrap()).unwrap();
        assert_eq!(event.seq, second.sequence);
        assert_eq!(event.last_seq, first.sequence);
    }
}
