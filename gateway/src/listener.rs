//! The one accept loop every listener runs: the PostgreSQL front door, the HTTPS listener and
//! the agent listener are each a [`Door`] served by [`serve`].
//!
//! The loop owns what every protocol needs the same way and must not get subtly different:
//! - a limit on connections in all, and a smaller one on connections that have not yet
//!   authenticated, so idle or slow sockets cannot take the slots authenticated sessions need;
//! - a per-source limit on unauthenticated connections, so one address cannot hold them all;
//! - a deadline for the pre-authentication phase (the door says when it is over by calling
//!   [`Conn::authenticated`]; a connection still unauthenticated at the deadline is dropped);
//! - back-off on accept errors (EMFILE), a rate-limited "limit reached" log line, a span per
//!   connection with the client's address;
//! - on shutdown: stop accepting and return the number of connections still open (the caller
//!   ends sessions through the registry and waits for their end events).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

/// A connection future, boxed so that doors of different protocols share one loop.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One protocol's listener: what it does with a connection the loop accepted.
pub trait Door: Send + Sync + 'static {
    /// A short name for logs and spans: `postgres`, `https`, `agents`.
    fn name(&self) -> &'static str;

    /// Serves one connection to its end. Call [`Conn::authenticated`] once the peer proved who
    /// it is; until then the connection counts against the pre-authentication limits and
    /// deadline.
    fn serve(self: Arc<Self>, conn: Conn) -> Serving;

    /// Tells a client refused at a limit why, if the protocol has a way (PostgreSQL sends an
    /// ErrorResponse); the default closes the socket.
    fn refuse(self: Arc<Self>, tcp: TcpStream, why: Refused) -> Serving {
        let _ = (tcp, why);
        Box::pin(async {})
    }

    /// Counts a connection the loop refused (`class` `limit`) or ended at the
    /// pre-authentication deadline (`deadline`), for the audit log; never waits. The default
    /// counts nothing (the log line is all).
    fn count_refusal(&self, peer: SocketAddr, class: &'static str, reason: &str) {
        let _ = (peer, class, reason);
    }

    /// Logs a failed TLS handshake and counts it ([`count_refusal`](Self::count_refusal),
    /// class `handshake`), unless the client closed without a word (a health check).
    fn tls_failed(&self, peer: SocketAddr, e: &std::io::Error) {
        info!(listener = self.name(), error = %e, "TLS handshake failed");
        if e.kind() != std::io::ErrorKind::UnexpectedEof {
            self.count_refusal(peer, "handshake", &format!("TLS handshake failed: {e}"));
        }
    }
}

/// Why the loop refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every connection slot is taken.
    Full,
    /// The unauthenticated slots are taken (sessions that authenticated are not affected).
    Unauthenticated,
    /// This source address holds its share of unauthenticated connections.
    PerSource,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Full => "too many connections to the gateway",
            Refused::Unauthenticated => {
                "too many connections to the gateway are still signing in; try again shortly"
            }
            Refused::PerSource => {
                "too many connections from your address are still signing in; try again shortly"
            }
        }
    }
}

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, authenticated or not.
    pub max_connections: usize,
    /// Of those, connections that have not authenticated yet.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections per source address.
    pub per_source: usize,
    /// How long a connection may stay unauthenticated.
    pub auth_deadline: Duration,
}

impl Limits {
    /// `max_connections` in all; at most half of them (and at most 64 per source) may be
    /// unauthenticated, each for at most `auth_deadline`.
    pub fn new(max_connections: usize, auth_deadline: Duration) -> Limits {
        let max_connections = max_connections.max(1);
        Limits {
            max_connections,
            max_unauthenticated: (max_connections / 2).max(1),
            per_source: (max_connections / 8).clamp(1, 64),
            auth_deadline,
        }
    }
}

/// Counts shared by the loop and its connections.
struct Counts {
    limits: Limits,
    open: AtomicUsize,
    unauthenticated: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// When a "limit reached" line was last logged (ms since `epoch`) and how many were not.
    last_warned_ms: AtomicU64,
    suppressed: AtomicU64,
    epoch: Instant,
    /// Refusals being written (a TLS handshake and an error message each); past
    /// [`MAX_REFUSING`] a refused socket is closed without a word.
    refusing: Arc<AtomicUsize>,
}

