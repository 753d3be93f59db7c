//! The one route table, [`ROUTES`]: each route names its pattern and, for each method it
//! takes, who may call it ([`Access`]), the body it takes ([`BodyKind`]) and its
//! [`Handler`]. Everything about routing comes from it: `404 NOT_FOUND` for a path no
//! pattern matches, `405 METHOD_NOT_ALLOWED` with `Allow` (the route's methods) for a
//! method it does not take, `401 AUTH_FAILED` and `403 FORBIDDEN` from the method's
//! access, the body's media type check, the rate limit's exemption of the probes, and the
//! metrics' `route` label (the pattern). An operation without an access does not compile:
//! there is no default.
//!
//! Adding a route: one [`Route`] in [`ROUTES`] (pattern; `rate_limited: true` unless it is
//! a probe; one [`Op`] per method), a [`Handler`] variant, and its arm in `dispatch` (an
//! exhaustive match); then its operation in `openapi.rs` and its step in
//! `examples/curl.sh` (both checked by tests against this table) and, if it is public or
//! admin-only, its line in the lists of `tests/it/auth.rs` that pin them.
//!
//! Every request gets a correlation id (the client's `X-Correlation-Id` when it is
//! well-formed, else a new one; echoed as `X-Correlation-Id` and in error bodies), runs
//! inside a `request` tracing span carrying it, is counted in the metrics by route
//! *pattern*, and ends with one access log line.
//!
//! Limits are applied here, before any handler: the client's request rate (every route
//! but the probes `/health`, `/livez`, `/readyz`; `RateLimit` fields on every counted
//! response, 429 beyond it), the number of query parameters, and CORS (preflights
//! answered 204, allow fields only for allowed origins).
//!
//! Before authentication, [`guard`] checks the `Host` (DNS rebinding) and, in open mode,
//! the origin of state-changing requests; each operation's body media type is checked
//! before its handler runs.
//!
//! Authentication happens here, before the handler, for every request: when credentials
//! are configured, a request without a valid `X-API-Key` or bearer token is
//! `401 AUTH_FAILED` (with `WWW-Authenticate`), except on the public operations (the
//! probes `/health`, `/livez`, `/readyz`, the dashboard's static files `/`, `/ui/*`, `/docs` and,
//! with `METRICS_PUBLIC`, `/metrics`). Unknown paths need credentials too, so the table
//! cannot be probed. Authorization by role (admin-only operations) is here too; ownership
//! of jobs is in the handlers.

use std::net::SocketAddr;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, Request};
use hyper::body::Incoming;
use tracing::Instrument;

use super::guard::{self, BodyKind, Guard};
use super::limits::{self, Client, Cors, Limits};
use super::reply::{self, Resp};
use super::{dashboard, handlers, sse};
use crate::auth::Principal;
use crate::config::Config;
use crate::domain::Role;
use crate::error::{Error, ErrorCode};
use crate::service::Gateway;

/// A path pattern and the methods it takes.
#[derive(Debug)]
pub struct Route {
    /// The `matchit` pattern (`{id}`, `{file}`): also the metrics' `route` label.
    pub pattern: &'static str,
    /// False for the probes only: a throttled probe would restart a healthy gateway.
    pub rate_limited: bool,
    /// One operation per method, in the order of the `Allow` field.
    pub ops: &'static [Op],
}

/// One method of a route.
#[derive(Debug)]
pub struct Op {
    /// The method (`HEAD` is listed where it is answered).
    pub method: Method,
    /// Who may call it.
    pub access: Access,
    /// The body it takes (its media type is checked before the handler).
    pub body: BodyKind,
    /// What answers it.
    pub handler: Handler,
}

