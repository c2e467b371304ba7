//! Reading a durable event back as it arrives on a live (republished)
//! subject, with JetStream's sequence headers and Herald's delivery options.

use crate::{StreamError, HEADER_DEDUPE, HEADER_EXCLUDE_SOCKET};
use async_nats::header::HeaderMap;
use herald_proto::envelope::{HEADER_LAST_SEQUENCE, HEADER_SEQUENCE};
use herald_proto::Envelope;

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

fn header_u64(headers: Option<&HeaderMap>, name: &'static str) -> Result<u64, StreamError> {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
        .ok_or(StreamError::MissingHeader(name))
}

impl LiveEvent {
    /// Decode a message received on a live subject.
    pub fn from_message(msg: &async_nats::Message) -> Result<Self, StreamError> {
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
