//! What the store may grow to. Every `[store] capacity_check_interval` the gateway reads the
//! store's size ([`Store::size_bytes`]) against `[store] quota_bytes`:
//!
//! - at `alert_percent` of the quota it warns in its log and records `store.capacity` (level
//!   `alert`), so that an operator adds room or archives before anything is lost;
//! - over the quota it also records `store.capacity` (level `over_quota`) and sheds what an
//!   unauthenticated client can make it write: failed credentials, refused connections and
//!   failed sign-ins are only counted ([`Failures::set_shedding`]; one summary per source
//!   and window remains). What people with access do (decisions, sessions, statements) is
//!   still recorded; if the disk itself fills, those fail closed as before;
//! - back under the alert level it records level `ok`.
//!
//! Only changes of level are events; the log line repeats every ten checks while the store is
//! above the alert level.

use std::sync::Arc;

use tracing::{info, warn};

use crate::admission::failures::Failures;
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::config::StoreCapacity;
use crate::store::Store;

/// Where the store's size stands against its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Alert,
    OverQuota,
}

impl Level {
    pub fn of(size: u64, cap: &StoreCapacity) -> Level {
        let alert_at = (cap.quota_bytes as u128 * cap.alert_percent as u128 / 100) as u64;
        if size >= cap.quota_bytes {
            Level::OverQuota
        } else if size >= alert_at {
            Level::Alert
        } else {
            Level::Ok
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Alert => "alert",
            Level::OverQuota => "over_quota",
        }
    }
}

/// Watches the store's size until aborted.
pub async fn watch(store: Store, audit: AuditLog, failures: Arc<Failures>, cap: StoreCapacity) {
    let mut level = Level::Ok;
    let mut checks = 0u64;
    let mut ticker = tokio::time::interval(cap.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let size = match store.size_bytes().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the store's size");
                continue;
            }
        };
        let now = Level::of(size, &cap);
        failures.set_shedding(now == Level::OverQuota);
        checks += 1;
        if now != Level::Ok && (now != level || checks.is_multiple_of(10)) {
            warn!(
                size_bytes = size,
                quota_bytes = cap.quota_bytes,
                level = now.as_str(),
                "{}",
                message(now)
            );
        }
        if now == level {
            continue;
        }
        if now == Level::Ok {
            info!(size_bytes = size, "the store is back under its alert level");
        }
        let mut e = NewEvent::new(EventKind::StoreCapacity);
        e.actor = "gatehouse".into();
        e.action = "capacity".into();
        e.reason = message(now).into();
        e.detail = serde_json::json!({
            "level": now.as_str(),
            "previous": level.as_str(),
            "size_bytes": size,
            "quota_bytes": cap.quota_bytes,
            "alert_percent": cap.alert_percent,
        });
        let _ = audit.record(e).await;
        level = now;
    }
}

fn message(level: Level) -> &'static str {
    match level {
        Level::Ok => "the store is under its alert level",
        Level::Alert => {
            "the store is near its quota ([store] quota_bytes): add room or archive the audit log"
        }
        Level::OverQuota => {
            "the store is over its quota ([store] quota_bytes): unauthenticated failures are only counted until there is room"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn levels() {
        let cap = StoreCapacity {
            quota_bytes: 1000,
            alert_percent: 80,
            check_interval: Duration::from_secs(1),
        };
        assert_eq!(Level::of(0, &cap), Level::Ok);
        assert_eq!(Level::of(799, &cap), Level::Ok);
        assert_eq!(Level::of(800, &cap), Level::Alert);
        assert_eq!(Level::of(999, &cap), Level::Alert);
        assert_eq!(Level::of(1000, &cap), Level::OverQuota);
        let huge = StoreCapacity {
            quota_bytes: u64::MAX >> 1,
            alert_percent: 100,
            ..cap
        };
        assert_eq!(Level::of(u64::MAX >> 2, &huge), Level::Ok);
    }
}