/// Who may call an operation, when credentials are configured (in open mode, everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials; credentials sent are ignored (the probes, and the
    /// dashboard's files, which hold no data).
    Public,
    /// Anyone, without credentials; valid credentials earn more (`/health`'s details),
    /// invalid ones get the public answer (a probe with a stale key still learns up or down).
    PublicOrCaller,
    /// Any authenticated caller, whatever its role.
    User,
    /// Admins only: a user is refused `403 FORBIDDEN` with "{what} needs the admin role".
    Admin(&'static str),
    /// `/metrics`: [`Access::Public`] with `METRICS_PUBLIC`, else admins only.
    Metrics,
}

impl Access {
    /// The access under `config` (`METRICS_PUBLIC` decides [`Access::Metrics`]).
    fn resolve(self, config: &Config) -> Need {
        match self {
            Access::Public => Need::Nothing,
            Access::PublicOrCaller => Need::Optional,
            Access::User => Need::Caller,
            Access::Admin(what) => Need::Admin(what),
            Access::Metrics if config.metrics_public => Need::Nothing,
            Access::Metrics => Need::Admin("reading metrics"),
        }
    }
}

/// What a request needs, once the configuration has decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// No credentials; any sent are ignored.
    Nothing,
    /// No credentials; valid ones are used.
    Optional,
    /// Valid credentials.
    Caller,
    /// Valid credentials of the admin role.
    Admin(&'static str),
}

/// What answers an operation: one variant per handler, dispatched by `dispatch` (an
/// enum rather than boxed async functions: no allocation per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `GET /health`
    Health,
    /// `GET /livez`: the process answers (never depends on a backend).
    Livez,
    /// `GET /readyz`: the store works and a backend is reachable.
    Readyz,
    /// `GET /capabilities`
    Capabilities,
    /// `GET /models`
    Models,
    /// `GET /openapi.json`
    OpenApi,
    /// `GET /workflows`
    ListWorkflows,
    /// `POST /workflows`
    CreateWorkflow,
    /// `GET /workflows/{id}`
    GetWorkflow,
    /// `PUT /workflows/{id}`
    UpdateWorkflow,
    /// `DELETE /workflows/{id}`
    DeleteWorkflow,
    /// `POST /workflows/import`
    ImportWorkflow,
    /// `GET /jobs`
    ListJobs,
    /// `POST /jobs`
    CreateJob,
    /// `GET /jobs/{id}`
    GetJob,
    /// `POST /jobs/{id}/cancel`
    CancelJob,
    /// `POST /jobs/cancel`
    CancelJobs,
    /// `GET /jobs/{id}/events`
    JobEvents,
    /// `GET /jobs/{id}/logs`
    JobLogs,
    /// `GET /jobs/{id}/webhooks`
    JobWebhooks,
    /// `POST /jobs/{id}/webhook/redeliver`
    RedeliverWebhooks,
    /// `GET /outputs/{id}`
    ListOutputs,
    /// `GET` and `HEAD /outputs/{id}/{file}`
    GetOutput,
    /// `GET /metrics`
    Metrics,
    /// `GET /audit`
    Audit,
    /// `GET /backends`
    Backends,
    /// `POST /backends/{id}/drain`
    DrainBackend,
    /// `POST /backends/{id}/resume`
    ResumeBackend,
    /// `GET` and `HEAD /`: the dashboard's page.
    Dashboard,
    /// `GET` and `HEAD /ui/{file}`: the dashboard's scripts, styles and icon.
    DashboardFile,
    /// `GET` and `HEAD /docs`: the API docs page (renders `/openapi.json`; its files are
    /// under `/ui/`).
    Docs,
    /// `POST /admin/backup`
    Backup,
    /// `POST`, `GET` and `DELETE /mcp`: the Model Context Protocol (Streamable HTTP).
    Mcp,
}

const CHANGING_WORKFLOWS: Access = Access::Admin("changing workflows");
const DRAINING: Access = Access::Admin("draining or resuming a backend");

