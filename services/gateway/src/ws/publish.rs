//! Acknowledged, idempotent publishing from clients (`herald:publish`) and
//! receipts (`herald:delivered`, `herald:read`).
//!
//! A client publishes on a private or presence channel it is subscribed to;
//! the event is stored in the channel stream with a `Nats-Msg-Id` derived
//! from the app, channel, author and the client's `client_id`, then the
//! client gets `herald:ack` with the stored `id` and `seq`. A retry with the
//! same `client_id` inside the stream's duplicate window is stored once and
//! acknowledged with the original `id` and `seq`. Everyone else subscribed
//! gets the event like any stored event (the author's socket is excluded:
//! the ack is its echo); a receipt reaches every subscriber, its sender
//! included (nothing else tells the sender its seq). Every refusal is a
//! `herald:nack` with one of the codes of [`herald_proto::frame::nack`].
//!
//! Publishes of one connection are pipelined: each is validated and sent to
//! JetStream in the order it arrived (so a channel stores them in that
//! order), and its acknowledgement joins the connection's [`InFlight`]
//! queue instead of being awaited before the next frame is read. The reader
//! answers them in order as JetStream confirms them. At most
//! [`MAX_IN_FLIGHT`] wait at once; then the reader stops reading the socket
//! until one is answered (TCP pushes back on the client). A refusal found
//! before storing (bad input, rate, permission) is answered at once, so it
//! may overtake the acks of earlier publishes; clients match answers by
//! `client_id`.

use super::connection::Connection;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use governor::{Quota, RateLimiter};
use herald_proto::envelope::{publish_msg_id, receipt_msg_id, to_data, Receipt, MAX_CLIENT_ID_LEN};
use herald_proto::frame::nack;
use herald_proto::pusher::{ClientFrame, PublishFields};
use herald_proto::{ChannelKind, ChannelName, Envelope, EventKind, EventName, ServerFrame};
use herald_stream::{PublishOptions, Stored};
use serde_json::{Map, Value};
use std::num::NonZeroU32;

/// Most publishes and receipts of one connection awaiting JetStream's
/// acknowledgement: enough to fill a JetStream round trip at full speed,
/// few enough that a connection cannot hold much of the server's memory.
pub(crate) const MAX_IN_FLIGHT: usize = 256;

/// The stores of one connection awaiting JetStream's answer, in the order
/// they were sent.
pub(super) type InFlight = FuturesOrdered<BoxFuture<'static, Settled>>;

/// A store JetStream answered (or that failed), to be told to the client.
pub(super) struct Settled {
    what: Pending,
    result: Result<Stored, Nack>,
}

/// What was being stored.
enum Pending {
    /// A `herald:publish`, answered with an ack or a nack.
    Publish {
        client_id: String,
        channel: ChannelName,
    },
    /// A receipt: nacked on failure; a later one that waited for it is
    /// sent next.
    Receipt {
        channel: ChannelName,
        kind: EventKind,
        previous: u64,
    },
}

/// Receipts of one kind on one channel, from this connection. At most one
/// is in flight; those arriving meanwhile collapse into `waiting`, the
/// highest of them, sent when the one in flight is answered. A client that
/// marks every message read as it scrolls thus stores a handful of
/// receipts, not one per message, and the last one always goes out.
#[derive(Debug, Default)]
pub(super) struct ReceiptState {
    /// The highest seq stored or in flight.
    sent: u64,
    in_flight: bool,
    waiting: Option<u64>,
}

