//! The server under test: where it is, and the guarantee that it is on this
//! machine. Every run of the load generator refuses a target that is not a
//! loopback address (127.0.0.0/8, `::1` or `localhost`), before any traffic.

use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where the Pusher-compatible server listens, and the app to use.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Server host: a loopback address (127.0.0.0/8, ::1) or `localhost`.
    #[arg(
        long,
        global = true,
        env = "HERALD_LOADGEN_HOST",
        default_value = "127.0.0.1"
    )]
    pub host: String,
    /// Server port (WebSocket and HTTP API on the same port, as Pusher servers do).
    #[arg(
        long,
        global = true,
        env = "HERALD_LOADGEN_PORT",
        default_value_t = 6001
    )]
    pub port: u16,
    /// App id, for the HTTP API path `/apps/{id}/events`.
    #[arg(long, global = true, default_value = "app-id")]
    pub app_id: String,
    /// App key, for the WebSocket path `/app/{key}` and API signatures.
    #[arg(long, global = true, default_value = "app-key")]
    pub app_key: String,
    /// App secret, to sign HTTP API requests.
    #[arg(long, global = true, default_value = "app-secret")]
    pub app_secret: String,
}

/// A target host that is not on this machine.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing target host {:?}: only loopback targets are allowed \
             (127.0.0.0/8, ::1, localhost)",
            self.0
        )
    }
}

impl std::error::Error for Refused {}

/// Parse `host` and accept it only if it is a loopback address: an IPv4
/// address in 127.0.0.0/8, the IPv6 address `::1` (bracketed or not), or the
/// name `localhost` (which maps to 127.0.0.1 without asking a resolver).
pub fn loopback_ip(host: &str) -> Result<IpAddr, Refused> {
    let trimmed = host.trim();
    let bare = trimmed
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(trimmed);
    if bare.eq_ignore_ascii_case("localhost") || bare.eq_ignore_ascii_case("localhost.") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    match bare.parse::<IpAddr>() {
        // `Ipv4Addr::is_loopback` is exactly 127.0.0.0/8; `Ipv6Addr::is_loopback`
        // is exactly ::1 (IPv4-mapped addresses are refused).
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err(Refused(host.to_owned())),
    }
}

/// A validated target: the socket address plus the app credentials.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's loopback socket address.
    pub addr: SocketAddr,
    /// App id.
    pub app_id: String,
    /// App key.
    pub app_key: String,
    /// App secret.
    pub app_secret: String,
}

impl Target {
    /// Validate the arguments; fails for any non-loopback host.
    pub fn from_args(args: &TargetArgs) -> Result<Self, Refused> {
        let ip = loopback_ip(&args.host)?;
        Ok(Self {
            addr: SocketAddr::new(ip, args.port),
            app_id: args.app_id.clone(),
            app_key: args.app_key.clone(),
            app_secret: args.app_secret.clone(),
        })
    }

    /// `host:port` as it appears in a URL (`[::1]:6001` for IPv6).
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// The Pusher WebSocket URL, `ws://host:port/app/{key}?protocol=7`.
    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}/app/{}?protocol=7&client=herald-loadgen&version=0.1",
            self.authority(),
            self.app_key
        )
    }

    /// The base of HTTP API URLs, `http://host:port`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.254",
            "::1",
            "[::1]",
            "localhost",
            "LocalHost",
            " 127.0.0.1 ",
        ] {
            let ip = loopback_ip(host).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert!(ip.is_loopback(), "{host}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for host in [
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "192.168.1.1",
            "128.0.0.1",
            "::ffff:127.0.0.1",
            "example.com",
            "127.0.0.1.nip.io",
            "localhost.example.com",
            "",
            "127.0.0.1:6001",
            "2001:db8::1",
        ] {
            assert!(loopback_ip(host).is_err(), "{host} must be refused");
        }
    }

    #[test]
    fn urls_bracket_ipv6() {
        let args = TargetArgs {
            host: "::1".into(),
            port: 7000,
            app_id: "a".into(),
            app_key: "k".into(),
            app_secret: "s".into(),
        };
        let t = Target::from_args(&args).expect("loopback");
        assert_eq!(t.http_base(), "http://[::1]:7000");
        assert!(t.ws_url().starts_with("ws://[::1]:7000/app/k?protocol=7"));
    }
}
