//! Short-lived, single-use state of logins in progress: authorization requests waiting for
//! their callback, one-time codes waiting for the CLI, device logins waiting for the person.
//!
//! Held in memory, bounded in count and age. Keys are random 256-bit strings handed to exactly
//! one party; the map stores only their SHA-256, so a memory dump does not yield usable codes.
//! A gateway restart forgets logins in progress (the person starts again); with several
//! replicas the load balancer must keep a login on one replica (sticky by cookie or source).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;

/// The map is full: too many logins in progress (a flood); the request is refused.
#[derive(Debug, thiserror::Error)]
#[error("too many logins in progress; try again shortly")]
pub struct Full;

/// A bounded map from secret keys to values that expire after `ttl`.
pub struct Pending<V> {
    entries: Mutex<HashMap<[u8; 32], (Instant, V)>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Instant, V)>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Stores `value` under `key`.
    pub fn insert(&self, key: &str, value: V) -> Result<(), Full> {
        let mut map = self.lock();
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= self.capacity {
                return Err(Full);
            }
        }
        map.insert(digest(key), (Instant::now(), value));
        Ok(())
    }

    /// Removes and returns the value under `key` if it has not expired: single use.
    pub fn take(&self, key: &str) -> Option<V> {
        let (at, v) = self.lock().remove(&digest(key))?;
        (at.elapsed() < self.ttl).then_some(v)
    }

    /// Runs `f` on the live value under `key`; `f` returns whether to keep it.
    pub fn update<R>(&self, key: &str, f: impl FnOnce(&mut V) -> (bool, R)) -> Option<R> {
        let mut map = self.lock();
        let k = digest(key);
        let (at, v) = map.get_mut(&k)?;
        if at.elapsed() >= self.ttl {
            map.remove(&k);
            return None;
        }
        let (keep, r) = f(v);
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
            .find(|(at, v)| at.elapsed() < ttl && pred(v))
            .map(|(_, v)| f(v))
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
        let p = Pending::new(Duration::from_millis(200), 2);
        let (a, b, c) = (random_key(), random_key(), random_key());
        assert_eq!(a.len(), 43);
        p.insert(&a, 1).unwrap();
        p.insert(&b, 2).unwrap();
        assert!(p.insert(&c, 3).is_err(), "full");
        assert_eq!(p.take(&a), Some(1));
        assert_eq!(p.take(&a), None, "single use");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(p.take(&b), None, "expired");
        p.insert(&c, 3).unwrap();
        assert_eq!(p.update(&c, |v| (true, *v)), Some(3));
        assert_eq!(p.update(&c, |v| (false, *v)), Some(3));
        assert_eq!(p.take(&c), None);
    }
}
