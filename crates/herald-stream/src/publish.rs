//! Publishing an [`Envelope`] to its channel's subject, with the headers
//! that carry delivery-only options beside it.

use crate::StreamError;
use async_nats::header::{HeaderMap, HeaderName};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use herald_proto::{AppId, ChannelName, Envelope, Subjects};

/// Header grouping the per-channel copies of one multi-channel publish whose
/// publisher asked for de-duplicated delivery (Herald extension).
pub const HEADER_DEDUPE: &str = "Herald-Dedupe";

/// Header naming a socket that must not receive the event (Pusher's
/// `socket_id` exclusion on publish).
pub const HEADER_EXCLUDE_SOCKET: &str = "Herald-Exclude-Socket";

/// The header names above as async-nats values, made at compile time: a
/// header looked up or inserted by `&str` is validated, compared with the
/// standard names and copied each time, twice per event on the live and
/// replay paths.
pub(crate) const DEDUPE: HeaderName = HeaderName::from_static(HEADER_DEDUPE);
pub(crate) const EXCLUDE_SOCKET: HeaderName = HeaderName::from_static(HEADER_EXCLUDE_SOCKET);

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
    let publish = PublishMessage::build()
        .payload(Bytes::from(envelope.encode()))
        .headers(envelope_headers(msg_id, options));
    Ok(js
        .send_publish(subjects.channel(app, channel), publish)
        .await?)
}

/// The headers an envelope is published with: `msg_id` as `Nats-Msg-Id`
/// (the de-duplication key) and the [`PublishOptions`].
pub(crate) fn envelope_headers(msg_id: &str, options: &PublishOptions<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    if let Some(socket) = options.exclude_socket {
        headers.insert(EXCLUDE_SOCKET, socket);
    }
    if let Some(group) = options.dedupe_group {
        headers.insert(DEDUPE, group);
    }
    headers
}

/// How long a publisher waits for JetStream to acknowledge a store before
/// answering "retry" (the HTTP API, `herald:publish`, the history REST API).
pub const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What identifies a stored event: its id, stream sequence and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The envelope's id.
    pub id: String,
    /// Its stream sequence.
    pub seq: u64,
    /// When Herald accepted it (ms).
    pub ts: i64,
}

/// Wait for JetStream to store `envelope`, published with
/// [`publish_envelope`], and say what was stored: the envelope itself, or,
/// for a retry JetStream recognised by its `Nats-Msg-Id`, the original
/// (whose id and time are read back from the stream at the sequence the ack
/// names), so that every retry is answered like the first publish.
///
/// The wait is bounded by async-nats itself: every publish ack future times
/// out after the JetStream context's timeout, 5 s unless the context sets
/// another ([`STORE_TIMEOUT`]), and that is answered as
/// [`StreamError::AckTimeout`]. A timer of our own around it would be a
/// second timer per publish for the same bound.
pub async fn await_stored(
    js: &jetstream::Context,
    subjects: &Subjects,
    envelope: &Envelope,
    ack: jetstream::context::PublishAckFuture,
) -> Result<Stored, StreamError> {
    let ack = ack.await.map_err(|err| match err.kind() {
        jetstream::context::PublishErrorKind::TimedOut => StreamError::AckTimeout,
        _ => StreamError::Publish(err),
    })?;
    settle(
        js,
        subjects,
        envelope.id.clone(),
        envelope.at,
        ack.sequence,
        ack.duplicate,
    )
    .await
}

/// What an ack at `seq` of the envelope with `id` and time `at` means: that
/// envelope, or, for a duplicate, the original stored at `seq` (read back
/// for its id and time).
pub(crate) async fn settle(
    js: &jetstream::Context,
    subjects: &Subjects,
    id: String,
    at: i64,
    seq: u64,
    duplicate: bool,
) -> Result<Stored, StreamError> {
    if !duplicate {
        return Ok(Stored { id, seq, ts: at });
    }
    let original = crate::stored_event(js, subjects, seq).await?;
    Ok(Stored {
        id: original.id,
        seq,
        ts: original.at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ensure_channels_stream, LiveEvent, StreamSettings};
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
        assert_eq!(event.exclude_socket, Some("1.2"));
        assert_eq!(event.envelope().unwrap(), env);

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
        let msg = live.next().await.unwrap();
        let event = LiveEvent::from_message(&msg).unwrap();
        assert_eq!(event.seq, second.sequence);
        assert_eq!(event.last_seq, first.sequence);
    }
}
