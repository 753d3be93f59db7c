//! Accept loop: one hyper HTTP/1 connection task per client, tracked for graceful
//! shutdown (stop accepting, let in-flight requests finish within a deadline; a connection
//! still open then is closed). The accept loop, connection and refusal tasks are spawned
//! through a handle on the gateway's tasks (`Gateway::tasks`). At most
//! `MAX_CONNECTIONS` connections are served at once (further ones wait in the listen
//! backlog), a client has `HEADER_READ_TIMEOUT_MS` to send its headers, and idle rate-limit
//! keys are evicted every [`limits::EVICT_INTERVAL`].
//!
//! Per client: a TCP peer IP already holding `MAX_CONNECTIONS_PER_IP` connections (peers in
//! `TRUSTED_PROXIES` are exempt: they carry many clients) gives its global slot back at
//! once; its new connection is answered `429 RATE_LIMITED` with `Retry-After` and closed,
//! by at most [`REFUSING_MAX`] small refusal tasks (beyond them it is closed unanswered).
//! Every request carries its connection's [`limits::ConnShare`], which `routes::handle`
//! counts under the caller once authenticated (`MAX_CONNECTIONS_PER_CLIENT`).
//!
//! Idle and stalled sockets are closed: a socket that sends no headers (or none after a
//! response) by the header read timeout, a body too slow by `handlers::read_body`, and a
//! client that stops reading once a write made no progress for `WRITE_STALL_TIMEOUT_MS`
//! ([`StallGuard`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::routes::{self, Ctx};
use super::{limits, reply};
use crate::error::Error;
use crate::scheduler::Tasks;
use crate::service::Gateway;

/// Longest wait for in-flight requests at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Connections being refused (answered 429 and closed) at once, at most; they hold no
/// slot of `MAX_CONNECTIONS`.
pub const REFUSING_MAX: usize = 64;

/// Longest time a refused connection has to send its request's headers.
const REFUSE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A running API server.
#[derive(Debug)]
pub struct Server {
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stop accepting, drain in-flight requests, and return.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

/// Serve the API for `gateway` on `listener` until [`Server::stop`] (or the gateway's
/// shutdown: the server's tasks are a child of the gateway's).
pub fn serve(listener: TcpListener, gateway: Gateway) -> std::io::Result<Server> {
    let local_addr = listener.local_addr()?;
    let tasks = gateway.tasks().child();
    let stop = tasks.token().clone();
    let ctx = Arc::new(Ctx::new(gateway, stop.clone())?);
    seed_job_cap(&ctx).map_err(|e| std::io::Error::other(e.message))?;
    let done = tasks.clone().spawn(async move { accept_loop(listener, ctx, tasks).await });
    Ok(Server { local_addr, stop, done })
}

/// With `MAX_JOBS_PER_CLIENT`, count the unfinished jobs of every owner found in the
/// store (an authenticated caller's client key is its owner id), so a restart does not
/// reset the counts. Jobs without an owner (open mode) cannot be attributed.
fn seed_job_cap(ctx: &Ctx) -> crate::error::Result<()> {
    let Some(cap) = &ctx.limits.jobs else { return Ok(()) };
    for (id, owner) in ctx.gateway.unfinished_owners()? {
        if let Some(owner) = &owner {
            cap.track(owner, id);
        }
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, tasks: Tasks) {
    let stop = tasks.token().clone();
    // Cancelled when the drain deadline passed: the connections still open are closed.
    let abandon = CancellationToken::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let header_read_timeout = ctx.gateway.config.api_limits.header_read_timeout;
    let write_stall = ctx.gateway.config.api_limits.write_stall_timeout;
    let connections = Arc::new(tokio::sync::Semaphore::new(ctx.gateway.config.api_limits.connections_max));
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING_MAX));
    let mut evict = tokio::time::interval(limits::EVICT_INTERVAL);
    evict.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = evict.tick() => {
                if let Some(rate) = &ctx.limits.rate {
                    rate.evict();
                }
                continue;
            }
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = evict.tick() => {
                if let Some(rate) = &ctx.limits.rate {
                    rate.evict();
                }
                continue;
            }
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // The connection cap per peer IP: the TCP peer, whatever `X-Forwarded-For` says.
        let trusted = ctx.limits.trusted_proxies.iter().any(|net| net.contains(&peer.ip()));
        let ip_hold = match trusted {
            true => None,
            false => match ctx.limits.connections_per_ip.hold(&peer.ip()) {
                Ok(hold) => Some(hold),
                Err(err) => {
                    tracing::debug!(peer = %peer.ip(), "a connection over MAX_CONNECTIONS_PER_IP is refused");
                    drop(permit);
                    refuse(&tasks, stream, err, &refusing, header_read_timeout);
                    continue;
                }
            },
        };
        let open = ctx.limits.connections.hold(&()).ok();
        let share = Arc::new(limits::ConnShare::default());
        let ctx = ctx.clone();
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let ctx = ctx.clone();
            req.extensions_mut().insert(share.clone());
            async move {
                // `handle` writes the access log line (with the correlation id).
                let resp = routes::handle(&ctx, peer, req).await;
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(StallGuard::new(stream, write_stall)), service);
        let conn = graceful.watch(conn);
        let abandon = abandon.clone();
        tasks.spawn(async move {
            tokio::select! {
                ended = conn => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = abandon.cancelled() => {}
            }
            drop((permit, ip_hold, open));
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown()).await.is_err() {
        tracing::warn!("some requests were still running at the shutdown deadline; their connections are closed");
        abandon.cancel();
    }
}

/// Answer every request on `stream` with `err` (a 429 with `Retry-After`) and close it;
/// closed at once when [`REFUSING_MAX`] refusals are already running.
fn refuse(
    tasks: &Tasks,
    stream: TcpStream,
    err: Error,
    refusing: &Arc<tokio::sync::Semaphore>,
    header_read_timeout: Duration,
) {
    let Ok(slot) = refusing.clone().try_acquire_owned() else { return };
    let err = Arc::new(err);
    let service = service_fn(move |_req| {
        let err = err.clone();
        async move {
            let mut resp = reply::error(&err, &uuid::Uuid::new_v4().simple().to_string());
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(header_read_timeout.min(REFUSE_READ_TIMEOUT))
        .serve_connection(TokioIo::new(stream), service);
    let stop = tasks.token().clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::timeout(REFUSE_READ_TIMEOUT * 2, conn) => {}
            _ = stop.cancelled() => {}
        }
        drop(slot);
    });
}

/// A socket whose writes fail (`TimedOut`) once they made no progress for `stall`: a
/// client that stops reading cannot hold its connection forever.
#[derive(Debug)]
pub struct StallGuard<S> {
    inner: S,
    stall: Duration,
    /// Started when a write found the socket full; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    /// Guard `inner`'s writes with `stall`.
    pub fn new(inner: S, stall: Duration) -> StallGuard<S> {
        StallGuard { inner, stall, stalled: None }
    }

