//! Limits against abuse: who the client is (client IP behind trusted proxies, client key),
//! request rate limits (governor's GCRA, keyed by client key and by client IP, with the
//! `RateLimit`/`RateLimit-Policy` fields of draft-ietf-httpapi-ratelimit-headers-10),
//! the per-client cap on queued + running jobs, and CORS.
//!
//! Memory stays bounded under many clients: idle keys are evicted on a timer
//! (`retain_recent`), and a limiter that still tracks more than `TRACKED_KEYS_MAX` keys
//! is reset (every client starts a fresh window; logged).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, Method, header};

use super::reply::Resp;
use crate::config::{ApiLimits, CorsOrigins, RateLimit};
use crate::domain::JobId;
use crate::error::{Error, ErrorCode};

/// Keys tracked by one limiter at most (beyond it, after eviction, the limiter is reset).
pub const TRACKED_KEYS_MAX: usize = 100_000;
/// How often idle keys are evicted.
pub const EVICT_INTERVAL: Duration = Duration::from_secs(10);

/// Request headers a browser may send cross-origin.
const CORS_ALLOW_HEADERS: &str =
    "Content-Type, X-API-Key, Authorization, Idempotency-Key, Last-Event-ID, X-Correlation-Id";
/// Methods a browser may use cross-origin.
const CORS_ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
/// Response headers scripts may read cross-origin.
const CORS_EXPOSE_HEADERS: &str =
    "X-Correlation-Id, ETag, Content-Range, Retry-After, RateLimit, RateLimit-Policy, Location";
/// How long a browser may cache a preflight answer, in seconds.
const CORS_MAX_AGE_S: &str = "600";

/// Who sent a request: the client IP and the client key the limits are counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The peer, or the rightmost untrusted `X-Forwarded-For` hop when the peer is a
    /// trusted proxy.
    pub ip: IpAddr,
    /// `key:<SHA-256 of X-API-Key, hex>` when the header is present, else `ip:<ip>`.
    pub key: String,
}

