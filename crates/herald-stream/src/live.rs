//! Reading a durable event back as it arrives on a live (republished)
//! subject, with JetStream's sequence headers and Herald's delivery options.

use crate::publish::{DEDUPE, EXCLUDE_SOCKET};
use crate::StreamError;
use async_nats::header::{HeaderMap, HeaderName};
use herald_proto::envelope::{HEADER_LAST_SEQUENCE, HEADER_SEQUENCE};
use herald_proto::Envelope;

/// A durable event as it arrives on a live (republished) subject: what its
/// headers say, read at once, and its envelope, decoded only when asked for
/// ([`LiveEvent::envelope`]): a gateway with no subscriber to give an event
/// to (its publisher excluded, say) never decodes it.
#[derive(Debug, Clone, Copy)]
pub struct LiveEvent<'a> {
    /// Stream sequence.
    pub seq: u64,
    /// Previous sequence on the same channel (0 for the first).
    pub last_seq: u64,
    /// Socket to skip, if the publisher asked for one.
    pub exclude_socket: Option<&'a str>,
    /// De-duplication group, if the publisher asked for one.
    pub dedupe_group: Option<&'a str>,
    /// The encoded envelope.
    pub payload: &'a [u8],
}

/// `Nats-Sequence` and `Nats-Last-Sequence` as async-nats values (see
/// [`EXCLUDE_SOCKET`]).
const SEQUENCE: HeaderName = HeaderName::from_static(HEADER_SEQUENCE);
const LAST_SEQUENCE: HeaderName = HeaderName::from_static(HEADER_LAST_SEQUENCE);

fn header_u64(
    headers: Option<&HeaderMap>,
    name: HeaderName,
    label: &'static str,
) -> Result<u64, StreamError> {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
        .ok_or(StreamError::MissingHeader(label))
}

impl<'a> LiveEvent<'a> {
    /// Read the headers of a message received on a live subject.
    pub fn from_message(msg: &'a async_nats::Message) -> Result<Self, StreamError> {
        let headers = msg.headers.as_ref();
        Ok(Self {
            seq: header_u64(headers, SEQUENCE, HEADER_SEQUENCE)?,
            last_seq: header_u64(headers, LAST_SEQUENCE, HEADER_LAST_SEQUENCE).unwrap_or(0),
            exclude_socket: headers
                .and_then(|h| h.get(EXCLUDE_SOCKET))
                .map(|v| v.as_str()),
            dedupe_group: headers.and_then(|h| h.get(DEDUPE)).map(|v| v.as_str()),
            payload: &msg.payload,
        })
    }

    /// Decode the envelope (any stored version, upcast).
    pub fn envelope(&self) -> Result<Envelope, StreamError> {
        Ok(Envelope::decode(self.payload)?)
    }
}