/// The route table. A static segment wins over `{id}` (`/workflows/import`, so no workflow
/// can be named `import`).
#[rustfmt::skip]
pub static ROUTES: &[Route] = {
    use Access::{Public, PublicOrCaller, User};
    use BodyKind::{Empty, Ignored, Json, JsonOrMultipart};
    use Handler as H;
    use Method as M;
    &[
        Route { pattern: "/health", rate_limited: false, ops: &[
            Op { method: M::GET, access: PublicOrCaller, body: Ignored, handler: H::Health },
        ] },
        Route { pattern: "/livez", rate_limited: false, ops: &[
            Op { method: M::GET, access: Public, body: Ignored, handler: H::Livez },
        ] },
        Route { pattern: "/readyz", rate_limited: false, ops: &[
            Op { method: M::GET, access: Public, body: Ignored, handler: H::Readyz },
        ] },
        Route { pattern: "/models", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::Models },
        ] },
        Route { pattern: "/capabilities", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::Capabilities },
        ] },
        Route { pattern: "/openapi.json", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::OpenApi },
        ] },
        Route { pattern: "/workflows", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::ListWorkflows },
            Op { method: M::POST, access: CHANGING_WORKFLOWS, body: Json, handler: H::CreateWorkflow },
        ] },
        Route { pattern: "/workflows/{id}", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::GetWorkflow },
            Op { method: M::PUT, access: CHANGING_WORKFLOWS, body: Json, handler: H::UpdateWorkflow },
            Op { method: M::DELETE, access: CHANGING_WORKFLOWS, body: Empty, handler: H::DeleteWorkflow },
        ] },
        Route { pattern: "/workflows/import", rate_limited: true, ops: &[
            Op { method: M::POST, access: CHANGING_WORKFLOWS, body: Json, handler: H::ImportWorkflow },
        ] },
        Route { pattern: "/jobs", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::ListJobs },
            Op { method: M::POST, access: User, body: JsonOrMultipart, handler: H::CreateJob },
        ] },
        Route { pattern: "/jobs/cancel", rate_limited: true, ops: &[
            Op { method: M::POST, access: User, body: Json, handler: H::CancelJobs },
        ] },
        Route { pattern: "/jobs/{id}", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::GetJob },
        ] },
        Route { pattern: "/jobs/{id}/cancel", rate_limited: true, ops: &[
            Op { method: M::POST, access: User, body: Empty, handler: H::CancelJob },
        ] },
        Route { pattern: "/jobs/{id}/events", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::JobEvents },
        ] },
        Route { pattern: "/jobs/{id}/logs", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::JobLogs },
        ] },
        Route { pattern: "/jobs/{id}/webhooks", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::JobWebhooks },
        ] },
        Route { pattern: "/jobs/{id}/webhook/redeliver", rate_limited: true, ops: &[
            Op { method: M::POST, access: User, body: Empty, handler: H::RedeliverWebhooks },
        ] },
        Route { pattern: "/outputs/{id}", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::ListOutputs },
        ] },
        Route { pattern: "/outputs/{id}/{file}", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::GetOutput },
            Op { method: M::HEAD, access: User, body: Ignored, handler: H::GetOutput },
        ] },
        Route { pattern: "/metrics", rate_limited: true, ops: &[
            Op { method: M::GET, access: Access::Metrics, body: Ignored, handler: H::Metrics },
        ] },
        Route { pattern: "/audit", rate_limited: true, ops: &[
            Op { method: M::GET, access: Access::Admin("reading the audit log"), body: Ignored, handler: H::Audit },
        ] },
        Route { pattern: "/backends", rate_limited: true, ops: &[
            Op { method: M::GET, access: User, body: Ignored, handler: H::Backends },
        ] },
        Route { pattern: "/backends/{id}/drain", rate_limited: true, ops: &[
            Op { method: M::POST, access: DRAINING, body: Empty, handler: H::DrainBackend },
        ] },
        Route { pattern: "/backends/{id}/resume", rate_limited: true, ops: &[
            Op { method: M::POST, access: DRAINING, body: Empty, handler: H::ResumeBackend },
        ] },
        Route { pattern: "/", rate_limited: true, ops: &[
            Op { method: M::GET, access: Public, body: Ignored, handler: H::Dashboard },
            Op { method: M::HEAD, access: Public, body: Ignored, handler: H::Dashboard },
        ] },
        Route { pattern: "/ui/{file}", rate_limited: true, ops: &[
            Op { method: M::GET, access: Public, body: Ignored, handler: H::DashboardFile },
            Op { method: M::HEAD, access: Public, body: Ignored, handler: H::DashboardFile },
        ] },
        Route { pattern: "/docs", rate_limited: true, ops: &[
            Op { method: M::GET, access: Public, body: Ignored, handler: H::Docs },
            Op { method: M::HEAD, access: Public, body: Ignored, handler: H::Docs },
        ] },
        Route { pattern: "/mcp", rate_limited: true, ops: &[
            Op { method: M::POST, access: User, body: Json, handler: H::Mcp },
            Op { method: M::GET, access: User, body: Ignored, handler: H::Mcp },
            Op { method: M::DELETE, access: User, body: Empty, handler: H::Mcp },
        ] },
        Route { pattern: "/admin/backup", rate_limited: true, ops: &[
            Op { method: M::POST, access: Access::Admin("taking a backup"), body: Empty, handler: H::Backup },
        ] },
    ]
};

