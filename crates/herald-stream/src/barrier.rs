//! A round trip through the NATS server, to know it has registered this
//! client's subscriptions.

use crate::error::{BarrierLoss, BarrierStep};
use crate::StreamError;
use bytes::Bytes;
use std::time::Duration;

/// Wait until the NATS server has processed everything this client sent so
/// far (in particular its SUBs).
///
/// `Client::flush` only writes the client's buffer to the socket; it does not
/// wait for the server. The server handles one connection's protocol in
/// order, so a message published to a fresh inbox of our own and received
/// back proves every earlier SUB is registered: events published by *other*
/// connections from then on reach us.
pub async fn server_barrier(nats: &async_nats::Client) -> Result<(), StreamError> {
    use futures::StreamExt;
    fn failed<E: std::error::Error + Send + Sync + 'static>(
        step: BarrierStep,
    ) -> impl FnOnce(E) -> StreamError {
        move |err| StreamError::Barrier {
            step,
            source: Box::new(err),
        }
    }
    let inbox = nats.new_inbox();
    let mut echo = nats
        .subscribe(inbox.clone())
        .await
        .map_err(failed(BarrierStep::Subscribe))?;
    nats.publish(inbox, Bytes::new())
        .await
        .map_err(failed(BarrierStep::Publish))?;
    nats.flush().await.map_err(failed(BarrierStep::Flush))?;
    match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StreamError::BarrierLost(BarrierLoss::Closed)),
        Err(_) => Err(StreamError::BarrierLost(BarrierLoss::TimedOut)),
    }
}