/// Refusals written at once; a flood beyond this is closed at once instead.
const MAX_REFUSING: usize = 64;

impl Counts {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Conn, Refused> {
        let l = self.limits;
        if self.open.fetch_add(1, Ordering::AcqRel) >= l.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        if self.unauthenticated.fetch_add(1, Ordering::AcqRel) >= l.max_unauthenticated {
            self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Unauthenticated);
        }
        {
            let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= l.per_source {
                drop(map);
                self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerSource);
            }
            *n += 1;
        }
        let (done, authenticated) = watch::channel(false);
        Ok(Conn {
            tcp: None,
            peer: SocketAddr::new(ip, 0),
            counts: self.clone(),
            pre_auth: true,
            done,
            authenticated_rx: authenticated,
        })
    }

    fn leave_pre_auth(&self, ip: IpAddr) {
        self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Logs a refusal at most once a second, saying how many were not logged in between.
    fn warn_refused(&self, door: &str, peer: SocketAddr, why: Refused) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000 && last != 0 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self
            .last_warned_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let more = self.suppressed.swap(0, Ordering::Relaxed);
        warn!(
            listener = door,
            client.addr = %peer,
            refused_since_last_line = more,
            "connection refused: {}",
            why.message()
        );
    }
}

/// An accepted connection and its place in the listener's limits (released on drop).
pub struct Conn {
    tcp: Option<TcpStream>,
    peer: SocketAddr,
    counts: Arc<Counts>,
    pre_auth: bool,
    done: watch::Sender<bool>,
    authenticated_rx: watch::Receiver<bool>,
}