impl Route {
    /// The operation answering `method`, if the route takes it.
    pub fn op(&self, method: &Method) -> Option<&'static Op> {
        let ops: &'static [Op] = self.ops;
        ops.iter().find(|o| o.method == *method)
    }

    /// The methods the route answers, for `Allow` (RFC 9110 §15.5.6).
    pub fn allowed_methods(&self) -> String {
        self.ops.iter().map(|o| o.method.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// What a request with `method` needs. A method the route does not take (answered
    /// 405) needs what the least open of its methods needs, short of a role: credentials
    /// unless every method is public.
    fn need(&self, method: &Method, config: &Config) -> Need {
        if let Some(op) = self.op(method) {
            return op.access.resolve(config);
        }
        let needs = || self.ops.iter().map(|o| o.access.resolve(config));
        if needs().all(|n| n == Need::Nothing) {
            Need::Nothing
        } else if needs().all(|n| matches!(n, Need::Nothing | Need::Optional)) {
            Need::Optional
        } else {
            Need::Caller
        }
    }
}

/// The `route` of a request that matched no pattern (metrics and access log).
const UNMATCHED_ROUTE: &str = "unmatched";

/// Query parameters of one request at most.
pub const QUERY_PARAMS_MAX: usize = 64;

/// Correlation ids accepted from clients: this many characters of `[A-Za-z0-9_-]`.
const CORRELATION_ID_LEN: std::ops::RangeInclusive<usize> = 8..=64;

/// Everything a handler needs.
#[derive(Debug)]
pub struct Ctx {
    /// The service.
    pub gateway: Gateway,
    /// [`ROUTES`] by pattern.
    router: matchit::Router<&'static Route>,
    /// When the server started.
    pub started: std::time::Instant,
    /// Cancelled when the server stops: ends open event streams.
    pub stop: tokio_util::sync::CancellationToken,
    /// Rate limits, job cap, CORS.
    pub limits: Limits,
    /// `Host`, `Origin` and media type checks.
    pub guard: Guard,
    /// The threads that scan and parse large bodies, below the API's priority.
    pub bulk: super::bulk::Bulk,
    /// `/mcp`.
    pub mcp: super::mcp::Mcp,
}

impl Ctx {
    /// Build the context and the route table; `stop` ends open event streams. An error if
    /// the bulk pool's threads cannot be started.
    pub fn new(gateway: Gateway, stop: tokio_util::sync::CancellationToken) -> std::io::Result<Ctx> {
        let mut router = matchit::Router::new();
        for route in ROUTES {
            router.insert(route.pattern, route).expect("the route table is valid");
        }
        let limits = Limits::new(&gateway.config.api_limits);
        let guard = Guard::new(&gateway.config);
        let mcp = super::mcp::Mcp::new(std::time::Duration::from_millis(gateway.config.sse_heartbeat_ms));
        Ok(Ctx {
            gateway,
            router,
            started: std::time::Instant::now(),
            stop,
            limits,
            guard,
            bulk: super::bulk::Bulk::start()?,
            mcp,
        })
    }
}

/// A request's path parameters, and who is asking.
#[derive(Debug, Default)]
pub struct Params {
    /// The authenticated caller; None in open mode (no credentials configured) and on
    /// the public routes.
    pub caller: Option<Principal>,
    /// The request's correlation id (for the audit log).
    pub correlation_id: String,
    /// `{id}`.
    pub id: String,
    /// `{file}`.
    pub file: String,
    /// The query string's pairs, decoded, in order.
    pub query: Vec<(String, String)>,
}

impl Params {
    /// The last value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The client's correlation id, if it is 8-64 characters of `[A-Za-z0-9_-]`.
fn client_correlation_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("x-correlation-id")?.to_str().ok()?;
    let ok =
        CORRELATION_ID_LEN.contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| v.to_string())
}

