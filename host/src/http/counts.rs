//! Outbound requests and retries per destination host and answer status,
//! for `taskhost_http_requests_total` and `taskhost_http_retries_total`.
//!
//! Destinations come from plugins (a wildcard entry allows endless hosts),
//! so at most [`MAX_HOSTS`] are counted by name; the rest share `other`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Most destinations counted by name.
pub const MAX_HOSTS: usize = 256;

/// Label for destinations past [`MAX_HOSTS`].
pub const OTHER: &str = "other";

/// Counts of one destination.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostCounts {
    /// Requests by how they ended: the final status code, or `timeout`,
    /// `error` (no answer), `refused` (host not allowed).
    pub by_status: BTreeMap<String, u64>,
    /// Retries after 429/503.
    pub retries: u64,
}

/// Counts of every destination.
#[derive(Debug, Default)]
pub struct PerHost {
    hosts: Mutex<HashMap<String, HostCounts>>,
}

impl PerHost {
    fn with(&self, host: &str, f: impl FnOnce(&mut HostCounts)) {
        let mut m = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let key = if m.contains_key(host) || m.len() < MAX_HOSTS {
            host
        } else {
            OTHER
        };
        match m.get_mut(key) {
            Some(c) => f(c),
            None => f(m.entry(key.to_owned()).or_default()),
        }
    }

    /// Counts one request to `host` that ended with `status`.
    pub fn request(&self, host: &str, status: &str) {
        self.with(host, |c| match c.by_status.get_mut(status) {
            Some(n) => *n += 1,
            None => {
                c.by_status.insert(status.to_owned(), 1);
            }
        });
    }

    /// Counts one retry to `host`.
    pub fn retry(&self, host: &str) {
        self.with(host, |c| c.retries += 1);
    }

    /// A copy of every destination's counts.
    pub fn snapshot(&self) -> Vec<(String, HostCounts)> {
        let m = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_past_the_cap_share_other() {
        let p = PerHost::default();
        for i in 0..MAX_HOSTS {
            p.request(&format!("h{i}:80"), "200");
        }
        p.request("h0:80", "503");
        p.retry("h0:80");
        p.request("late:80", "200");
        let s = p.snapshot();
        assert_eq!(s.len(), MAX_HOSTS + 1);
        let h0 = &s.iter().find(|(h, _)| h == "h0:80").unwrap().1;
        assert_eq!(
            (h0.by_status["200"], h0.by_status["503"], h0.retries),
            (1, 1, 1)
        );
        assert!(s.iter().any(|(h, c)| h == OTHER && c.by_status["200"] == 1));
    }
}