impl Conn {
    /// The socket (once; the door owns it from then on).
    pub fn take_stream(&mut self) -> Option<TcpStream> {
        self.tcp.take()
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The peer has authenticated: the connection leaves the pre-authentication limits and
    /// its deadline no longer applies.
    pub fn authenticated(&mut self) {
        if self.pre_auth {
            self.pre_auth = false;
            self.counts.leave_pre_auth(self.peer.ip());
            self.done.send_replace(true);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.pre_auth {
            self.counts.leave_pre_auth(self.peer.ip());
        }
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many connections a listener holds, for shutdown.
#[derive(Clone)]
pub struct Open(Arc<Counts>);

impl Open {
    pub fn count(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }
}

/// Accepts connections for `door` until `shutdown` completes; returns the count of those
/// still open (they go on; the caller ends sessions through the registry).
pub async fn serve<D: Door>(
    listener: TcpListener,
    door: Arc<D>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Open {
    let counts = Arc::new(Counts {
        limits,
        open: AtomicUsize::new(0),
        unauthenticated: AtomicUsize::new(0),
        per_source: Mutex::new(HashMap::new()),
        last_warned_ms: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
        epoch: Instant::now(),
        refusing: Arc::new(AtomicUsize::new(0)),
    });
    let name = door.name();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Open(counts),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tcp.set_nodelay(true).ok();
        let span = tracing::info_span!(
            "conn",
            listener = name,
            client.addr = %peer,
            session.id = tracing::field::Empty,
            user = tracing::field::Empty,
        );
        match counts.admit(peer.ip()) {
            Ok(mut conn) => {
                conn.tcp = Some(tcp);
                conn.peer = peer;
                let mut authenticated = conn.authenticated_rx.clone();
                let deadline = limits.auth_deadline;
                let counting = door.clone();
                let serving = door.clone().serve(conn);
                tokio::spawn(
                    async move {
                        tokio::pin!(serving);
                        // The deadline ends a connection that has not authenticated in time;
                        // after that the door runs to its own end.
                        let timer = tokio::time::sleep(deadline);
                        tokio::pin!(timer);
                        let signed_in = async {
                            while !*authenticated.borrow_and_update() {
                                if authenticated.changed().await.is_err() {
                                    // The connection ended (its Conn dropped) unauthenticated.
                                    std::future::pending::<()>().await;
                                }
                            }
                        };
                        tokio::select! {
                            _ = &mut serving => return,
                            _ = &mut timer => {
                                info!("connection did not authenticate in time; closed");
                                counting.count_refusal(
                                    peer,
                                    "deadline",
                                    "the connection did not authenticate in time",
                                );
                                return;
                            }
                            _ = signed_in => {}
                        }
                        serving.await;
                    }
                    .instrument(span),
                );
            }
            Err(why) => {
                counts.warn_refused(name, peer, why);
                door.count_refusal(peer, "limit", why.message());
                let refusing = counts.refusing.clone();
                if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
                    refusing.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let refusal = door.clone().refuse(tcp, why);
                tokio::spawn(
                    async move {
                        let _ = tokio::time::timeout(limits.auth_deadline, refusal).await;
                        refusing.fetch_sub(1, Ordering::AcqRel);
                    }
                    .instrument(span),
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Echoes one line after "authenticating" on the byte `a`; refusals write `R` + reason.
    struct Echo;

    impl Door for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }

        fn serve(self: Arc<Self>, mut conn: Conn) -> Serving {
            Box::pin(async move {
                let Some(mut tcp) = conn.take_stream() else {
                    return;
                };
                let mut b = [0u8; 1];
                while tcp.read_exact(&mut b).await.is_ok() {
                    if b[0] == b'a' {
                        conn.authenticated();
                    }
                    if tcp.write_all(&b).await.is_err() {
                        return;
                    }
                }
            })
        }

        fn refuse(self: Arc<Self>, mut tcp: TcpStream, why: Refused) -> Serving {
            Box::pin(async move {
                let code = match why {
                    Refused::Full => b'F',
                    Refused::Unauthenticated => b'U',
                    Refused::PerSource => b'S',
                };
                let _ = tcp.write_all(&[b'R', code]).await;
                // Close gracefully: drain what the client sent, so no reset eats the answer.
                let _ = tcp.shutdown().await;
                let mut sink = [0u8; 16];
                let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut sink)).await;
            })
        }
    }

    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(l, Arc::new(Echo), limits, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Sends `b` and returns the first byte back (R for a refusal) and, for refusals, the code.
    async fn probe(s: &mut TcpStream, b: u8) -> Vec<u8> {
        s.write_all(&[b]).await.unwrap();
        let mut got = [0u8; 2];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        got[..n].to_vec()
    }

    #[tokio::test]
    async fn unauthenticated_sockets_cannot_take_the_slots_of_sessions() {
        let limits = Limits {
            max_connections: 4,
            max_unauthenticated: 2,
            per_source: 2,
            auth_deadline: Duration::from_secs(30),
        };
        let (addr, _stop) = start(limits).await;
        // Two sign in, two idle: the idle ones hold the unauthenticated slots.
        let mut a1 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut a1, b'a').await, b"a");
        let mut a2 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut a2, b'a').await, b"a");
        let mut idle1 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut idle1, b'x').await, b"x");
        let mut idle2 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut idle2, b'x').await, b"x");
        // All four slots are used: refused as full.
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut fifth, b'x').await, b"RF");
        // A signed-in session leaves: its slot is free, but not for a third idle socket.
        drop(a1);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let got = probe(&mut s, b'x').await;
            if got == b"RU" {
                break;
            }
            assert_eq!(got, b"RF", "a third unauthenticated socket got in");
            assert!(Instant::now() < deadline, "the freed slot never showed");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn one_source_gets_only_its_share_and_idle_sockets_meet_the_deadline() {
        let limits = Limits {
            max_connections: 16,
            max_unauthenticated: 8,
            per_source: 2,
            auth_deadline: Duration::from_millis(300),
        };
        let (addr, _stop) = start(limits).await;
        let mut s1 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut s1, b'x').await, b"x");
        let mut s2 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut s2, b'x').await, b"x");
        let mut s3 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(probe(&mut s3, b'x').await, b"RS");
        // The idle ones are closed at the deadline.
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), s1.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        // A connection that signed in outlives the deadline (the wait is the thing tested).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut signed = loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if probe(&mut s, b'a').await == b"a" {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the source's slots were never freed"
            );
            tokio::task::yield_now().await;
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(probe(&mut signed, b'y').await, b"y");
    }
}
