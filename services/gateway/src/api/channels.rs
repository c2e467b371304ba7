//! Channel queries: `GET /apps/{id}/channels`, `/channels/{name}` and
//! `/channels/{name}/users`.
//!
//! Occupancy is global across gateways: the asking gateway gathers every
//! live gateway's local subscription counts over NATS request/reply (see
//! `control::gather`); presence membership comes from the presence service,
//! the owner of who is in a presence channel.

use super::signature::Signed;
use crate::control::gather;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use herald_config::AppConfig;
use herald_proto::control::{OccupancyReply, OccupancyRequest};
use herald_proto::{ChannelKind, ChannelName, ControlVerb};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The attributes a request asked for with `info=`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Info {
    pub subscription_count: bool,
    pub user_count: bool,
}

impl Info {
    pub fn any(self) -> bool {
        self.subscription_count || self.user_count
    }
}

/// Parse `info=subscription_count,user_count`.
pub(crate) fn parse_info(raw: Option<&str>) -> Result<Info, ApiError> {
    let mut info = Info::default();
    for attr in raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match attr {
            "subscription_count" => info.subscription_count = true,
            "user_count" => info.user_count = true,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown info attribute {other:?}"
                )))
            }
        }
    }
    Ok(info)
}

/// Subscriptions per channel across every gateway.
async fn occupancy(
    state: &AppState,
    app: &AppConfig,
    request: OccupancyRequest,
) -> Result<BTreeMap<String, u64>, ApiError> {
    let replies: Vec<OccupancyReply> =
        gather(state, &app.id, ControlVerb::Occupancy, &request).await?;
    let mut total = BTreeMap::new();
    for reply in replies {
        for (channel, count) in reply.channels {
            *total.entry(channel).or_default() += count;
        }
    }
    Ok(total)
}

async fn user_ids(
    state: &AppState,
    app: &AppConfig,
    channel: &ChannelName,
) -> Result<Vec<String>, ApiError> {
    let reply = state
        .presence
        .members(&app.id, channel, 0, None)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(reply.members.into_keys().collect())
}

/// The requested attributes of one channel.
pub(crate) async fn attributes_for(
    state: &AppState,
    app: &AppConfig,
    channel: &ChannelName,
    info: Info,
) -> Result<Value, ApiError> {
    let mut attrs = Map::new();
    if info.subscription_count {
        let request = OccupancyRequest {
            channel: Some(channel.to_string()),
            prefix: None,
        };
        let count = occupancy(state, app, request)
            .await?
            .get(channel.as_str())
            .copied()
            .unwrap_or(0);
        attrs.insert("subscription_count".into(), json!(count));
    }
    if info.user_count && channel.kind() == ChannelKind::Presence {
        attrs.insert(
            "user_count".into(),
            json!(user_ids(state, app, channel).await?.len()),
        );
    }
    Ok(Value::Object(attrs))
}

fn channel_param(signed: &Signed) -> Result<ChannelName, ApiError> {
    let name = signed
        .path
        .get("name")
        .map(String::as_str)
        .unwrap_or_default();
    ChannelName::parse(name).map_err(|e| ApiError::BadRequest(format!("Channel {name:?}: {e}")))
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn list(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let info = parse_info(signed.param("info"))?;
    let prefix = signed.param("filter_by_prefix").map(str::to_owned);
    if info.user_count
        && !prefix
            .as_deref()
            .is_some_and(|p| p.starts_with("presence-"))
    {
        return Err(ApiError::BadRequest(
            "info=user_count needs filter_by_prefix=presence-".into(),
        ));
    }
    let counts = occupancy(
        &state,
        &signed.app,
        OccupancyRequest {
            channel: None,
            prefix,
        },
    )
    .await?;
    let mut channels = Map::new();
    for (name, count) in counts {
        let mut attrs = Map::new();
        if info.subscription_count {
            attrs.insert("subscription_count".into(), json!(count));
        }
        if info.user_count {
            if let Ok(channel) = ChannelName::parse(&name) {
                attrs.insert(
                    "user_count".into(),
                    json!(user_ids(&state, &signed.app, &channel).await?.len()),
                );
            }
        }
        channels.insert(name, Value::Object(attrs));
    }
    Ok(Json(json!({ "channels": channels })))
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn show(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let channel = channel_param(&signed)?;
    let info = parse_info(signed.param("info"))?;
    if info.user_count && channel.kind() != ChannelKind::Presence {
        return Err(ApiError::BadRequest(
            "user_count is only available for presence channels".into(),
        ));
    }
    let request = OccupancyRequest {
        channel: Some(channel.to_string()),
        prefix: None,
    };
    let count = occupancy(&state, &signed.app, request)
        .await?
        .get(channel.as_str())
        .copied()
        .unwrap_or(0);
    let mut body = Map::new();
    body.insert("occupied".into(), json!(count > 0));
    if info.subscription_count {
        body.insert("subscription_count".into(), json!(count));
    }
    if info.user_count {
        body.insert(
            "user_count".into(),
            json!(user_ids(&state, &signed.app, &channel).await?.len()),
        );
    }
    Ok(Json(Value::Object(body)))
}

#[tracing::instrument(skip_all, fields(app = %signed.app.id))]
pub(super) async fn users(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let channel = channel_param(&signed)?;
    if channel.kind() != ChannelKind::Presence {
        return Err(ApiError::BadRequest(
            "Users are only listed for presence channels".into(),
        ));
    }
    let users: Vec<Value> = user_ids(&state, &signed.app, &channel)
        .await?
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(Json(json!({ "users": users })))
}
