//! Reading the channel stream back: a channel's last stored event, and one
//! stored event by sequence.

use crate::StreamError;
use async_nats::jetstream::{self, stream};
use herald_proto::{AppId, ChannelName, Envelope, Subjects};

/// The last stored event of a channel and its stream sequence, if any (what
/// a Pusher cache channel sends a new subscriber). An event that cannot be
/// decoded counts as none.
pub async fn last_event(
    js: &jetstream::Context,
    subjects: &Subjects,
    app: &AppId,
    channel: &ChannelName,
) -> Result<Option<(u64, Envelope)>, StreamError> {
    let name = subjects.channels_stream();
    let stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|source| StreamError::OpenStream { name, source })?;
    let subject = subjects.channel(app, channel);
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(msg) => Ok(Envelope::decode(&msg.payload)
            .ok()
            .map(|envelope| (msg.sequence, envelope))),
        Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(source) => Err(StreamError::Read { subject, source }),
    }
}

/// The envelope stored at `seq` (e.g. the original of a duplicate publish,
/// whose sequence JetStream reports).
pub async fn stored_event(
    js: &jetstream::Context,
    subjects: &Subjects,
    seq: u64,
) -> Result<Envelope, StreamError> {
    let name = subjects.channels_stream();
    let stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|source| StreamError::OpenStream { name, source })?;
    let msg = stream
        .get_raw_message(seq)
        .await
        .map_err(|source| StreamError::ReadSeq { seq, source })?;
    Ok(Envelope::decode(&msg.payload)?)
}
