//! Short-lived, single-use state of logins in progress: authorization requests waiting for
//! their callback, one-time codes waiting for the CLI, device logins waiting for the person.
//!
//! Held in memory, bounded in count and age. Keys are random 256-bit strings handed to exactly
//! one party; the map stores only their SHA-256, so a memory dump does not yield usable codes.
//!
//! A flood cannot lock others out: each source address holds at most [`PER_SOURCE`] entries
//! (more are refused, before any work is done for them), and when the map is full the oldest
//! entry makes room rather than the new one being refused.
//! A gateway restart forgets logins in progress (the person starts again); with several
//! replicas the load balancer must keep a login on one replica (sticky by cookie or source).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;

/// Live entries one source address may hold in one map.
pub const PER_SOURCE: usize = 64;

/// The source holds [`PER_SOURCE`] logins in progress already; this one is refused.
#[derive(Debug, thiserror::Error)]
#[error("too many logins in progress from this address; finish or wait for one to expire")]
pub struct Full;

struct Entry<V> {
    at: Instant,
    source: IpAddr,
    value: V,
}

/// A bounded map from secret keys to values that expire after `ttl`.
pub struct Pending<V> {
    entries: Mutex<HashMap<[u8; 32], Entry<V>>>,
    ttl: Duration,
    capacity: usize,
}

fn digest(key: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A fresh random key: 32 bytes, URL-safe base64.
pub fn random_key() -> String {
    B64URL.encode(gatehouse_core::random::random_bytes::<32>())
}

impl<V> Pending<V> {
    pub fn new(ttl: Duration, capacity: usize) -> Pending<V> {
        Pending {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry<V>>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `source` may start another one (ask before doing work for it).
    pub fn has_room_for(&self, source: IpAddr) -> bool {
        let ttl = self.ttl;
        self.lock()
            .values()
            .filter(|e| e.source == source && e.at.elapsed() < ttl)
            .count()
            < PER_SOURCE
    }

    /// Stores `value` under `key` for `source`. Refused when `source` holds [`PER_SOURCE`]
    /// live entries; when the map is full, expired entries go, then the oldest.
    pub fn insert(&self, key: &str, value: V, source: IpAddr) -> Result<(), Full> {
        let mut map = self.lock();
        let ttl = self.ttl;
        let mine = map
            .values()
            .filter(|e| e.source == source && e.at.elapsed() < ttl)
            .count();
        if mine >= PER_SOURCE {
            return Err(Full);
        }
        if map.len() >= self.capacity {
            map.retain(|_, e| e.at.elapsed() < ttl);
        }
        if map.len() >= self.capacity {
            let oldest = map.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            digest(key),
            Entry {
                at: Instant::now(),
                source,
                value,
            },
        );
        Ok(())
    }

    /// Removes and returns the value under `key` if it has not expired: single use.
    pub fn take(&self, key: &str) -> Option<V> {
        let e = self.lock().remove(&digest(key))?;
        (e.at.elapsed() < self.ttl).then_some(e.value)
    }

    /// Runs `f` on the live value under `key`; `f` returns whether to keep it.
    pub fn update<R>(&self, key: &str, f: impl FnOnce(&mut V) -> (bool, R)) -> Option<R> {
        let mut map = self.lock();
        let k = digest(key);
        let e = map.get_mut(&k)?;
        if e.at.elapsed() >= self.ttl {
            map.remove(&k);
            return None;
        }
        let (keep, r) = f(&mut e.value);
        if !keep {
            map.remove(&k);
        }
        Some(r)
    }

    /// Finds the first live value matching `pred` and runs `f` on it.
    pub fn find_update<R>(
        &self,
        pred: impl Fn(&V) -> bool,
        f: impl FnOnce(&mut V) -> R,
    ) -> Option<R> {
        let mut map = self.lock();
        let ttl = self.ttl;
        map.values_mut()
            .find(|e| e.at.elapsed() < ttl && pred(&e.value))
            .map(|e| f(&mut e.value))
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn single_use_bounded_and_expiring() {
        let src: IpAddr = "10.0.0.1".parse().unwrap();
        let p = Pending::new(Duration::from_millis(200), 2);
        let (a, b, c) = (random_key(), random_key(), random_key());
        assert_eq!(a.len(), 43);
        p.insert(&a, 1, src).unwrap();
        p.insert(&b, 2, src).unwrap();
        // Full: the oldest makes room.
        p.insert(&c, 3, src).unwrap();
        assert_eq!(p.take(&a), None, "evicted");
        assert_eq!(p.take(&b), Some(2));
        assert_eq!(p.take(&b), None, "single use");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(p.take(&c), None, "expired");
        p.insert(&c, 3, src).unwrap();
        assert_eq!(p.update(&c, |v| (true, *v)), Some(3));
        assert_eq!(p.update(&c, |v| (false, *v)), Some(3));
        assert_eq!(p.take(&c), None);
    }

    #[test]
    fn one_source_cannot_take_the_map_from_others() {
        let flood: IpAddr = "10.0.0.66".parse().unwrap();
        let person: IpAddr = "10.0.0.7".parse().unwrap();
        let p = Pending::new(Duration::from_secs(600), 1000);
        for _ in 0..PER_SOURCE {
            p.insert(&random_key(), (), flood).unwrap();
        }
        assert!(!p.has_room_for(flood));
        assert!(p.insert(&random_key(), (), flood).is_err());
        assert!(p.has_room_for(person));
        let k = random_key();
        p.insert(&k, (), person).unwrap();
        assert_eq!(p.take(&k), Some(()));
    }
}