/// The bearer token of an `Authorization: Bearer ...` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Who is calling `method` on `route`: None in open mode and on the public operations
/// ([`Access::Public`]; [`Access::PublicOrCaller`] without valid credentials), else the
/// principal of valid credentials, else `AUTH_FAILED`.
/// Unknown paths need credentials too, so the route table cannot be probed.
fn authenticate(
    ctx: &Ctx,
    headers: &HeaderMap,
    route: Option<&Route>,
    method: &Method,
) -> Result<Option<Principal>, Error> {
    let config = &ctx.gateway.config;
    if !config.auth.enabled() {
        return Ok(None);
    }
    match route.map_or(Need::Caller, |r| r.need(method, config)) {
        Need::Nothing => return Ok(None),
        Need::Optional => {
            let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
            return Ok(config.auth.authenticate(api_key, bearer_token(headers)).ok());
        }
        Need::Caller | Need::Admin(_) => {}
    }
    // A key header that is not text cannot match any key: it is a wrong key, not none.
    let api_key = headers.get("x-api-key").map(|v| v.to_str().unwrap_or("\u{0}"));
    config
        .auth
        .authenticate(api_key, bearer_token(headers))
        .map(Some)
        .map_err(|e| Error::new(ErrorCode::AuthFailed, e.0))
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 9110 §11.6.1): the configured schemes.
fn challenge(ctx: &Ctx) -> Option<HeaderValue> {
    let auth = &ctx.gateway.config.auth;
    let mut schemes = Vec::new();
    if auth.jwt_enabled() {
        schemes.push("Bearer realm=\"comfyui-gateway\"");
    }
    if auth.keys_enabled() {
        schemes.push("ApiKey realm=\"comfyui-gateway\", header=\"X-API-Key\"");
    }
    HeaderValue::from_str(&schemes.join(", ")).ok().filter(|_| !schemes.is_empty())
}