impl Client {
    /// Identify the client of a request from `peer`.
    pub fn identify(peer: SocketAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Client {
        let ip = client_ip(peer.ip(), headers, trusted);
        let key = match headers.get("x-api-key") {
            Some(v) => format!("key:{}", hex(&digest::digest(&digest::SHA256, v.as_bytes()).as_ref()[..16])),
            None => format!("ip:{ip}"),
        };
        Client { ip, key }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The client IP: the peer, unless the peer is a trusted proxy; then `X-Forwarded-For`
/// read from the right, skipping trusted hops (the leftmost hop when all are trusted).
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return peer };
        for hop in s.split(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A malformed chain cannot be trusted beyond the proxy itself.
                Err(_) => return peer,
            }
        }
    }
    let mut client = peer;
    for ip in hops.into_iter().rev() {
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

type Keyed<C> = RateLimiter<String, DefaultKeyedStateStore<String>, C, StateInformationMiddleware>;
type KeyedIp<C> = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, StateInformationMiddleware>;

/// The state of one policy after a request: what the `RateLimit` field reports.
#[derive(Debug, Clone, Copy)]
struct PolicyState {
    remaining: u32,
    reset_s: u64,
}

/// The outcome of a rate-limit check: the header fields to send, and whether the request
/// was refused (with its `Retry-After`).
#[derive(Debug, Clone)]
pub struct RateDecision {
    fields: Vec<(&'static str, HeaderValue)>,
    /// Seconds until a retry can succeed, when the request was refused.
    pub retry_after_s: Option<u64>,
}

impl RateDecision {
    /// Add the `RateLimit-Policy`, `RateLimit` (and `Retry-After`) fields to `resp`.
    pub fn apply(&self, resp: &mut Resp) {
        for (name, v) in &self.fields {
            resp.headers_mut().insert(*name, v.clone());
        }
    }
}

/// Request rate limits per client key and per client IP, on the clock `C` (the monotonic
/// clock; tests inject governor's `FakeRelativeClock`).
#[derive(Debug)]
pub struct RateLimits<C: Clock = DefaultClock> {
    limit: RateLimit,
    keys: RwLock<Keyed<C>>,
    ips: RwLock<KeyedIp<C>>,
    clock: C,
}

fn quota(max: u32, window: Duration) -> Quota {
    let max = NonZeroU32::new(max).unwrap_or(NonZeroU32::MIN);
    // One request refills every window / max; a full burst of `max` after a quiet window.
    let period = (window / max.get()).max(Duration::from_nanos(1));
    Quota::with_period(period).expect("the period is positive").allow_burst(max)
}

fn ceil_s(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

impl RateLimits {
    /// Limiters for `limit`.
    pub fn new(limit: RateLimit) -> RateLimits {
        RateLimits::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// Limiters for `limit` reading the time from `clock`.
    pub fn with_clock(limit: RateLimit, clock: C) -> RateLimits<C> {
        RateLimits {
            limit,
            keys: RwLock::new(Self::fresh_keys(limit, &clock)),
            ips: RwLock::new(Self::fresh_ips(limit, &clock)),
            clock,
        }
    }

    fn fresh_keys(limit: RateLimit, clock: &C) -> Keyed<C> {
        RateLimiter::new(quota(limit.key_max, limit.window), DefaultKeyedStateStore::default(), clock.clone())
    }

    fn fresh_ips(limit: RateLimit, clock: &C) -> KeyedIp<C> {
        RateLimiter::new(quota(limit.ip_max, limit.window), DefaultKeyedStateStore::default(), clock.clone())
    }

    /// Count one request of `client`: the key's policy first, then the IP's (a request
    /// refused by its key does not use up its IP's quota).
    pub fn check(&self, client: &Client) -> RateDecision {
        let per_unit = |max: u32| self.limit.window / max.max(1);
        let key_state = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            keys.check_key(&client.key)
        };
        // `ip` is None when the key refused the request (the IP was not consulted).
        let (key, ip, refused) = match key_state {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                let used = self.limit.key_max.saturating_sub(remaining);
                let key = PolicyState { remaining, reset_s: ceil_s(per_unit(self.limit.key_max) * used) };
                let ip_state = {
                    let ips = self.ips.read().unwrap_or_else(|e| e.into_inner());
                    ips.check_key(&client.ip)
                };
                match ip_state {
                    Ok(snap) => {
                        let remaining = snap.remaining_burst_capacity();
                        let used = self.limit.ip_max.saturating_sub(remaining);
                        let ip = PolicyState { remaining, reset_s: ceil_s(per_unit(self.limit.ip_max) * used) };
                        (key, Some(ip), None)
                    }
                    Err(not_until) => {
                        let wait = ceil_s(not_until.wait_time_from(self.clock.now())).max(1);
                        (key, Some(PolicyState { remaining: 0, reset_s: wait }), Some(wait))
                    }
                }
            }
            Err(not_until) => {
                let wait = ceil_s(not_until.wait_time_from(self.clock.now())).max(1);
                (PolicyState { remaining: 0, reset_s: wait }, None, Some(wait))
            }
        };
        let w = ceil_s(self.limit.window).max(1);
        let policy = format!("\"client\";q={};w={w}, \"ip\";q={};w={w}", self.limit.key_max, self.limit.ip_max);
        let mut state = format!("\"client\";r={};t={}", key.remaining, key.reset_s);
        if let Some(ip) = ip {
            state.push_str(&format!(", \"ip\";r={};t={}", ip.remaining, ip.reset_s));
        }
        let mut fields = Vec::new();
        for (name, v) in [("ratelimit-policy", policy), ("ratelimit", state)] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                fields.push((name, v));
            }
        }
        if let Some(s) = refused {
            fields.push(("retry-after", HeaderValue::from(s)));
        }
        RateDecision { fields, retry_after_s: refused }
    }

    /// Forget idle clients; reset a limiter still tracking more than `TRACKED_KEYS_MAX`.
    pub fn evict(&self) {
        {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            keys.retain_recent();
            keys.shrink_to_fit();
        }
        {
            let ips = self.ips.read().unwrap_or_else(|e| e.into_inner());
            ips.retain_recent();
            ips.shrink_to_fit();
        }
        if self.keys.read().unwrap_or_else(|e| e.into_inner()).len() > TRACKED_KEYS_MAX {
            tracing::warn!(max = TRACKED_KEYS_MAX, "too many active client keys; rate limits reset");
            *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Self::fresh_keys(self.limit, &self.clock);
        }
        if self.ips.read().unwrap_or_else(|e| e.into_inner()).len() > TRACKED_KEYS_MAX {
            tracing::warn!(max = TRACKED_KEYS_MAX, "too many active client IPs; rate limits reset");
            *self.ips.write().unwrap_or_else(|e| e.into_inner()) = Self::fresh_ips(self.limit, &self.clock);
        }
    }

    /// Client keys and IPs tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).len();
        let ips = self.ips.read().unwrap_or_else(|e| e.into_inner()).len();
        (keys, ips)
    }
}

