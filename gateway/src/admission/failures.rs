//! Unauthenticated failures, counted per source address and kind of failure (a forged
//! signature, an expired token, ...): the first few of each window are audit events of their
//! own, the rest are counted and written as one summary event per source, kind and window. A flood of forged credentials then costs the log a handful of rows, not
//! one durable commit each, and the evidence (who, how many, what was wrong) remains.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures from one source recorded one by one per window.
pub const PER_WINDOW: u32 = 5;
/// The window over which the rest are counted.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Sources tracked at once; beyond, failures are counted under `0.0.0.0` ("many sources").
const MAX_SOURCES: usize = 4096;

struct Window {
    started: Instant,
    recorded: u32,
    suppressed: u64,
    last_reason: String,
}

/// A window's failures that were counted rather than recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub source: IpAddr,
    pub count: u64,
    pub last_reason: String,
    pub over: Duration,
}

#[derive(Default)]
pub struct Failures {
    windows: Mutex<HashMap<(IpAddr, String), Window>>,
}

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, String), Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a failure of kind `class` from `source`; true when it is to be recorded as an
    /// event of its own.
    pub fn note(&self, source: IpAddr, class: &str, reason: &str) -> bool {
        let mut map = self.lock();
        let wanted = (source, class.to_string());
        let key = if map.len() >= MAX_SOURCES && !map.contains_key(&wanted) {
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), String::new())
        } else {
            wanted
        };
        let own = key.0 == source;
        let w = map.entry(key).or_insert_with(|| Window {
            started: Instant::now(),
            recorded: 0,
            suppressed: 0,
            last_reason: String::new(),
        });
        if w.recorded < PER_WINDOW && own {
            w.recorded += 1;
            return true;
        }
        w.suppressed += 1;
        if w.last_reason != reason {
            w.last_reason = reason.chars().take(200).collect();
        }
        false
    }

    /// Ends the windows older than [`WINDOW`]; the counted failures of each, to be recorded.
    pub fn drain(&self) -> Vec<Summary> {
        self.drain_older_than(WINDOW)
    }

    /// Ends every window (shutdown).
    pub fn drain_all(&self) -> Vec<Summary> {
        self.drain_older_than(Duration::ZERO)
    }

    fn drain_older_than(&self, age: Duration) -> Vec<Summary> {
        let mut out = Vec::new();
        self.lock().retain(|(source, _), w| {
            if w.started.elapsed() < age {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Summary {
                    source: *source,
                    count: w.suppressed,
                    last_reason: std::mem::take(&mut w.last_reason),
                    over: w.started.elapsed(),
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_a_few_events_and_a_count() {
        let f = Failures::default();
        let flood: IpAddr = "10.0.0.66".parse().unwrap();
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        let recorded = (0..1000)
            .filter(|_| f.note(flood, "signature", "bad signature"))
            .count();
        assert_eq!(recorded, PER_WINDOW as usize);
        assert!(
            f.note(flood, "expired", "token expired"),
            "another kind of failure is recorded as usual"
        );
        assert!(
            f.note(other, "signature", "bad signature"),
            "another source is recorded as usual"
        );
        assert!(f.drain().is_empty(), "the window is still open");
        // Age the windows and drain.
        for w in f.lock().values_mut() {
            w.started -= WINDOW;
        }
        let s = f.drain();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].source, s[0].count), (flood, 1000 - PER_WINDOW as u64));
        assert_eq!(s[0].last_reason, "bad signature");
        assert!(f.drain().is_empty());
        assert!(
            f.note(flood, "signature", "bad signature"),
            "a new window records again"
        );
    }
}