/// Route and answer one request from `peer`.
pub async fn handle(ctx: &Ctx, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let correlation_id =
        client_correlation_id(req.headers()).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = req.method().clone();
    let mut matched = ctx.router.at(req.uri().path()).ok().map(|m| {
        let route: &'static Route = m.value;
        let params = Params {
            caller: None,
            correlation_id: correlation_id.clone(),
            id: m.params.get("id").unwrap_or("").to_string(),
            file: m.params.get("file").unwrap_or("").to_string(),
            // One more than the cap is kept, so that too many can be refused.
            query: form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .take(QUERY_PARAMS_MAX + 1)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        };
        (route, params)
    });
    let pattern = matched.as_ref().map_or(UNMATCHED_ROUTE, |(r, _)| r.pattern);
    let client = Client::identify(peer, req.headers(), &ctx.limits.trusted_proxies);
    let preflight = Cors::is_preflight(&method, req.headers());
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    let span = tracing::info_span!("request", correlation_id = %correlation_id);
    async move {
        // Probes are never rate limited (a throttled probe would restart a healthy gateway).
        let is_probe = matched.as_ref().is_some_and(|(r, _)| !r.rate_limited);
        // Rate first, so that guessing credentials is throttled too.
        let rate = ctx.limits.rate.as_ref().filter(|_| !is_probe).map(|r| r.check(&client));
        let refused = ctx.guard.check(&method, req.headers(), preflight).err();
        // Browsers send CORS preflights without credentials.
        let caller = if preflight {
            Ok(None)
        } else {
            authenticate(ctx, req.headers(), matched.as_ref().map(|(r, _)| *r), &method)
        };
        // The owner id only (a key's fingerprint or a token's subject), never a credential.
        let principal = caller.as_ref().ok().and_then(|c| c.as_ref()).map(|p| p.owner.clone());
        // Per-client caps count an authenticated caller by its owner id.
        let client = match &principal {
            Some(owner) => Client { ip: client.ip, key: owner.clone() },
            None => client,
        };
        // The connection counts under an authenticated caller (`MAX_CONNECTIONS_PER_CLIENT`);
        // a connection over the caller's share is answered 429 and closed. Not a trusted
        // proxy's: its pooled connections carry every tenant's requests in turn, so they are
        // no one tenant's (the per-IP cap exempts them for the same reason).
        let from_proxy = ctx.limits.trusted_proxies.iter().any(|net| net.contains(&peer.ip()));
        let share = req.extensions().get::<std::sync::Arc<limits::ConnShare>>().cloned().filter(|_| !from_proxy);
        let over_share = match (&principal, share, rate.as_ref().and_then(|d| d.retry_after_s)) {
            (Some(owner), Some(share), None) => share.attribute(&ctx.limits.connections_per_client, owner).err(),
            _ => None,
        };
        let close = over_share.is_some();
        let caller = match over_share {
            Some(e) => Err(e),
            None => caller,
        };
        let result = match (rate.as_ref().and_then(|d| d.retry_after_s), refused, caller) {
            (Some(s), _, _) => Err(limits::rate_limited(s)),
            (None, Some(e), _) => Err(e),
            (None, None, Err(e)) => Err(e),
            (None, None, Ok(caller)) => {
                if let Some((_, params)) = matched.as_mut() {
                    params.caller = caller;
                }
                route(ctx, req, matched, preflight, &client).await
            }
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(err) => reply::error(&err, &correlation_id),
        };
        if let Some(d) = &rate {
            d.apply(&mut resp);
        }
        // A body that did not arrive in time is left unread: the connection cannot go on.
        if close || resp.status() == http::StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        ctx.limits.cors.apply(origin.as_ref(), preflight, &mut resp);
        if resp.status() == http::StatusCode::UNAUTHORIZED
            && let Some(v) = challenge(ctx)
        {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&correlation_id) {
            resp.headers_mut().insert("x-correlation-id", v);
        }
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        ctx.gateway.metrics.http_request(pattern, status, elapsed);
        // The pattern, never the raw path or query (ids, file names, tokens).
        tracing::info!(
            method = %method,
            route = pattern,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            correlation_id = %correlation_id,
            principal = principal.as_deref().unwrap_or("-"),
            "request"
        );
        resp
    }
    .instrument(span)
    .await
}

/// Allow only admins (and everyone in open mode, where there is no caller).
fn admin_only(p: &Params, what: &str) -> Result<(), Error> {
    match &p.caller {
        Some(Principal { role: Role::User, .. }) => {
            Err(Error::new(ErrorCode::Forbidden, format!("{what} needs the admin role")))
        }
        Some(Principal { role: Role::Admin, .. }) | None => Ok(()),
    }
}

