//! Per-client-IP limits: connections open at once and new connections per minute. IPv4 clients
//! are counted by address, IPv6 clients by /64 (one subscriber's whole prefix). Addresses in
//! `--per-ip-exempt` (by default the loopback addresses a local load balancer or health check
//! connects from) are not limited.
//!
//! The rate is a GCRA (`governor`'s keyed limiter): a burst of the per-minute figure, then one
//! connection every `60 s / figure`. The concurrent count is a map of counters, each entry gone
//! when its last connection closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::proxy_protocol::normalise_ip;

/// What one client is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    /// The upper 64 bits.
    V6(u64),
}

pub fn key(ip: IpAddr) -> IpKey {
    match normalise_ip(ip) {
        IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
        IpAddr::V6(v6) => IpKey::V6((u128::from(v6) >> 64) as u64),
    }
}

/// Which limit refused a connection (the `limit` label of the refusal metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Concurrent,
    Rate,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Concurrent => "concurrent",
            Refused::Rate => "rate",
        }
    }

    /// The `<text/>` of the stream error.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Concurrent => "too many connections from your address",
            Refused::Rate => "too many new connections from your address; try again later",
        }
    }
}

/// Calls of [`PerIp::admit`] between two sweeps of the rate limiter's idle entries.
const SWEEP_EVERY: u64 = 4096;

pub struct PerIp {
    max_concurrent: Option<u32>,
    open: Mutex<HashMap<IpKey, u32>>,
    rate: Option<DefaultKeyedRateLimiter<IpKey>>,
    exempt: Vec<ipnet::IpNet>,
    admits: AtomicU64,
}

/// A connection counted against its address; dropping it releases the count.
pub struct Slot {
    limits: Arc<PerIp>,
    key: Option<IpKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

impl PerIp {
    /// `max_concurrent`, `per_minute`: 0 turns that limit off.
    pub fn new(max_concurrent: u32, per_minute: u32, exempt: Vec<ipnet::IpNet>) -> Arc<PerIp> {
        Arc::new(PerIp {
            max_concurrent: (max_concurrent > 0).then_some(max_concurrent),
            open: Mutex::new(HashMap::new()),
            rate: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            exempt,
            admits: AtomicU64::new(0),
        })
    }

    /// Counts a new connection from `ip`, or says which limit refuses it. A refused connection
    /// does not count against the concurrent limit; one refused for concurrency does not use up
    /// the rate.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = normalise_ip(ip);
        if self.exempt.iter().any(|net| net.contains(&ip))
            || (self.max_concurrent.is_none() && self.rate.is_none())
        {
            return Ok(Slot {
                limits: self.clone(),
                key: None,
            });
        }
        let key = key(ip);
        if let Some(rate) = &self.rate
            && self.admits.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1
        {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.get(&key).copied().unwrap_or(0);
        if self.max_concurrent.is_some_and(|max| count >= max) {
            return Err(Refused::Concurrent);
        }
        if let Some(rate) = &self.rate
            && rate.check_key(&key).is_err()
        {
            return Err(Refused::Rate);
        }
        open.insert(key, count + 1);
        Ok(Slot {
            limits: self.clone(),
            key: Some(key),
        })
    }

    /// Addresses (or /64s) with a connection open: bounded by the open connections.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(key(ip("2001:db8:1:2::1")), key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(key(ip("2001:db8:1:2::1")), key(ip("2001:db8:1:3::1")));
        assert_eq!(key(ip("::ffff:192.0.2.1")), key(ip("192.0.2.1")));
        assert_ne!(key(ip("192.0.2.1")), key(ip("192.0.2.2")));
    }

    #[test]
    fn concurrent_limit_counts_open_connections() {
        let l = PerIp::new(2, 0, vec![]);
        let a = l.admit(ip("2001:db8::1")).unwrap();
        let _b = l.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(
            l.admit(ip("2001:db8::3")).err(),
            Some(Refused::Concurrent),
            "same /64"
        );
        assert!(l.admit(ip("2001:db8:0:1::1")).is_ok(), "another /64");
        drop(a);
        assert!(l.admit(ip("2001:db8::3")).is_ok(), "released on drop");
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn rate_limit_refuses_after_the_burst() {
        let l = PerIp::new(0, 3, vec![]);
        for _ in 0..3 {
            drop(l.admit(ip("192.0.2.1")).unwrap());
        }
        assert_eq!(l.admit(ip("192.0.2.1")).err(), Some(Refused::Rate));
        let _other = l.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(l.tracked(), 1, "refusals hold no count");
    }

    #[test]
    fn exempt_networks_are_not_limited() {
        let l = PerIp::new(1, 1, vec!["127.0.0.1/32".parse().unwrap()]);
        let _held: Vec<Slot> = (0..5)
            .map(|_| l.admit(ip("::ffff:127.0.0.1")).unwrap())
            .collect();
        let _a = l.admit(ip("127.0.0.2")).unwrap();
        assert!(l.admit(ip("127.0.0.2")).is_err());
    }
}