/// The 429 of a refused request.
pub fn rate_limited(retry_after_s: u64) -> Error {
    Error::new(ErrorCode::RateLimited, format!("too many requests; retry in {retry_after_s} s"))
        .with_details(serde_json::json!({ "retryAfterSeconds": retry_after_s }))
}

/// `Retry-After` of a submit refused by the per-client job cap, in seconds.
const JOB_CAP_RETRY_AFTER_S: u64 = 5;

/// The per-client cap on queued + running jobs. Only clients with unfinished jobs are
/// tracked, with their job ids; a check looks up the state of those (at most the cap).
#[derive(Debug)]
pub struct JobCap {
    max: usize,
    /// Client key → (jobs submitted and maybe unfinished, submits in progress).
    clients: Mutex<HashMap<String, (HashSet<JobId>, usize)>>,
}

/// A submit slot of one client, released by [`JobCap::commit`] or on drop.
#[derive(Debug)]
pub struct JobSlot<'a> {
    cap: &'a JobCap,
    key: String,
}

impl JobCap {
    /// A cap of `max` unfinished jobs per client key.
    pub fn new(max: u32) -> JobCap {
        JobCap { max: max as usize, clients: Mutex::new(HashMap::new()) }
    }

    /// Reserve a submit for `key`, unless it already has `max` unfinished jobs;
    /// `finished` tells whether a job is over (or gone).
    pub fn reserve<'a>(&'a self, key: &str, finished: impl Fn(JobId) -> bool) -> Result<JobSlot<'a>, Error> {
        let tracked: Vec<JobId> = {
            let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            clients.get(key).map(|(ids, _)| ids.iter().copied().collect()).unwrap_or_default()
        };
        // Looked up outside the lock: store reads.
        let done: Vec<JobId> = tracked.into_iter().filter(|id| finished(*id)).collect();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let entry = clients.entry(key.to_string()).or_default();
        for id in &done {
            entry.0.remove(id);
        }
        if entry.0.len() + entry.1 >= self.max {
            let n = entry.0.len() + entry.1;
            if n == 0 {
                clients.remove(key);
            }
            return Err(Error::new(
                ErrorCode::RateLimited,
                format!("this client already has {n} queued or running jobs (at most {})", self.max),
            )
            // No time is known when one of them finishes: a client polling its jobs knows
            // better; a blind retry waits a few seconds (`Retry-After`).
            .with_details(
                serde_json::json!({ "maxJobsPerClient": self.max, "retryAfterSeconds": JOB_CAP_RETRY_AFTER_S }),
            ));
        }
        entry.1 += 1;
        Ok(JobSlot { cap: self, key: key.to_string() })
    }

    /// Count `job` (queued or running) against `key`: used at start for the jobs recovered
    /// from the store, so a restart does not reset anyone's count.
    pub fn track(&self, key: &str, job: JobId) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key.to_string()).or_default().0.insert(job);
    }

    fn release(&self, key: &str, job: Option<JobId>) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = clients.get_mut(key) {
            entry.1 = entry.1.saturating_sub(1);
            if let Some(id) = job {
                entry.0.insert(id);
            }
            if entry.0.is_empty() && entry.1 == 0 {
                clients.remove(key);
            }
        }
    }
}

impl JobSlot<'_> {
    /// The submit succeeded: count `job` until it finishes.
    pub fn commit(self, job: JobId) {
        self.cap.release(&self.key, Some(job));
        std::mem::forget(self);
    }
}

impl Drop for JobSlot<'_> {
    fn drop(&mut self) {
        self.cap.release(&self.key, None);
    }
}

/// Things a client holds open (connections, event streams, waiting submits), counted per
/// key and in total, each with a cap. Only keys holding something are tracked.
#[derive(Debug)]
pub struct Held<K: std::hash::Hash + Eq + Clone> {
    /// What is counted, for messages (`connections`, `event streams`, ...).
    what: &'static str,
    /// The setting of the per-key cap, for messages and details.
    per_key_setting: &'static str,
    per_key_max: usize,
    /// The setting of the total cap (None: the total is not capped here).
    total_setting: Option<&'static str>,
    total_max: usize,
    /// Key → count, and the total.
    counts: Mutex<(HashMap<K, usize>, usize)>,
}

