//! Reading a channel's stored events back, in order: what `resume_from`
//! replays to a reconnecting client and what the live path fetches to repair
//! a gap. Reads go through an ephemeral *ordered* consumer filtered to the
//! channel's one subject (never a durable consumer per socket), bounded by a
//! sequence known at the start so a busy channel cannot keep a read going.

use crate::{ReplayStep, StreamError};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use herald_proto::{AppId, ChannelName, Envelope, Subjects};
use std::time::Duration;

/// Longest wait for one stored event while reading a range: the events are
/// there already, so this only trips when the server is unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A stored channel event read back from the stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its stream sequence.
    pub seq: u64,
    /// The previous stored event of the same channel (0: none before it in
    /// this read; the caller knows the one it started after).
    pub prev_seq: u64,
    /// Socket to skip, if the publisher asked for one.
    pub exclude_socket: Option<String>,
    /// De-duplication group, if the publisher asked for one.
    pub dedupe_group: Option<String>,
    /// The decoded envelope.
    pub envelope: Envelope,
}

/// Where a channel stands in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPosition {
    /// Oldest stored event of the channel (0: none stored).
    pub first_seq: u64,
    /// Newest stored event of the channel (0: none stored).
    pub last_seq: u64,
    /// Oldest sequence still in the whole stream.
    pub stream_first_seq: u64,
    /// Newest sequence of the whole stream.
    pub stream_last_seq: u64,
}

/// Why a resume cannot be served from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefusal {
    /// Events after the position may have been removed by retention.
    Retention,
    /// More events than the replay bound would have to be replayed.
    TooFarBehind,
    /// The position is past the end of this stream (another stream, or one
    /// that was recreated).
    UnknownPosition,
}

impl ResumeRefusal {
    /// The `reason` of `herald:resume_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeRefusal::Retention => "retention",
            ResumeRefusal::TooFarBehind => "too_far_behind",
            ResumeRefusal::UnknownPosition => "unknown_position",
        }
    }
}

/// The channel's position in the stream.
pub async fn channel_position(
    js: &jetstream::Context,
    subjects: &Subjects,
    app: &AppId,
    channel: &ChannelName,
) -> Result<ChannelPosition, StreamError> {
    let subject = subjects.channel(app, channel);
    let failed = |step| {
        let subject = subject.clone();
        move |e: Box<dyn std::error::Error + Send + Sync>| StreamError::Replay {
            subject,
            step,
            source: e,
        }
    };
    // Opening the stream reads its info: the state comes with it.
    let name = subjects.channels_stream();
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|source| StreamError::OpenStream { name, source })?;
    let state = stream.cached_info().state.clone();
    let first_seq = match stream.get_first_raw_message_by_subject(&subject, 1).await {
        Ok(msg) => msg.sequence,
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(failed(ReplayStep::FirstEvent)(e.into())),
    };
    let last_seq = if first_seq == 0 {
        0
    } else {
        last_of_subject(&stream, subject).await?
    };
    Ok(ChannelPosition {
        first_seq,
        last_seq,
        stream_first_seq: state.first_sequence,
        stream_last_seq: state.last_sequence,
    })
}

/// The sequence of the channel's newest stored event (0: none).
pub async fn last_seq(
    js: &jetstream::Context,
    subjects: &Subjects,
    app: &AppId,
    channel: &ChannelName,
) -> Result<u64, StreamError> {
    let name = subjects.channels_stream();
    let stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|source| StreamError::OpenStream { name, source })?;
    last_of_subject(&stream, subjects.channel(app, channel)).await
}

/// The newest sequence stored on `subject` of an open stream (0: none).
async fn last_of_subject<I>(
    stream: &stream::Stream<I>,
    subject: String,
) -> Result<u64, StreamError> {
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(msg) => Ok(msg.sequence),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(source) => Err(StreamError::Read { subject, source }),
    }
}

/// Whether a client holding every event of the channel up to `after` can be
/// brought up to date from the stream, replaying at most `max_events`.
///
/// Retention removes a prefix of the stream (by age) and, with a per-channel
/// limit, a prefix of each channel; so what survives of a channel is a
/// suffix. Events after `after` are therefore all still stored when either
/// the client's position is itself still stored (`after >= first_seq`), or
/// nothing after it can have been removed: no per-channel limit and the
/// stream still starts at or before `after + 1`. Anything else might hide a
/// removed event, and is refused rather than replayed in part.
pub fn check_resume(
    position: &ChannelPosition,
    after: u64,
    pending: u64,
    max_events: u64,
    per_channel_limit: bool,
) -> Result<(), ResumeRefusal> {
    if after > position.stream_last_seq {
        return Err(ResumeRefusal::UnknownPosition);
    }
    let still_stored = position.first_seq != 0 && after >= position.first_seq;
    let nothing_removed_after = !per_channel_limit && after + 1 >= position.stream_first_seq;
    if !(still_stored || nothing_removed_after) {
        return Err(ResumeRefusal::Retention);
    }
    if pending > max_events {
        return Err(ResumeRefusal::TooFarBehind);
    }
    Ok(())
}

