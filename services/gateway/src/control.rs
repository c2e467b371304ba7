//! The gateway's control plane over core NATS: events sent to users,
//! `terminate_connections`, server-side subscriptions and occupancy queries.
//! Every gateway acts on the users and channels it holds and answers; the
//! HTTP API gathers the answers of every live gateway ([`gather`]).
//!
//! One loop serves every request, so nothing in it may wait for a
//! connection: frames are queued without waiting ([`ConnHandle::deliver`]),
//! requests are handed over without waiting ([`ConnHandle::control`]), and a
//! connection that cannot take them is a slow consumer. A stuck socket
//! therefore delays nobody else's events, terminations or subscriptions.
//!
//! [`ConnHandle::deliver`]: crate::hub::ConnHandle::deliver
//! [`ConnHandle::control`]: crate::hub::ConnHandle::control

use crate::error::ApiError;
use crate::hub::Control;
use crate::AppState;
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use herald_proto::control::{
    ControlReply, OccupancyReply, OccupancyRequest, SubscriptionsRequest, TerminateRequest,
    UserEvent,
};
use herald_proto::{AppId, ChannelName, ControlVerb, ServerFrame, UserId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the HTTP API waits for every gateway's answer.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// The gateway-wide subscriptions, made before the gateway serves anything.
pub(crate) struct Subscriptions {
    users: async_nats::Subscriber,
    control: async_nats::Subscriber,
}

/// Subscribe to user events and control requests.
pub(crate) async fn subscribe(
    nats: &async_nats::Client,
    subjects: &herald_proto::Subjects,
) -> anyhow::Result<Subscriptions> {
    let users = nats.subscribe(subjects.user_events_filter()).await?;
    let control = nats.subscribe(subjects.control_filter()).await?;
    herald_stream::server_barrier(nats)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Subscriptions { users, control })
}

/// Serve user events and control requests until shutdown.
pub(crate) async fn run(state: AppState, subs: Subscriptions, shutdown: CancellationToken) {
    let Subscriptions {
        mut users,
        mut control,
    } = subs;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(msg) = users.next() => deliver_user_event(&state, &msg),
            Some(msg) = control.next() => {
                if let Err(err) = handle_control(&state, msg).await {
                    tracing::warn!(%err, "control request failed");
                }
            }
            else => return,
        }
    }
}

fn deliver_user_event(state: &AppState, msg: &async_nats::Message) {
    let Ok((app, user)) = state.subjects.parse_user_subject(&msg.subject) else {
        return;
    };
    let Ok(event) = serde_json::from_slice::<UserEvent>(&msg.payload) else {
        tracing::warn!("dropping unreadable user event");
        return;
    };
    let Ok(user) = UserId::parse(&user) else {
        return;
    };
    let conns = state.hub.user_connections(&app, &user);
    if conns.is_empty() {
        return;
    }
    let frame = Utf8Bytes::from(
        ServerFrame::ToUser {
            user_id: user.as_str(),
            event: &event.event,
            data: &event.data,
        }
        .to_json(),
    );
    for conn in conns {
        conn.deliver(frame.clone());
    }
}

async fn handle_control(state: &AppState, msg: async_nats::Message) -> anyhow::Result<()> {
    let (app, verb) = state.subjects.parse_control_subject(&msg.subject)?;
    let gateway = state.presence.gateway_id().to_owned();
    let reply = match verb {
        ControlVerb::Terminate => {
            let req: TerminateRequest = serde_json::from_slice(&msg.payload)?;
            let conns = state.hub.user_connections(&app, &req.user_id);
            for conn in &conns {
                // One that cannot take the request is closed as a slow
                // consumer instead: terminated either way.
                conn.control(Control::Terminate);
            }
            serde_json::to_vec(&ControlReply {
                gateway,
                connections: conns.len(),
            })?
        }
        ControlVerb::Subscriptions => {
            let req: SubscriptionsRequest = serde_json::from_slice(&msg.payload)?;
            let channels: Vec<ChannelName> = req
                .channels
                .iter()
                .filter_map(|c| ChannelName::parse(c).ok())
                .collect();
            let conns = state.hub.user_connections(&app, &req.user_id);
            let mut acted = 0;
            for conn in &conns {
                let request = if req.subscribe {
                    Control::Subscribe(channels.clone())
                } else {
                    Control::Unsubscribe(channels.clone())
                };
                // Counted only when handed over; one that cannot take it is
                // closed as a slow consumer (it reconnects into a state its
                // app server knows) rather than silently missing it.
                if conn.control(request) {
                    acted += 1;
                }
            }
            serde_json::to_vec(&ControlReply {
                gateway,
                connections: acted,
            })?
        }
        ControlVerb::Occupancy => {
            let req: OccupancyRequest = serde_json::from_slice(&msg.payload)?;
            let channels = state
                .hub
                .occupancy(&app, |name| {
                    req.channel.as_deref().is_none_or(|c| c == name)
                        && req.prefix.as_deref().is_none_or(|p| name.starts_with(p))
                })
                .into_iter()
                .collect();
            serde_json::to_vec(&OccupancyReply { gateway, channels })?
        }
    };
    if let Some(inbox) = msg.reply {
        state.nats.publish(inbox, reply.into()).await?;
    }
    Ok(())
}

/// Ask every live gateway and collect their answers. An answer that lacks
/// a gateway's part is not an answer: when not every live gateway answered
/// within [`GATHER_TIMEOUT`], the request fails with 503 (`unavailable`)
/// rather than reporting partial counts as if they were complete. The
/// request itself reached every gateway, and every control request is safe
/// to repeat.
pub(crate) async fn gather<Req: Serialize, Rep: DeserializeOwned>(
    state: &AppState,
    app: &AppId,
    verb: ControlVerb,
    request: &Req,
) -> Result<Vec<Rep>, ApiError> {
    let nats_down = |err: &dyn std::fmt::Display| {
        tracing::warn!(%err, ?verb, "control request not sent");
        ApiError::Unavailable("The gateways cannot be reached now (NATS); retry".into())
    };
    let expected = state.presence.live_gateways(state.config.gateway_ttl);
    let inbox = state.nats.new_inbox();
    let mut replies = state
        .nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| nats_down(&e))?;
    let payload = serde_json::to_vec(request).map_err(|e| ApiError::Internal(e.into()))?;
    state
        .nats
        .publish_with_reply(state.subjects.control(app, verb), inbox, payload.into())
        .await
        .map_err(|e| nats_down(&e))?;
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER_TIMEOUT;
    while answers.len() < expected {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(msg)) => match serde_json::from_slice(&msg.payload) {
                Ok(answer) => answers.push(answer),
                Err(err) => tracing::warn!(%err, "unreadable control reply"),
            },
            Ok(None) | Err(_) => break,
        }
    }
    if answers.len() < expected {
        metrics::counter!("herald_gateway_control_incomplete_total").increment(1);
        tracing::warn!(
            expected,
            got = answers.len(),
            ?verb,
            "not every gateway answered in time"
        );
        return Err(ApiError::Unavailable(format!(
            "Only {} of {expected} gateways answered within {} s; the answer would be \
             incomplete. The request reached every gateway and is safe to repeat",
            answers.len(),
            GATHER_TIMEOUT.as_secs()
        )));
    }
    Ok(answers)
}
