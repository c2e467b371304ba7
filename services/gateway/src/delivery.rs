//! The delivery runtime: a tokio runtime of its own for the connections'
//! writer tasks.
//!
//! One published event wakes one writer task per subscribed connection, so a
//! fan-out to thousands of sockets puts thousands of tasks in the run queue
//! at once. On the runtime that also runs the HTTP API, the NATS client and
//! the presence heartbeat, everything else then waits behind that burst: the
//! publish round trip went from 0.25 ms to 4.3 ms under a 1,000-subscriber
//! fan-out, and a heartbeat could be late enough for the gateway to look
//! dead. With the writers on their own threads, the operating system shares
//! the cores between the two runtimes, so publishing and control stay prompt
//! while writers catch up, and a writer that wakes to several queued frames
//! sends them in one syscall (see BENCHMARKS.md).

use std::future::Future;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// Where writer tasks are spawned.
pub(crate) struct Delivery {
    /// `None`: writers share the caller's runtime (`--delivery-threads 0`).
    runtime: Option<Runtime>,
}

impl Delivery {
    /// A delivery runtime with `threads` worker threads; 0 keeps the writers
    /// on the runtime that accepts the connections.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = match threads {
            0 => None,
            n => Some(
                Builder::new_multi_thread()
                    .worker_threads(n)
                    .thread_name("herald-delivery")
                    .enable_all()
                    .build()?,
            ),
        };
        Ok(Self { runtime })
    }

    /// Spawn `task` on the delivery runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => runtime.spawn(task),
            None => Handle::current().spawn(task),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which panics inside
        // an async context; by the time the gateway's state is dropped its
        // connections are closed, so nothing is left to wait for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
