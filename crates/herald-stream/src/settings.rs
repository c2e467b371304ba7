//! Retention and de-duplication settings of the channel stream, and the
//! command-line flags every service that creates the stream reads them from
//! (one set of defaults, so gateway and history agree unless configured
//! apart).

use std::time::Duration;

/// Default retention: 30 days.
pub const DEFAULT_MAX_AGE_SECS: u64 = 30 * 24 * 3600;
/// Default per-channel event limit: none.
pub const DEFAULT_MAX_MSGS_PER_CHANNEL: i64 = -1;
/// Default de-duplication window: two minutes (also NATS's own default).
pub const DEFAULT_DUPLICATE_WINDOW_SECS: u64 = 120;
/// Default replicas: a single server.
pub const DEFAULT_REPLICAS: usize = 1;

/// Retention and de-duplication settings of the channel stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Drop events older than this (zero keeps them forever).
    pub max_age: Duration,
    /// Keep at most this many events per channel (-1 for no limit).
    pub max_msgs_per_channel: i64,
    /// Window within which a repeated `Nats-Msg-Id` is stored once.
    pub duplicate_window: Duration,
    /// Replicas (1 for a single server, 3 in a cluster).
    pub replicas: usize,
}

/// Command-line / environment flags for [`StreamSettings`].
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Keep channel events this many seconds (0 = forever).
    #[arg(long, env = "HERALD_STREAM_MAX_AGE_SECS", default_value_t = DEFAULT_MAX_AGE_SECS)]
    pub stream_max_age_secs: u64,
    /// Keep at most this many events per channel (-1 = no limit).
    #[arg(long, env = "HERALD_STREAM_MAX_MSGS_PER_CHANNEL", default_value_t = DEFAULT_MAX_MSGS_PER_CHANNEL, allow_hyphen_values = true)]
    pub stream_max_msgs_per_channel: i64,
    /// De-duplication window for retried publishes, in seconds.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW_SECS", default_value_t = DEFAULT_DUPLICATE_WINDOW_SECS)]
    pub duplicate_window_secs: u64,
    /// Stream replicas (3 on a NATS cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = DEFAULT_REPLICAS)]
    pub stream_replicas: usize,
}

impl StreamArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> StreamSettings {
        StreamSettings {
            max_age: Duration::from_secs(self.stream_max_age_secs),
            max_msgs_per_channel: self.stream_max_msgs_per_channel,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            replicas: self.stream_replicas,
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(DEFAULT_MAX_AGE_SECS),
            max_msgs_per_channel: DEFAULT_MAX_MSGS_PER_CHANNEL,
            duplicate_window: Duration::from_secs(DEFAULT_DUPLICATE_WINDOW_SECS),
            replicas: DEFAULT_REPLICAS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        stream: StreamArgs,
    }

    #[test]
    fn the_flags_default_to_the_default_settings() {
        let flags = Cli::try_parse_from(["x"]).unwrap().stream.settings();
        let defaults = StreamSettings::default();
        assert_eq!(flags.max_age, defaults.max_age);
        assert_eq!(flags.max_msgs_per_channel, defaults.max_msgs_per_channel);
        assert_eq!(flags.duplicate_window, defaults.duplicate_window);
        assert_eq!(flags.replicas, defaults.replicas);
    }
}
