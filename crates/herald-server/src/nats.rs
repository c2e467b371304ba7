//! The NATS connection every service opens: named after the service,
//! retried while a just-started server comes up, with the client's events
//! logged and counted. The URL may hold credentials, so it is only ever
//! logged through [`redact_url`].

/// Connect to NATS, naming the connection after the service.
pub async fn connect_nats(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let (client, _) = connect_nats_watching(url, name).await?;
    Ok(client)
}

/// Connect to NATS, and watch the connection: the value counts the times the
/// client (re)connected, so a receiver's `changed()` fires after every
/// reconnect. Core-NATS messages published while the client was away are
/// gone; whoever relies on them (the gateway's live path) checks what it
/// missed when this fires.
pub async fn connect_nats_watching(
    url: &str,
    name: &str,
) -> anyhow::Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>)> {
    use anyhow::Context;
    let (connected_tx, connected_rx) = tokio::sync::watch::channel(0u64);
    let connected_tx = std::sync::Arc::new(connected_tx);
    // Install the metrics recorder before anything is counted: the first
    // NATS events come before the service builds its `/metrics` route.
    crate::telemetry::metrics_handle();
    // A server that is still starting (a compose stack coming up, a test's
    // fresh nats-server) may refuse or reset the first connections: retry
    // for a few seconds before giving up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let service = name.to_owned();
        let connected = connected_tx.clone();
        let attempt = async_nats::ConnectOptions::new()
            .name(name)
            .event_callback(move |event| {
                let service = service.clone();
                let connected = connected.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        connected.send_modify(|n| *n += 1);
                    }
                    log_nats_event(&service, &event)
                }
            })
            .connect(url)
            .await;
        match attempt {
            Ok(client) => return Ok((client, connected_rx)),
            Err(err) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(%err, url = %redact_url(url), "cannot connect to NATS yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("connecting to NATS at {}", redact_url(url)));
            }
        }
    }
}

/// Log what the NATS client reports, and count it. A slow consumer matters
/// most: the client has dropped messages for a subscription whose reader fell
/// more than its capacity (65,536 messages) behind, which is otherwise silent.
fn log_nats_event(service: &str, event: &async_nats::Event) {
    use async_nats::Event;
    let kind = match event {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck_mode",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    metrics::counter!("herald_nats_events_total", "event" => kind).increment(1);
    match event {
        Event::Connected => tracing::info!(service, "NATS: {event}"),
        _ => tracing::warn!(service, "NATS: {event}"),
    }
}

/// `url` with any user, password or token replaced by `***`, for logs and
/// error messages: `NATS_URL` may be `nats://user:secret@host:4222` (and may
/// list several servers, comma-separated).
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, one),
            };
            let rest = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{rest}"),
                None => rest,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_in_a_nats_url_never_reach_a_log() {
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("tok@h:4222"), "***@h:4222");
        assert_eq!(
            redact_url("nats://a:b@h1:1,nats://h2:2"),
            "nats://***@h1:1,nats://h2:2"
        );
        assert!(!redact_url("nats://user:p%40ss@h").contains("p%40ss"));
    }
}