/// One thing held under a key: released when dropped.
#[derive(Debug)]
pub struct Hold<K: std::hash::Hash + Eq + Clone> {
    held: Arc<Held<K>>,
    key: K,
}

/// Seconds a client refused by a [`Held`] cap is asked to wait before it tries again.
pub const HELD_RETRY_AFTER_S: u64 = 1;

impl<K: std::hash::Hash + Eq + Clone> Held<K> {
    /// At most `per_key_max` per key (its setting named `per_key_setting`), and, with
    /// `total`, at most that many in all.
    pub fn new(
        what: &'static str,
        per_key_setting: &'static str,
        per_key_max: usize,
        total: Option<(&'static str, usize)>,
    ) -> Arc<Held<K>> {
        Arc::new(Held {
            what,
            per_key_setting,
            per_key_max,
            total_setting: total.map(|(s, _)| s),
            total_max: total.map_or(usize::MAX, |(_, n)| n),
            counts: Mutex::new((HashMap::new(), 0)),
        })
    }

    /// Hold one more under `key`, unless the key or the total is at its cap:
    /// `429 RATE_LIMITED` (with `retryAfterSeconds`) then.
    pub fn hold(self: &Arc<Self>, key: &K) -> Result<Hold<K>, Error> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (map, total) = &mut *counts;
        let n = map.get(key).copied().unwrap_or(0);
        let refused = if n >= self.per_key_max {
            Some((
                format!("this client already has {n} open {} (at most {})", self.what, self.per_key_max),
                self.per_key_setting,
                self.per_key_max,
            ))
        } else if *total >= self.total_max {
            let setting = self.total_setting.unwrap_or(self.per_key_setting);
            Some((
                format!("the gateway already has {total} open {} (at most {})", self.what, self.total_max),
                setting,
                self.total_max,
            ))
        } else {
            None
        };
        if let Some((message, setting, max)) = refused {
            return Err(Error::new(ErrorCode::RateLimited, format!("{message}; retry in {HELD_RETRY_AFTER_S} s"))
                .with_details(
                    serde_json::json!({ "limit": setting, "max": max, "retryAfterSeconds": HELD_RETRY_AFTER_S }),
                ));
        }
        *map.entry(key.clone()).or_insert(0) += 1;
        *total += 1;
        Ok(Hold { held: self.clone(), key: key.clone() })
    }

    /// What `key` holds now, and the total.
    pub fn count(&self, key: &K) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (counts.0.get(key).copied().unwrap_or(0), counts.1)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Hold<K> {
    /// The key this is held under.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Hold<K> {
    fn drop(&mut self) {
        let mut counts = self.held.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (map, total) = &mut *counts;
        *total = total.saturating_sub(1);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// One connection's share: who it is counted under once a request on it authenticated.
/// The accept loop puts it in every request's extensions.
#[derive(Debug, Default)]
pub struct ConnShare {
    client: Mutex<Option<Hold<String>>>,
}

impl ConnShare {
    /// Count this connection under `owner` (once; a request with another owner moves it),
    /// unless `owner` already has `MAX_CONNECTIONS_PER_CLIENT` connections.
    pub fn attribute(&self, held: &Arc<Held<String>>, owner: &str) -> Result<(), Error> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if client.as_ref().is_some_and(|h| h.key() == owner) {
            return Ok(());
        }
        let hold = held.hold(&owner.to_string())?;
        *client = Some(hold);
        Ok(())
    }
}

/// Whether a body read `read` bytes in `elapsed` too slowly: after `grace`, its average
/// rate since the start must be at least `min_per_s` bytes/s (0: never too slow).
pub fn body_too_slow(read: u64, elapsed: Duration, min_per_s: u64, grace: Duration) -> bool {
    min_per_s > 0 && elapsed > grace && (read as u128) * 1000 < (min_per_s as u128) * elapsed.as_millis()
}

/// CORS: which origins browsers may call from.
#[derive(Debug)]
pub struct Cors {
    origins: CorsOrigins,
}

impl Cors {
    /// From the configuration.
    pub fn new(origins: CorsOrigins) -> Cors {
        Cors { origins }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match &self.origins {
            CorsOrigins::Any => Some(HeaderValue::from_static("*")),
            CorsOrigins::List(list) => {
                let o = origin.to_str().ok()?;
                list.iter().any(|a| a == o).then(|| origin.clone())
            }
        }
    }

    /// Whether `method` + `headers` are a CORS preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Add the CORS fields to `resp` of a request from `origin`; `preflight` adds the
    /// allowed methods, headers and max age.
    pub fn apply(&self, origin: Option<&HeaderValue>, preflight: bool, resp: &mut Resp) {
        let h = resp.headers_mut();
        if matches!(self.origins, CorsOrigins::List(ref l) if !l.is_empty()) {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(allow) = self.allow_origin(origin) else { return };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if preflight {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(CORS_ALLOW_METHODS));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(CORS_ALLOW_HEADERS));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(CORS_MAX_AGE_S));
        } else {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(CORS_EXPOSE_HEADERS));
        }
    }
}