/// A refusal: a `herald:nack` code and message.
type Nack = (&'static str, String);

fn nack_of(code: &'static str, message: impl Into<String>) -> Nack {
    (code, message.into())
}

impl Connection {
    /// `herald:publish {channel, event, data, client_id}` whose fields were
    /// read without a JSON tree (see
    /// [`herald_proto::pusher::RawClientFrame::publish_fields`]).
    pub(super) async fn on_publish_fields(
        &mut self,
        fields: PublishFields<'_>,
        in_flight: &mut InFlight,
    ) {
        self.submit(fields, in_flight).await
    }

    /// `herald:publish` read as a [`ClientFrame`]: `data` sent as a
    /// string, or with fields of the wrong type (refused by `publish`).
    pub(super) async fn on_publish(&mut self, frame: &ClientFrame, in_flight: &mut InFlight) {
        let fields = frame.data_object().unwrap_or_default();
        self.submit(PublishFields::from_map(&fields), in_flight)
            .await
    }

    /// A publish refused at once, or sent to JetStream with its answer
    /// left in flight.
    async fn submit(&mut self, fields: PublishFields<'_>, in_flight: &mut InFlight) {
        let client_id = fields.client_id.unwrap_or_default();
        match self.publish(fields).await {
            Ok((channel, stored)) => {
                let client_id = client_id.to_owned();
                in_flight.push_back(Box::pin(async move {
                    Settled {
                        what: Pending::Publish { client_id, channel },
                        result: stored.await,
                    }
                }))
            }
            Err(nack) => self.nack_publish(client_id, nack).await,
        }
    }

    async fn nack_publish(&self, client_id: &str, (code, message): Nack) {
        metrics::counter!("herald_gateway_client_publishes_refused_total", "code" => code)
            .increment(1);
        self.send(ServerFrame::Nack {
            client_id,
            code,
            message: &message,
        })
        .await
    }

    /// Tell the client how a store ended.
    pub(super) async fn on_settled(&mut self, settled: Settled, in_flight: &mut InFlight) {
        match (settled.what, settled.result) {
            (Pending::Publish { client_id, channel }, Ok(stored)) => {
                metrics::counter!("herald_gateway_client_publishes_total").increment(1);
                self.send(ServerFrame::Ack {
                    client_id: &client_id,
                    channel: channel.as_str(),
                    id: &stored.id,
                    seq: stored.seq,
                    ts: stored.ts,
                })
                .await
            }
            (Pending::Publish { client_id, .. }, Err(nack)) => {
                self.nack_publish(&client_id, nack).await
            }
            (Pending::Receipt { channel, kind, .. }, Ok(_)) => {
                metrics::counter!("herald_gateway_receipts_total", "kind" => kind.as_str())
                    .increment(1);
                self.send_waiting_receipt(channel, kind, in_flight).await;
            }
            (
                Pending::Receipt {
                    channel,
                    kind,
                    previous,
                },
                Err((code, message)),
            ) => {
                // Not stored: a retry of that seq must not be skipped as
                // already sent.
                if let Some(state) = self.receipts.get_mut(&(channel.clone(), kind)) {
                    state.sent = previous;
                }
                self.send(ServerFrame::Nack {
                    client_id: "",
                    code,
                    message: &message,
                })
                .await;
                self.send_waiting_receipt(channel, kind, in_flight).await;
            }
        }
    }

    /// The receipt in flight was answered: send the one that waited, if any.
    async fn send_waiting_receipt(
        &mut self,
        channel: ChannelName,
        kind: EventKind,
        in_flight: &mut InFlight,
    ) {
        let key = (channel, kind);
        let Some(state) = self.receipts.get_mut(&key) else {
            return;
        };
        state.in_flight = false;
        let Some(seq) = state.waiting.take().filter(|w| *w > state.sent) else {
            return;
        };
        let (channel, kind) = key;
        if let Err((code, message)) = self.store_receipt(channel, kind, seq, in_flight).await {
            self.send(ServerFrame::Nack {
                client_id: "",
                code,
                message: &message,
            })
            .await
        }
    }

    /// Answer a publish with a nack without looking further at it.
    pub(super) async fn refuse_publish(&self, frame: &ClientFrame, code: &str, message: &str) {
        let fields = frame.data_object().unwrap_or_default();
        let client_id = fields
            .get("client_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.send(ServerFrame::Nack {
            client_id,
            code,
            message,
        })
        .await
    }

    /// `herald:delivered` / `herald:read` `{channel, seq}`.
    pub(super) async fn on_receipt(
        &mut self,
        frame: &ClientFrame,
        kind: EventKind,
        in_flight: &mut InFlight,
    ) {
        let fields = frame.data_object().unwrap_or_default();
        if let Err((code, message)) = self.receipt(&fields, kind, in_flight).await {
            self.send(ServerFrame::Nack {
                client_id: "",
                code,
                message: &message,
            })
            .await
        }
    }

    /// A channel this socket may publish on, or why not.
    fn publishable_channel(&self, name: Option<&str>) -> Result<ChannelName, Nack> {
        let name = name.ok_or_else(|| nack_of(nack::INVALID, "channel (a string) is required"))?;
        let channel = ChannelName::parse(name).map_err(|e| nack_of(nack::INVALID, e.message()))?;
        if !self.app.limits.enable_client_publish {
            return Err(nack_of(
                nack::NOT_ALLOWED,
                "Client publishing is not enabled for this app",
            ));
        }
        if channel.kind() == ChannelKind::Public {
            return Err(nack_of(
                nack::NOT_ALLOWED,
                "Clients publish on private and presence channels only",
            ));
        }
        if !self.channels.contains_key(&channel) {
            return Err(nack_of(
                nack::NOT_SUBSCRIBED,
                "Subscribe to the channel before publishing on it",
            ));
        }
        Ok(channel)
    }

    /// Spend one unit of this connection's publish rate.
    fn within_publish_rate(&mut self) -> Result<(), Nack> {
        let per_second = self.app.limits.client_publishes_per_second;
        let limiter = self.publish_limiter.get_or_insert_with(|| {
            RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            ))
        });
        limiter.check().map_err(|_| {
            nack_of(
                nack::RATE_LIMITED,
                format!("More than {per_second} publishes per second; retry later"),
            )
        })
    }

    /// The user a stored event of this socket is attributed to: the
    /// signed-in user, else its presence membership of the channel.
    fn author(&self, channel: &ChannelName) -> Option<String> {
        self.user
            .as_ref()
            .map(|u| u.id.as_str().to_owned())
            .or_else(|| self.member_id(channel).map(|u| u.as_str().to_owned()))
    }

    async fn publish(
        &mut self,
        fields: PublishFields<'_>,
    ) -> Result<(ChannelName, BoxFuture<'static, Result<Stored, Nack>>), Nack> {
        let client_id = fields.client_id.unwrap_or_default();
        if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID_LEN {
            return Err(nack_of(
                nack::INVALID,
                format!("client_id must be a string of 1-{MAX_CLIENT_ID_LEN} characters"),
            ));
        }
        let channel = self.publishable_channel(fields.channel)?;
        let event = fields
            .event
            .ok_or_else(|| nack_of(nack::INVALID, "event (a string) is required"))?;
        let event = EventName::parse(event).map_err(|e| nack_of(nack::INVALID, e.message()))?;
        if ["pusher:", "pusher_internal:", "herald:", "client-"]
            .iter()
            .any(|p| event.as_str().starts_with(p))
        {
            return Err(nack_of(
                nack::INVALID,
                "event names starting with pusher:, pusher_internal:, herald: or client- are reserved",
            ));
        }
        let Some(data) = fields.data else {
            return Err(nack_of(nack::INVALID, "data is required"));
        };
        let limit = self.app.limits.max_message_bytes;
        if data.len() > limit {
            return Err(nack_of(
                nack::TOO_LARGE,
                format!("data is {} bytes; the limit is {limit}", data.len()),
            ));
        }
        self.within_publish_rate()?;
        let author = self.author(&channel);
        let msg_id = publish_msg_id(
            self.app.id.as_str(),
            channel.as_str(),
            author.as_deref(),
            client_id,
        );
        let mut envelope = Envelope::new(
            EventKind::Message,
            self.app.id.as_str(),
            channel.as_str(),
            event.as_str(),
            data.into_owned(),
            author,
        );
        envelope.client_id = Some(client_id.to_owned());
        // Not echoed to this socket: the ack is its echo.
        let stored = self.store(&channel, envelope, &msg_id, true).await?;
        Ok((channel, stored))
    }

    async fn receipt(
        &mut self,
        fields: &Map<String, Value>,
        kind: EventKind,
        in_flight: &mut InFlight,
    ) -> Result<(), Nack> {
        let channel = self.publishable_channel(fields.get("channel").and_then(Value::as_str))?;
        let seq = fields
            .get("seq")
            .and_then(Value::as_u64)
            .filter(|s| *s > 0)
            .ok_or_else(|| nack_of(nack::INVALID, "seq (a positive integer) is required"))?;
        if self.author(&channel).is_none() {
            return Err(nack_of(
                nack::NOT_ALLOWED,
                "Receipts need a user: sign in, or join the presence channel",
            ));
        }
        // A receipt says "everything up to seq": one at or below what this
        // socket already sent (or is about to) adds nothing, and one that
        // arrives while another is in flight waits, collapsed to the highest.
        let state = self.receipts.entry((channel.clone(), kind)).or_default();
        if seq <= state.sent || state.waiting.is_some_and(|w| seq <= w) {
            return Ok(());
        }
        if state.in_flight {
            state.waiting = Some(seq);
            metrics::counter!("herald_gateway_receipts_collapsed_total").increment(1);
            return Ok(());
        }
        self.within_publish_rate()?;
        self.store_receipt(channel, kind, seq, in_flight).await
    }

    /// Store a receipt now, and count it as in flight.
    async fn store_receipt(
        &mut self,
        channel: ChannelName,
        kind: EventKind,
        seq: u64,
        in_flight: &mut InFlight,
    ) -> Result<(), Nack> {
        let Some(user) = self.author(&channel) else {
            return Err(nack_of(
                nack::NOT_ALLOWED,
                "Receipts need a user: sign in, or join the presence channel",
            ));
        };
        let event = match kind {
            EventKind::Delivered => herald_proto::envelope::event_names::DELIVERED,
            _ => herald_proto::envelope::event_names::READ,
        };
        let msg_id = receipt_msg_id(self.app.id.as_str(), channel.as_str(), &user, kind, seq);
        let data = to_data(&Receipt {
            user_id: user.clone(),
            seq,
        });
        let envelope = Envelope::new(
            kind,
            self.app.id.as_str(),
            channel.as_str(),
            event,
            data,
            Some(user),
        );
        // Echoed to this socket too: nothing else tells it the receipt's
        // seq, and without it the next event's `prev_seq` would look like
        // a gap to a client checking the chain.
        let stored = self.store(&channel, envelope, &msg_id, false).await?;
        let state = self.receipts.entry((channel.clone(), kind)).or_default();
        let previous = state.sent;
        state.sent = seq;
        state.in_flight = true;
        in_flight.push_back(Box::pin(async move {
            Settled {
                what: Pending::Receipt {
                    channel,
                    kind,
                    previous,
                },
                result: stored.await,
            }
        }));
        Ok(())
    }

    /// Send an envelope to its channel's subject (with `exclude_self`, not
    /// to be delivered to this socket) and return the wait for JetStream's
    /// answer: what identifies the stored event, or for a duplicate the
    /// original's.
    /// Sending happens here, in call order, so that one connection's
    /// publishes are stored in the order it sent them.
    async fn store(
        &self,
        channel: &ChannelName,
        envelope: Envelope,
        msg_id: &str,
        exclude_self: bool,
    ) -> Result<BoxFuture<'static, Result<Stored, Nack>>, Nack> {
        let state = self.state.clone();
        let channel = channel.clone();
        let unavailable = move |channel: &ChannelName, err: &dyn std::fmt::Display| {
            tracing::warn!(%err, %channel, "client publish not stored");
            nack_of(
                nack::UNAVAILABLE,
                "The event could not be stored; retry with the same client_id",
            )
        };
        let options = PublishOptions {
            exclude_socket: exclude_self.then_some(&*self.handle.socket_id),
            dedupe_group: None,
        };
        // On the heap: async-nats' publish future is large, and inline it
        // would be part of every connection's task for the connection's
        // whole life (see `a_connections_task_stays_small...`), publishing
        // or not; one allocation per publish is the cheaper side.
        let ack = Box::pin(state.acks.publish_envelope(
            &state.subjects,
            &self.app.id,
            &channel,
            &envelope,
            msg_id,
            &options,
        ))
        .await
        .map_err(|e| unavailable(&channel, &e))?;
        // Only the id and time wait for the ack; the rest of the envelope
        // (payload, names) is freed now, not held for the round trip.
        let Envelope { id, at, .. } = envelope;
        Ok(Box::pin(async move {
            ack.stored(&state.js, &state.subjects, id, at)
                .await
                .map_err(|e| unavailable(&channel, &e))
        }))
    }
}
