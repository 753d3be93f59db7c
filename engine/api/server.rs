//! Accept loop: one hyper HTTP/1 connection task per client, tracked for graceful
//! shutdown (stop accepting, let in-flight requests finish within a deadline). At most
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{limits, reply};
use super::routes::{self, Ctx};
use crate::error::Error;
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

/// Serve the API for `gateway` on `listener` until [`Server::stop`].
pub fn serve(listener: TcpListener, gateway: Gateway) -> std::io::Result<Server> {
    let local_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let ctx = Arc::new(Ctx::new(gateway, stop.clone()));
    seed_job_cap(&ctx).map_err(|e| std::io::Error::other(e.message))?;
    let token = stop.clone();
    let done = tokio::spawn(async move { accept_loop(listener, ctx, token).await });
    Ok(Server { local_addr, stop, done })
}

/// With `MAX_JOBS_PER_CLIENT`, count the unfinished jobs of every owner found in the
/// store (an authenticated caller's client key is its owner id), so a restart does not
/// reset the counts. Jobs without an owner (open mode) cannot be attributed.
fn seed_job_cap(ctx: &Ctx) -> crate::error::Result<()> {
    let Some(cap) = &ctx.limits.jobs else { return Ok(()) };
    let store = &ctx.gateway.store;
    for job in store.queued_jobs()?.into_iter().chain(store.running_jobs()?) {
        if let Some(owner) = &job.owner {
            cap.track(owner, job.id);
        }
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, stop: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let header_read_timeout = ctx.gateway.config.api_limits.header_read_timeout;
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
                    drop(permit);
                    refuse(stream, err, &refusing, header_read_timeout);
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
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop((permit, ip_hold, open));
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown()).await.is_err() {
        tracing::warn!("some requests were still running at the shutdown deadline");
    }
}

/// Answer every request on `stream` with `err` (a 429 with `Retry-After`) and close it;
/// closed at once when [`REFUSING_MAX`] refusals are already running.
fn refuse(stream: TcpStream, err: Error, refusing: &Arc<tokio::sync::Semaphore>, header_read_timeout: Duration) {
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
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSE_READ_TIMEOUT * 2, conn).await;
        drop(slot);
    });
}