/// The API's limits, built from the configuration.
#[derive(Debug)]
pub struct Limits {
    /// Request rate limits (None: unlimited).
    pub rate: Option<RateLimits>,
    /// The per-client job cap (None: unlimited).
    pub jobs: Option<Arc<JobCap>>,
    /// CORS.
    pub cors: Cors,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every open connection being served (no cap here: `MAX_CONNECTIONS` is the accept
    /// loop's semaphore); counted for the `http_open` gauge.
    pub connections: Arc<Held<()>>,
    /// Open connections per TCP peer IP (`MAX_CONNECTIONS_PER_IP`).
    pub connections_per_ip: Arc<Held<IpAddr>>,
    /// Open connections per authenticated owner (`MAX_CONNECTIONS_PER_CLIENT`).
    pub connections_per_client: Arc<Held<String>>,
    /// Open event streams per client key and in total.
    pub event_streams: Arc<Held<String>>,
    /// Waiting `?wait=` submits per client key and in total.
    pub sync_waits: Arc<Held<String>>,
}

impl Limits {
    /// From the configuration.
    pub fn new(c: &ApiLimits) -> Limits {
        Limits {
            rate: c.rate.map(RateLimits::new),
            jobs: c.jobs_per_client_max.map(|n| Arc::new(JobCap::new(n))),
            cors: Cors::new(c.cors.clone()),
            trusted_proxies: c.trusted_proxies.clone(),
            connections: Held::new("connections", "MAX_CONNECTIONS", usize::MAX, None),
            connections_per_ip: Held::new("connections", "MAX_CONNECTIONS_PER_IP", c.connections_per_ip_max, None),
            connections_per_client: Held::new(
                "connections",
                "MAX_CONNECTIONS_PER_CLIENT",
                c.connections_per_client_max,
                None,
            ),
            event_streams: Held::new(
                "event streams",
                "MAX_EVENT_STREAMS_PER_CLIENT",
                c.event_streams_per_client_max,
                Some(("MAX_EVENT_STREAMS", c.event_streams_max)),
            ),
            sync_waits: Held::new(
                "waiting submits (?wait=)",
                "MAX_SYNC_WAITS_PER_CLIENT",
                c.sync_waits_per_client_max,
                Some(("MAX_SYNC_WAITS", c.sync_waits_max)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<ipnet::IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(peer, &xff("1.2.3.4, 5.6.7.8"), &[]), peer);
        assert_eq!(client_ip(peer, &xff("1.2.3.4, 5.6.7.8"), &trusted), "5.6.7.8".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &xff("1.2.3.4, 10.0.0.7"), &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &xff("1.2.3.4, junk"), &trusted), peer);
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        let outside: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(outside, &xff("1.2.3.4"), &trusted), outside);
    }

    #[test]
    fn client_key_is_a_fingerprint_of_the_api_key() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(Client::identify(peer, &h, &[]).key, "ip:127.0.0.1");
        h.insert("x-api-key", HeaderValue::from_static("secret"));
        let key = Client::identify(peer, &h, &[]).key;
        assert_eq!(key.len(), 4 + 32);
        assert!(!key.contains("secret"));
        // The first 16 bytes of SHA-256("secret"), hex (Python's hashlib).
        assert_eq!(key, "key:2bb80d537b1da3e38bd30361aa855686");
    }

