//! Core-NATS messages between gateways (and from the HTTP API to every
//! gateway): ephemeral client events, events sent to users, and the control
//! plane (terminate, server-side subscriptions, occupancy).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A client event (or a service-generated ephemeral event) on
/// [`crate::Subjects::ephemeral`]: never stored, delivered to every
/// subscriber of the channel except `socket_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EphemeralEvent {
    /// Event name, e.g. `client-typing`.
    pub event: String,
    /// Channel name.
    pub channel: String,
    /// Payload exactly as the client sent it.
    #[serde(default)]
    pub data: Value,
    /// The sender's socket, which must not receive it back.
    #[serde(default)]
    pub socket_id: Option<String>,
    /// The sender's user id on presence channels (Pusher adds it).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The sender's signed-in user (`pusher:signin`), when it has one: a
    /// Herald addition, so that `herald:typing_stopped` can name a typist
    /// on a private channel (a direct message) too. Never put in the client
    /// event subscribers get, which carries `user_id` on presence channels
    /// only, as Pusher's does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_in_user: Option<String>,
}

/// An event sent to one user (Pusher's `#server-to-user-<id>` channel) on
/// [`crate::Subjects::user_events`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserEvent {
    /// Event name.
    pub event: String,
    /// Payload string, as given to the HTTP API.
    pub data: String,
}

/// `terminate` control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminateRequest {
    /// Whose connections to close.
    pub user_id: crate::UserId,
}

/// `subscriptions` control request: subscribe (or unsubscribe) every live
/// connection of a user to channels, on the server's authority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionsRequest {
    /// The user.
    pub user_id: crate::UserId,
    /// Channel names.
    pub channels: Vec<String>,
    /// `true` to subscribe, `false` to unsubscribe.
    pub subscribe: bool,
}

/// Every gateway's answer to `terminate` and `subscriptions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// The answering gateway.
    pub gateway: String,
    /// How many of its connections were affected.
    pub connections: usize,
}

/// `occupancy` control request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OccupancyRequest {
    /// Only this channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// Only channels starting with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// One gateway's local occupancy: channel → subscribed connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OccupancyReply {
    /// The answering gateway.
    pub gateway: String,
    /// Channel name → number of local subscriptions.
    pub channels: BTreeMap<String, u64>,
}
