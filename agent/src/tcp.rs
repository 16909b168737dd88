//! Generic TCP resources (`kind = "tcp"`): dial the target and relay bytes both ways, counting
//! them, until either side closes or the gateway ends the session. Nothing is parsed: what the
//! log holds of a TCP session is who, where, when, how long and how many bytes each way.

use std::time::{Duration, Instant};

use gatehouse_core::session::{EndReason, SessionSummary};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bytes read per copy step.
const CHUNK: usize = 16 * 1024;

/// Where to connect.
#[derive(Clone, Debug)]
pub struct TcpTarget {
    /// `host:port`.
    pub address: String,
    pub connect_timeout: Duration,
}

/// Why the target could not be reached. Safe to show to clients: no address in the text.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("cannot reach the resource: {0}")]
    Unreachable(std::io::Error),
    #[error("the resource did not answer within the connect timeout")]
    Timeout,
}

/// Dials the target.
pub async fn connect(target: &TcpTarget) -> Result<TcpStream, TcpError> {
    let tcp = tokio::time::timeout(target.connect_timeout, TcpStream::connect(&target.address))
        .await
        .map_err(|_| TcpError::Timeout)?
        .map_err(TcpError::Unreachable)?;
    tcp.set_nodelay(true).ok();
    Ok(tcp)
}

/// Copies both ways until one side closes, an I/O error, or `kill` says why the gateway ends
/// the session. Half-closes are passed on: a client that shuts down its sending side (as
/// `redis-cli` does after a piped command) still gets the rest of the answer.
pub async fn relay<U, C>(
    upstream: U,
    client: C,
    kill: watch::Receiver<Option<String>>,
) -> SessionSummary
where
    U: AsyncRead + AsyncWrite + Send + Unpin,
    C: AsyncRead + AsyncWrite + Send + Unpin,
{
    splice(upstream, client, kill, |_| async {}, Duration::ZERO).await
}

/// [`relay`], for a far side that ends sessions itself: on a kill, `on_kill` asks it to (a
/// remote agent tells the client why in the session's protocol and closes), and the bytes keep
/// flowing for up to `grace` so that its last words reach the client before the cut.
pub async fn splice<U, C, F, Fut>(
    upstream: U,
    client: C,
    mut kill: watch::Receiver<Option<String>>,
    on_kill: F,
    grace: Duration,
) -> SessionSummary
where
    U: AsyncRead + AsyncWrite + Send + Unpin,
    C: AsyncRead + AsyncWrite + Send + Unpin,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    let mut from_client = 0u64;
    let mut to_client = 0u64;
    let reason = {
        let c2u = copy_then_shutdown(&mut client_rd, &mut up_wr, &mut from_client);
        let u2c = copy_then_shutdown(&mut up_rd, &mut client_wr, &mut to_client);
        let both = async {
            tokio::pin!(c2u);
            tokio::pin!(u2c);
            // The session ends when the upstream is done sending (after the client's half
            // close) or on the first error either way.
            let mut client_done = false;
            loop {
                tokio::select! {
                    r = &mut c2u, if !client_done => match r {
                        Ok(()) => client_done = true,
                        Err(e) => return EndReason::IoError(e.to_string()),
                    },
                    r = &mut u2c => return match r {
                        Ok(()) if client_done => EndReason::ClientClosed,
                        Ok(()) => EndReason::UpstreamClosed,
                        Err(e) => EndReason::IoError(e.to_string()),
                    },
                }
            }
        };
        tokio::pin!(both);
        let killed = crate::killed(&mut kill);
        tokio::select! {
            r = &mut both => r,
            why = killed => {
                if !grace.is_zero() {
                    let last_words = async {
                        tokio::join!(on_kill(why.clone()), &mut both);
                    };
                    let _ = tokio::time::timeout(grace, last_words).await;
                }
                EndReason::Killed(why)
            }
        }
    };
    let _ = client_wr.shutdown().await;
    let _ = up_wr.shutdown().await;
    SessionSummary {
        bytes_from_client: from_client,
        bytes_to_client: to_client,
        statements: 0,
        duration_ms: started.elapsed().as_millis() as u64,
        client_terminated: matches!(reason, EndReason::ClientClosed),
        reason,
    }
}

async fn copy_then_shutdown<R, W>(rd: &mut R, wr: &mut W, count: &mut u64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            wr.shutdown().await?;
            return Ok(());
        }
        wr.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_through_a_half_close_and_counts() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let (_kill, kill_rx) = watch::channel(None);
        let relay = tokio::spawn(relay(upstream, client, kill_rx));
        client_peer.write_all(b"PING\r\n").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = [0u8; 6];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PING\r\n");
        upstream_peer.write_all(b"+PONG\r\n").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_peer.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"+PONG\r\n");
        let summary = relay.await.unwrap();
        assert_eq!(summary.bytes_from_client, 6);
        assert_eq!(summary.bytes_to_client, 7);
        assert_eq!(summary.reason, EndReason::ClientClosed);
    }

    #[tokio::test]
    async fn the_kill_switch_ends_the_session_with_its_reason() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let (kill, kill_rx) = watch::channel(None);
        let relay = tokio::spawn(relay(upstream, client, kill_rx));
        kill.send_replace(Some("grant 7 was revoked".into()));
        let summary = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            summary.reason,
            EndReason::Killed("grant 7 was revoked".into())
        );
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_splice_lets_the_far_side_say_its_last_words_after_a_kill() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut far_side) = tokio::io::duplex(64);
        let (kill, kill_rx) = watch::channel(None);
        let (asked_tx, asked) = tokio::sync::oneshot::channel::<String>();
        let relay = tokio::spawn(splice(
            upstream,
            client,
            kill_rx,
            move |why| async move {
                let _ = asked_tx.send(why);
            },
            Duration::from_secs(5),
        ));
        kill.send_replace(Some("user bob was disabled".into()));
        // The far side hears why, writes its goodbye and closes; the client gets all of it.
        assert_eq!(asked.await.unwrap(), "user bob was disabled");
        far_side.write_all(b"goodbye: disabled").await.unwrap();
        far_side.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"goodbye: disabled");
        let summary = relay.await.unwrap();
        assert_eq!(
            summary.reason,
            EndReason::Killed("user bob was disabled".into())
        );
        assert_eq!(summary.bytes_to_client, 17);
    }

    #[tokio::test]
    async fn a_far_side_that_ignores_a_kill_is_cut_after_the_grace() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, _far_side) = tokio::io::duplex(64);
        let (kill, kill_rx) = watch::channel(None);
        let relay = tokio::spawn(splice(
            upstream,
            client,
            kill_rx,
            |_| async {},
            Duration::from_millis(200),
        ));
        kill.send_replace(Some("expired".into()));
        let summary = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary.reason, EndReason::Killed("expired".into()));
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