    #[test]
    fn rate_limits_count_keys_then_ips_and_evict_idle_keys() {
        let clock = governor::clock::FakeRelativeClock::default();
        let window = Duration::from_millis(200);
        let limits = RateLimits::with_clock(RateLimit { key_max: 2, ip_max: 3, window }, clock.clone());
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("a"));
        let a = Client::identify(peer, &h, &[]);
        h.insert("x-api-key", HeaderValue::from_static("b"));
        let b = Client::identify(peer, &h, &[]);
        assert!(limits.check(&a).retry_after_s.is_none());
        assert!(limits.check(&a).retry_after_s.is_none());
        assert_eq!(limits.check(&a).retry_after_s, Some(1));
        assert!(limits.check(&b).retry_after_s.is_none());
        // The IP's third request: its quota of 3 is used up by a, a, b.
        assert!(limits.check(&b).retry_after_s.is_some());
        assert_eq!(limits.tracked(), (2, 1));
        // A key is idle (evictable) once its state equals a fresh one: a window and one refill
        // after its last use, not before (the clock is governor's fake: no sleeping).
        clock.advance(window - Duration::from_millis(1));
        limits.evict();
        assert_eq!(limits.tracked(), (2, 1), "still limited within the window");
        clock.advance(Duration::from_millis(101));
        limits.evict();
        assert_eq!(limits.tracked(), (0, 0));
        assert!(limits.check(&a).retry_after_s.is_none());
    }

    #[test]
    fn held_caps_each_key_and_the_total_and_releases_on_drop() {
        let held: Arc<Held<String>> = Held::new("streams", "PER_KEY", 2, Some(("TOTAL", 3)));
        let (a, b) = ("a".to_string(), "b".to_string());
        let a1 = held.hold(&a).unwrap();
        let a2 = held.hold(&a).unwrap();
        let e = held.hold(&a).unwrap_err();
        assert_eq!((e.code, e.details.as_ref().unwrap()["limit"].as_str()), (ErrorCode::RateLimited, Some("PER_KEY")));
        assert_eq!(e.details.as_ref().unwrap()["retryAfterSeconds"], 1);
        let b1 = held.hold(&b).unwrap();
        // The total (3) is reached although b has room.
        let e = held.hold(&b).unwrap_err();
        assert_eq!(e.details.as_ref().unwrap()["limit"], "TOTAL");
        assert_eq!(held.count(&a), (2, 3));
        drop(a1);
        assert_eq!(held.count(&a), (1, 2));
        let b2 = held.hold(&b).unwrap();
        drop((a2, b1, b2));
        assert_eq!(held.count(&a), (0, 0));
        assert!(held.counts.lock().unwrap().0.is_empty(), "idle keys are forgotten");
    }

    #[test]
    fn a_connection_counts_once_under_its_owner() {
        let held: Arc<Held<String>> = Held::new("connections", "MAX_CONNECTIONS_PER_CLIENT", 1, None);
        let (c1, c2) = (ConnShare::default(), ConnShare::default());
        c1.attribute(&held, "alice").unwrap();
        c1.attribute(&held, "alice").unwrap();
        assert_eq!(held.count(&"alice".to_string()), (1, 1));
        assert!(c2.attribute(&held, "alice").is_err(), "alice's second connection is over her cap");
        c2.attribute(&held, "bob").unwrap();
        // A request with another owner moves the connection.
        c1.attribute(&held, "carol").unwrap();
        assert_eq!(held.count(&"alice".to_string()), (0, 2));
        drop((c1, c2));
        assert_eq!(held.count(&"bob".to_string()), (0, 0));
    }

    #[test]
    fn a_body_is_too_slow_only_after_the_grace_and_below_the_rate() {
        let grace = Duration::from_secs(5);
        assert!(!body_too_slow(0, Duration::from_secs(4), 1000, grace), "within the grace");
        assert!(body_too_slow(0, Duration::from_secs(6), 1000, grace));
        assert!(body_too_slow(5_999, Duration::from_secs(6), 1000, grace));
        assert!(!body_too_slow(6_000, Duration::from_secs(6), 1000, grace), "the average since the start counts");
        assert!(!body_too_slow(0, Duration::from_secs(600), 0, grace), "0 turns the check off");
    }

    #[test]
    fn job_cap_counts_unfinished_jobs_and_reservations() {
        let cap = JobCap::new(2);
        let (j1, j2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        cap.reserve("c", |_| false).unwrap().commit(j1);
        let pending = cap.reserve("c", |_| false).unwrap();
        assert!(cap.reserve("c", |_| false).is_err());
        drop(pending);
        cap.reserve("c", |_| false).unwrap().commit(j2);
        assert!(cap.reserve("c", |_| false).is_err());
        assert!(cap.reserve("other", |_| false).is_ok());
        cap.reserve("c", |id| id == j1).unwrap().commit(uuid::Uuid::new_v4());
        cap.reserve("c", |_| true).unwrap();
        assert!(cap.clients.lock().unwrap().is_empty());
    }
}
