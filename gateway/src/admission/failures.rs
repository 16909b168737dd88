//! Unauthenticated failures, counted per source address and class of failure (a forged
//! signature, an expired token, a malformed startup packet, a connection over the limits, ...):
//! the first few of each window are audit events of their own, the rest are counted and
//! written as one summary event per source, class and window. A flood of forged credentials
//! or refused connections then costs the log a handful of rows, not one commit each, and the
//! evidence (who, how many, what was wrong) remains.
//!
//! While the store is over its quota ([`crate::capacity`]), [`Failures::set_shedding`] makes
//! every failure a count: only the summaries are written.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::EventKind;

/// Failures from one source recorded one by one per window.
pub const PER_WINDOW: u32 = 5;
/// The window over which the rest are counted.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Sources tracked at once; beyond, failures are counted under `0.0.0.0` ("many sources").
const MAX_SOURCES: usize = 4096;

struct Window {
    kind: EventKind,
    started: Instant,
    recorded: u32,
    suppressed: u64,
    last_reason: String,
}

/// A window's failures that were counted rather than recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The kind of the events it stands for.
    pub kind: EventKind,
    pub class: String,
    pub source: IpAddr,
    pub count: u64,
    pub last_reason: String,
    pub over: Duration,
}

#[derive(Default)]
pub struct Failures {
    windows: Mutex<HashMap<(IpAddr, String), Window>>,
    shedding: AtomicBool,
}

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, String), Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every failure is only counted (the store is over its quota).
    pub fn set_shedding(&self, on: bool) {
        self.shedding.store(on, Ordering::Relaxed);
    }

    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Notes a failure of `class` (events of `kind`) from `source`; true when it is to be
    /// recorded as an event of its own.
    pub fn note(&self, kind: EventKind, source: IpAddr, class: &str, reason: &str) -> bool {
        let shedding = self.shedding();
        let mut map = self.lock();
        let wanted = (source, class.to_string());
        let key = if map.len() >= MAX_SOURCES && !map.contains_key(&wanted) {
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), String::new())
        } else {
            wanted
        };
        let own = key.0 == source;
        let w = map.entry(key).or_insert_with(|| Window {
            kind,
            started: Instant::now(),
            recorded: 0,
            suppressed: 0,
            last_reason: String::new(),
        });
        if w.recorded < PER_WINDOW && own && !shedding {
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
        self.lock().retain(|(source, class), w| {
            if w.started.elapsed() < age {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Summary {
                    kind: w.kind,
                    class: class.clone(),
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

    const AUTH: EventKind = EventKind::AuthFailed;

    #[test]
    fn a_flood_is_a_few_events_and_a_count() {
        let f = Failures::default();
        let flood: IpAddr = "10.0.0.66".parse().unwrap();
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        let recorded = (0..1000)
            .filter(|_| f.note(AUTH, flood, "signature", "bad signature"))
            .count();
        assert_eq!(recorded, PER_WINDOW as usize);
        assert!(
            f.note(AUTH, flood, "expired", "token expired"),
            "another kind of failure is recorded as usual"
        );
        assert!(
            f.note(AUTH, other, "signature", "bad signature"),
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
        assert_eq!((s[0].kind, s[0].class.as_str()), (AUTH, "signature"));
        assert!(f.drain().is_empty());
        assert!(
            f.note(AUTH, flood, "signature", "bad signature"),
            "a new window records again"
        );
    }

    #[test]
    fn shedding_counts_everything_and_still_summarises() {
        let f = Failures::default();
        let src: IpAddr = "10.0.0.9".parse().unwrap();
        let conn = EventKind::ConnectionRefused;
        assert!(f.note(conn, src, "malformed", "bad startup"));
        f.set_shedding(true);
        assert!(!f.note(conn, src, "malformed", "bad startup"));
        assert!(
            !f.note(AUTH, src, "signature", "bad signature"),
            "a fresh class too"
        );
        f.set_shedding(false);
        for w in f.lock().values_mut() {
            w.started -= WINDOW;
        }
        let mut s = f.drain();
        s.sort_by(|a, b| a.class.cmp(&b.class));
        let counts: Vec<_> = s
            .iter()
            .map(|s| (s.kind, s.class.as_str(), s.count))
            .collect();
        assert_eq!(counts, [(conn, "malformed", 1), (AUTH, "signature", 1)]);
    }
}