/// Reads a channel's stored events with sequences in `(after, until]`.
pub struct RangeReader {
    subject: String,
    messages: Option<consumer::pull::Ordered>,
    until: u64,
    prev: u64,
    /// Events in the range not yet read (from the server's pending count).
    pending: u64,
}

impl RangeReader {
    /// Open a read of `(after, until]`; reads nothing when `until <= after`.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        app: &AppId,
        channel: &ChannelName,
        after: u64,
        until: u64,
    ) -> Result<Self, StreamError> {
        let subject = subjects.channel(app, channel);
        if until <= after {
            return Ok(Self {
                subject,
                messages: None,
                until,
                prev: after,
                pending: 0,
            });
        }
        let name = subjects.channels_stream();
        let stream = js
            .get_stream_no_info(&name)
            .await
            .map_err(|source| StreamError::OpenStream { name, source })?;
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| StreamError::Replay {
            subject: subject.clone(),
            step: ReplayStep::CreateConsumer,
            source: e,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| failed(e.into()))?;
        let messages = consumer.messages().await.map_err(|e| failed(e.into()))?;
        Ok(Self {
            subject,
            messages: Some(messages),
            until,
            prev: after,
            pending: u64::MAX,
        })
    }

    /// Events after the last one read that the server still had to deliver
    /// (an upper bound of what is left of the range; `u64::MAX` before the
    /// first read).
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// The next event of the range, or `None` once past `until`. Events this
    /// build cannot decode are skipped (and counted), like on the live path.
    pub async fn next(&mut self) -> Result<Option<StoredEvent>, StreamError> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                return Ok(None);
            };
            if self.prev >= self.until || self.pending == 0 {
                self.messages = None;
                return Ok(None);
            }
            let subject = &self.subject;
            let read_failed = |e: Box<dyn std::error::Error + Send + Sync>| StreamError::Replay {
                subject: subject.clone(),
                step: ReplayStep::Read,
                source: e,
            };
            let stalled = || StreamError::ReplayStalled {
                subject: subject.clone(),
            };
            let msg = match tokio::time::timeout(READ_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => return Err(read_failed(e.into())),
                Ok(None) | Err(_) => return Err(stalled()),
            };
            let info = msg.info().map_err(read_failed)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > self.until {
                self.messages = None;
                return Ok(None);
            }
            self.pending = pending;
            let prev = std::mem::replace(&mut self.prev, seq);
            match Envelope::decode(&msg.payload) {
                Ok(envelope) => {
                    let header = |name: async_nats::HeaderName| {
                        msg.headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .map(|v| v.as_str().to_owned())
                    };
                    return Ok(Some(StoredEvent {
                        seq,
                        prev_seq: prev,
                        exclude_socket: header(crate::publish::EXCLUDE_SOCKET),
                        dedupe_group: header(crate::publish::DEDUPE),
                        envelope,
                    }));
                }
                Err(err) => {
                    metrics::counter!("herald_replay_undecodable_total").increment(1);
                    tracing::warn!(%err, seq, "skipping an undecodable stored event");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(first: u64, last: u64, stream_first: u64, stream_last: u64) -> ChannelPosition {
        ChannelPosition {
            first_seq: first,
            last_seq: last,
            stream_first_seq: stream_first,
            stream_last_seq: stream_last,
        }
    }

    #[test]
    fn a_position_still_stored_resumes() {
        assert_eq!(check_resume(&pos(5, 20, 5, 30), 5, 3, 100, true), Ok(()));
        assert_eq!(check_resume(&pos(5, 20, 1, 30), 12, 3, 100, false), Ok(()));
    }

    #[test]
    fn from_the_start_resumes_only_while_nothing_was_removed() {
        assert_eq!(check_resume(&pos(5, 20, 1, 30), 0, 3, 100, false), Ok(()));
        assert_eq!(
            check_resume(&pos(5, 20, 2, 30), 0, 3, 100, false),
            Err(ResumeRefusal::Retention)
        );
        assert_eq!(
            check_resume(&pos(5, 20, 1, 30), 0, 3, 100, true),
            Err(ResumeRefusal::Retention),
            "a per-channel limit may have removed this channel's first events"
        );
    }

    #[test]
    fn a_position_older_than_retention_is_refused() {
        assert_eq!(
            check_resume(&pos(10, 20, 10, 30), 4, 3, 100, false),
            Err(ResumeRefusal::Retention)
        );
        // A channel whose every event expired: nothing stored, stream moved on.
        assert_eq!(
            check_resume(&pos(0, 0, 50, 60), 4, 0, 100, false),
            Err(ResumeRefusal::Retention)
        );
    }

    #[test]
    fn too_many_events_or_a_position_past_the_end_is_refused() {
        assert_eq!(
            check_resume(&pos(1, 20, 1, 30), 2, 101, 100, false),
            Err(ResumeRefusal::TooFarBehind)
        );
        assert_eq!(
            check_resume(&pos(1, 20, 1, 30), 31, 0, 100, false),
            Err(ResumeRefusal::UnknownPosition)
        );
    }
}