async fn route(
    ctx: &Ctx,
    req: Request<Incoming>,
    matched: Option<(&'static Route, Params)>,
    preflight: bool,
    client: &Client,
) -> Result<Resp, Error> {
    let Some((route, params)) = matched else {
        return Err(Error::new(ErrorCode::NotFound, format!("no route for {}", req.uri().path())));
    };
    if preflight {
        // CORS fields (for allowed origins only) are added by `handle`.
        return Ok(reply::empty(http::StatusCode::NO_CONTENT));
    }
    if params.query.len() > QUERY_PARAMS_MAX {
        return Err(Error::validation("query", format!("more than {QUERY_PARAMS_MAX} query parameters")));
    }
    let method = req.method().clone();
    let Some(op) = route.op(&method) else {
        return Err(Error::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed on {}", req.uri().path()),
        )
        .with_details(serde_json::json!({ "allow": route.allowed_methods() })));
    };
    match op.access.resolve(&ctx.gateway.config) {
        Need::Admin(what) => admin_only(&params, what)?,
        Need::Nothing | Need::Optional | Need::Caller => {}
    }
    let has_body = !hyper::body::Body::is_end_stream(req.body());
    guard::check_media_type(op.body, req.headers(), has_body)?;
    dispatch(op.handler, ctx, &params, req, &method, client).await
}

/// Run `handler`: every handler's call, one arm each.
async fn dispatch(
    handler: Handler,
    ctx: &Ctx,
    params: &Params,
    req: Request<Incoming>,
    method: &Method,
    client: &Client,
) -> Result<Resp, Error> {
    match handler {
        Handler::Health => {
            // Details (backend URLs, versions, errors) for callers who may see them.
            let details = !ctx.gateway.config.auth.enabled() || params.caller.is_some();
            handlers::health(ctx, details).await
        }
        Handler::Livez => handlers::livez(ctx),
        Handler::Readyz => handlers::readyz(ctx),
        Handler::Capabilities => handlers::capabilities(ctx),
        Handler::Models => handlers::models(ctx).await,
        Handler::OpenApi => handlers::openapi(ctx),
        Handler::ListWorkflows => handlers::list_workflows(&ctx.gateway),
        Handler::CreateWorkflow => handlers::create_workflow(ctx, params, req).await,
        Handler::GetWorkflow => handlers::get_workflow(ctx, params),
        Handler::UpdateWorkflow => handlers::update_workflow(ctx, params, req).await,
        Handler::DeleteWorkflow => handlers::delete_workflow(ctx, params).await,
        Handler::ImportWorkflow => handlers::import_workflow(ctx, params, req).await,
        Handler::ListJobs => handlers::list_jobs(&ctx.gateway, params),
        Handler::CreateJob => handlers::create_job(ctx, params, client, req).await,
        Handler::GetJob => handlers::get_job(ctx, params).await,
        Handler::CancelJob => handlers::cancel_job(&ctx.gateway, params).await,
        Handler::CancelJobs => handlers::cancel_jobs(ctx, params, req).await,
        Handler::JobEvents => sse::job_events(ctx, params, &req, client),
        Handler::JobLogs => handlers::job_logs(ctx, params),
        Handler::JobWebhooks => handlers::job_webhooks(ctx, params),
        Handler::RedeliverWebhooks => handlers::redeliver_webhooks(ctx, params).await,
        Handler::ListOutputs => handlers::list_outputs(&ctx.gateway, params),
        Handler::GetOutput => handlers::get_output(ctx, params, &req).await,
        Handler::Metrics => handlers::metrics(ctx),
        Handler::Audit => handlers::audit(ctx, params),
        Handler::Backends => handlers::backends(ctx),
        Handler::DrainBackend => handlers::set_draining(ctx, params, true).await,
        Handler::ResumeBackend => handlers::set_draining(ctx, params, false).await,
        Handler::Dashboard => dashboard::serve(method, req.headers(), None),
        Handler::DashboardFile => dashboard::serve(method, req.headers(), Some(&params.file)),
        Handler::Docs => dashboard::serve(method, req.headers(), Some("docs.html")),
        Handler::Backup => handlers::backup(ctx, params).await,
        Handler::Mcp => super::mcp::serve(ctx, params, client, req).await,
    }
}
