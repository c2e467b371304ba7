//! A signed Pusher HTTP API client for tests, signing exactly as the official
//! server SDKs do.

use herald_proto::pusher::{body_md5, sign_api_request};
use serde_json::Value;

/// Pusher HTTP API credentials and the gateway's base URL.
#[derive(Debug, Clone)]
pub struct PusherApi {
    /// e.g. `http://127.0.0.1:6001`
    pub base: String,
    /// App id.
    pub app_id: String,
    /// App key.
    pub key: String,
    /// App secret.
    pub secret: String,
    http: reqwest::Client,
}

impl PusherApi {
    /// A client for the gateway on `port` with the given credentials.
    pub fn new(port: u16, app_id: &str, key: &str, secret: &str) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.into(),
            http: reqwest::Client::new(),
        }
    }

    /// The signed query string for a request, with an explicit timestamp.
    pub fn signed_query(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&str, &str)],
        timestamp: i64,
    ) -> String {
        let ts = timestamp.to_string();
        let md5 = body.map(body_md5);
        let mut params: Vec<(&str, &str)> = vec![
            ("auth_key", &self.key),
            ("auth_timestamp", &ts),
            ("auth_version", "1.0"),
        ];
        if let Some(md5) = &md5 {
            params.push(("body_md5", md5));
        }
        params.extend_from_slice(extra);
        let sig = sign_api_request(&self.secret, method, path, params.iter().copied());
        let mut query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        query.push(format!("auth_signature={sig}"));
        query.join("&")
    }

    /// Send a request to a full `path` (e.g. `/apps/app-id/events`), signed
    /// now; answers the status and the body (JSON when it parses).
    pub async fn signed(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        self.signed_at(method, path, body, extra, herald_proto::now_ms() / 1000)
            .await
    }

    /// [`Self::signed`] with an explicit `auth_timestamp` (Unix seconds).
    pub async fn signed_at(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
        timestamp: i64,
    ) -> anyhow::Result<(u16, Value)> {
        let q = self.signed_query(method, path, body.as_deref(), extra, timestamp);
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}{path}?{q}", self.base));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// POST a JSON body to `path` (under `/apps/{id}`), signed now.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let full = format!("/apps/{}{path}", self.app_id);
        self.signed("POST", &full, Some(serde_json::to_vec(body)?), &[])
            .await
    }

    /// GET `path` (under `/apps/{id}`) with extra query params, signed now.
    pub async fn get(&self, path: &str, extra: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
        let full = format!("/apps/{}{path}", self.app_id);
        self.signed("GET", &full, None, extra).await
    }

    /// Trigger `event` on `channels` with a string payload.
    pub async fn trigger(
        &self,
        channels: &[&str],
        event: &str,
        data: &str,
    ) -> anyhow::Result<(u16, Value)> {
        self.post(
            "/events",
            &serde_json::json!({ "name": event, "channels": channels, "data": data }),
        )
        .await
    }
}
