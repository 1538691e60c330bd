//! Which destinations a plugin may reach.
//!
//! A plugin lists the hosts it may call (`allowed_hosts`); an empty list
//! means no request at all. Beyond the names, the addresses are checked:
//! loopback, private, link-local (cloud metadata at 169.254.169.254) and
//! other non-public addresses are reached only when an entry names them
//! exactly, so a wildcard entry or a DNS answer cannot point a plugin at the
//! host's own network.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// The hosts one plugin may reach; none means no outbound request at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<Entry>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `*.domain`: any subdomain, the scheme's default port.
    Suffix(String),
    /// `host` (default port), `host:port`, or `host:*` (any port).
    Host { host: String, port: Port },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Default,
    Any,
    Is(u16),
}

impl AllowedHosts {
    /// From config entries: `host` (the scheme's default port), `host:port`,
    /// `host:*` (any port), or `*.domain`.
    pub fn new(entries: &[String]) -> Self {
        Self(entries.iter().map(|e| parse_entry(e)).collect())
    }

    /// Whether a request to `host` on `port` may go out; `default_port` is
    /// the scheme's (80 or 443). Address literals match only entries naming
    /// them, never a wildcard.
    pub fn permits(&self, host: &str, port: Option<u16>, default_port: u16) -> bool {
        let host = normalize_host(host);
        let port = port.unwrap_or(default_port);
        let port_ok = |p: Port| match p {
            Port::Default => port == default_port,
            Port::Any => true,
            Port::Is(n) => port == n,
        };
        self.0.iter().any(|e| match e {
            Entry::Host { host: h, port: p } => *h == host && port_ok(*p),
            Entry::Suffix(s) => {
                port == default_port
                    && host.parse::<IpAddr>().is_err()
                    && host.ends_with(&format!(".{s}"))
            }
        })
    }

    /// Host names that entries name exactly (they may resolve to any address).
    pub fn exact_names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|e| match e {
            Entry::Host { host, .. } if host.parse::<IpAddr>().is_err() => Some(host.as_str()),
            _ => None,
        })
    }
}

fn parse_entry(raw: &str) -> Entry {
    let e = raw.trim().to_ascii_lowercase();
    if let Some(suffix) = e.strip_prefix("*.") {
        return Entry::Suffix(suffix.to_owned());
    }
    // `[v6]:port`, `v4:port`, `name:port`; a bare IPv6 address has colons too.
    let split = if let Some(rest) = e.strip_prefix('[') {
        rest.split_once(']')
            .map(|(h, p)| (h.to_owned(), p.strip_prefix(':')))
    } else if e.parse::<IpAddr>().is_ok() {
        Some((e.clone(), None))
    } else {
        Some(match e.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (e.clone(), None),
        })
    };
    let (host, port) = split.unwrap_or((e.clone(), None));
    let port = match port {
        None | Some("") => Port::Default,
        Some("*") => Port::Any,
        // An unparsable port matches nothing rather than everything.
        Some(p) => p.parse().map_or(Port::Is(0), Port::Is),
    };
    Entry::Host { host, port }
}

/// Lower-case host without IPv6 brackets, as URIs and entries are compared.
pub fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// True for addresses on the public internet; false for loopback, private,
/// link-local, unspecified, multicast and other special-purpose ranges.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                // Carrier-grade NAT, 100.64.0.0/10.
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local())
            }
        },
    }
}

/// Resolves names for the shared client, keeping only addresses the name may
/// have: public ones, or any for a name some plugin's entry names exactly.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    inner: GaiResolver,
    exact: Arc<RwLock<HashSet<String>>>,
}

/// The resolver refused every address a name resolved to.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} resolves only to non-public addresses ({addrs}); name it exactly in allowed_hosts to reach it"
)]
pub struct NonPublicAddress {
    name: String,
    addrs: String,
}

impl Default for GuardedResolver {
    fn default() -> Self {
        Self {
            inner: GaiResolver::new(),
            exact: Arc::default(),
        }
    }
}

impl GuardedResolver {
    /// Lets these names resolve to non-public addresses.
    pub fn allow_names<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let mut set = self.exact.write().unwrap_or_else(|p| p.into_inner());
        set.extend(names.map(str::to_owned));
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let exact = self
            .exact
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&name.as_str().to_ascii_lowercase());
        let fut = self.inner.call(name.clone());
        Box::pin(async move {
            let all: Vec<SocketAddr> = fut.await?.collect();
            if exact {
                return Ok(all.into_iter());
            }
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() && !all.is_empty() {
                let addrs = all
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(NonPublicAddress {
                    name: name.as_str().to_owned(),
                    addrs,
                }) as BoxError);
            }
            Ok(public.into_iter())
        })
    }
}
