//! Notifications to a team channel: a Slack-compatible JSON payload (`text`, plus the event in
//! `gatehouse`) POSTed to `access.webhook_url`.
//!
//! Fire and forget: notifications go through a bounded queue to one sender task with a
//! timeout per POST. A slow or dead webhook loses notifications (logged), never blocks or
//! fails an access operation; the audit log, not the webhook, is the record.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

/// Notifications waiting for the sender; beyond this they are dropped (and logged).
const QUEUE: usize = 1024;

/// A handle to the webhook sender; cheap to clone. Without a URL it does nothing.
#[derive(Clone, Debug, Default)]
pub struct Webhook {
    tx: Option<mpsc::Sender<serde_json::Value>>,
}

impl Webhook {
    /// Starts the sender task for `url`.
    pub fn spawn(url: Option<String>, timeout: Duration) -> Webhook {
        let Some(url) = url else {
            return Webhook { tx: None };
        };
        let client = match reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot build the webhook client; notifications are off");
                return Webhook { tx: None };
            }
        };
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
        tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                match client.post(&url).json(&payload).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => warn!(status = %r.status(), "the webhook refused a notification"),
                    Err(e) => warn!(error = %e, "cannot deliver a notification to the webhook"),
                }
            }
        });
        Webhook { tx: Some(tx) }
    }

    /// Queues a notification: `text` for people, `data` for machines.
    pub fn notify(&self, event: &str, text: String, data: serde_json::Value) {
        let Some(tx) = &self.tx else {
            return;
        };
        let payload = serde_json::json!({
            "text": text,
            "gatehouse": { "event": event, "ts": crate::audit::event::now_ts(), "data": data },
        });
        if tx.try_send(payload).is_err() {
            warn!(
                event,
                "the webhook queue is full; a notification was dropped"
            );
        }
    }
}
