//! A webhook receiver on loopback: accepts HTTP POSTs and keeps their JSON bodies, or (with
//! [`WebhookReceiver::dead`]) accepts connections and never answers, like a hung endpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The receiver; it stops when the test process ends.
pub struct WebhookReceiver {
    url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl WebhookReceiver {
    /// Answers every POST with 200 and records its body.
    pub fn start() -> anyhow::Result<WebhookReceiver> {
        Self::spawn(false)
    }

    /// Accepts connections and never answers.
    pub fn dead() -> anyhow::Result<WebhookReceiver> {
        Self::spawn(true)
    }

    fn spawn(dead: bool) -> anyhow::Result<WebhookReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let keep = bodies.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().map_while(Result::ok) {
                if dead {
                    held.push(conn);
                    continue;
                }
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(match conn.try_clone() {
                        Ok(c) => c,
                        Err(_) => return,
                    });
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len.min(1 << 20)];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(v) = serde_json::from_slice(&body) {
                        if let Ok(mut b) = keep.lock() {
                            b.push(v);
                        }
                    }
                    let mut conn = conn;
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Ok(WebhookReceiver { url, bodies })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bodies received so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Waits (at most `timeout`) for a body whose `gatehouse.event` is `event`.
    pub fn wait_for(&self, event: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self
                .bodies()
                .into_iter()
                .find(|b| b["gatehouse"]["event"] == event)
            {
                return Ok(b);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "no `{event}` notification within {timeout:?}; got {:?}",
                    self.bodies()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