    /// The socket made no progress: `TimedOut` once that lasted `stall`, else pending.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let stall = self.stall;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<std::io::Result<T>>, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connection is a task of the gateway's: counted while open, and the gateway's
    /// shutdown (after the server's) ends with it closed, not left running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_tasks_of_the_gateway_and_end_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = crate::service::test_gateway(dir.path(), &[]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = serve(listener, gateway.clone()).unwrap();
        let before = gateway.tasks().len();
        let mut conn = TcpStream::connect(server.local_addr).await.unwrap();
        conn.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&buf[..n]));
        // Kept alive and idle: its task runs on the gateway's tracker.
        assert_eq!(gateway.tasks().len(), before + 1);
        let stopped = async {
            server.stop().await;
            gateway.shutdown().await;
        };
        tokio::time::timeout(Duration::from_secs(30), stopped).await.expect("the shutdown ends");
        assert_eq!(gateway.tasks().len(), 0, "no task outlives the shutdown");
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "the idle connection was closed: {closed:?}");
    }

    /// On a paused clock (the runtime advances it when every task waits): exact, and no
    /// real waiting.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_stall_timeout() {
        let stall = Duration::from_millis(300);
        let (client, server) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(server, stall);
        // Progress resets the timer: a slow reader (64 bytes every 200 ms) gets everything,
        // though the whole write takes longer than the stall timeout.
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut buf = [0u8; 64];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = client.read(&mut buf).await;
            }
            client
        });
        let started = tokio::time::Instant::now();
        guarded.write_all(&[0u8; 64 * 5]).await.expect("a slow reader gets everything");
        assert_eq!(started.elapsed(), Duration::from_millis(4 * 200), "done with the fourth read");
        let _client = reader.await.unwrap();
        // A reader that stopped: the write fails after the stall timeout.
        let started = tokio::time::Instant::now();
        let err = tokio::time::timeout(stall * 5, guarded.write_all(&[0u8; 256]))
            .await
            .expect("the stalled write ends")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), stall);
    }
}
