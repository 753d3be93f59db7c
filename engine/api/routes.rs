//! The one route table. Every request gets a correlation id (the client's
//! `X-Correlation-Id` when it is well-formed, else a new one; echoed as `X-Correlation-Id`
//! and in error bodies), runs inside a `request` tracing span carrying it, is counted in
//! the metrics by route *pattern*, and ends with one access log line. Unknown paths are
//! `404 NOT_FOUND`, known paths with another method `405 METHOD_NOT_ALLOWED`.
//!
//! Limits are applied here, before any handler: the client's request rate (every route
//! but the probes `/health`, `/livez`, `/readyz`; `RateLimit` fields on every counted
//! response, 429 beyond it), the number of query parameters, and CORS (preflights
//! answered 204, allow fields only for allowed origins).
//!
//! Before authentication, [`guard`] checks the `Host` (DNS rebinding) and, in open mode,
//! the origin of state-changing requests; each route's body media type is checked before
//! its handler runs.
//!
//! Authentication happens here, before routing, for every request: when credentials are
//! configured, a request without a valid `X-API-Key` or bearer token is `401 AUTH_FAILED`
//! (with `WWW-Authenticate`), except the probes (`/health`, `/livez`, `/readyz`), the
//! dashboard's static files (`/`, `/ui/*`, `/docs`) and, with `METRICS_PUBLIC`, `/metrics`.
//! Authorization by role is in [`route`]; ownership of jobs in the handlers.

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
use crate::domain::Role;
use crate::error::{Error, ErrorCode};
use crate::service::Gateway;

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/health`
    Health,
    /// `/livez`: the process answers (never depends on a backend).
    Livez,
    /// `/readyz`: the store works and a backend is reachable.
    Readyz,
    /// `/capabilities`
    Capabilities,
    /// `/openapi.json`
    OpenApi,
    /// `/workflows`
    Workflows,
    /// `/workflows/{id}`
    Workflow,
    /// `/workflows/import`
    WorkflowImport,
    /// `/jobs`
    Jobs,
    /// `/jobs/{id}`
    Job,
    /// `/jobs/{id}/cancel`
    JobCancel,
    /// `/jobs/{id}/events`
    JobEvents,
    /// `/jobs/{id}/logs`
    JobLogs,
    /// `/jobs/{id}/webhooks`
    JobWebhooks,
    /// `/jobs/{id}/webhook/redeliver`
    JobWebhookRedeliver,
    /// `/outputs/{id}`
    Outputs,
    /// `/outputs/{id}/{file}`
    OutputFile,
    /// `/metrics`
    Metrics,
    /// `/audit`
    Audit,
    /// `/backends`
    Backends,
    /// `/backends/{id}/drain`
    BackendDrain,
    /// `/backends/{id}/resume`
    BackendResume,
    /// `/`: the dashboard's page.
    Dashboard,
    /// `/ui/{file}`: the dashboard's scripts, styles and icon.
    DashboardFile,
    /// `/docs`: the API docs page (renders `/openapi.json`; its files are under `/ui/`).
    Docs,
    /// `/admin/backup`
    AdminBackup,
}

impl Route {
    /// The methods the route answers, for `Allow` (RFC 9110 §15.5.6).
    pub fn allowed_methods(self) -> &'static str {
        match self {
            Route::Health
            | Route::Livez
            | Route::Readyz
            | Route::Capabilities
            | Route::OpenApi
            | Route::Job
            | Route::JobEvents
            | Route::JobLogs
            | Route::JobWebhooks
            | Route::Outputs
            | Route::Metrics
            | Route::Audit
            | Route::Backends => "GET",
            Route::OutputFile | Route::Dashboard | Route::DashboardFile | Route::Docs => "GET, HEAD",
            Route::Workflows => "GET, POST",
            Route::Jobs => "GET, POST",
            Route::Workflow => "GET, PUT, DELETE",
            Route::JobCancel
            | Route::JobWebhookRedeliver
            | Route::BackendDrain
            | Route::BackendResume
            | Route::WorkflowImport
            | Route::AdminBackup => "POST",
        }
    }

    /// The body `method` on this route takes (its media type is checked before the handler).
    pub fn body_kind(self, method: &Method) -> BodyKind {
        match (self, method) {
            (Route::Workflows | Route::WorkflowImport, &Method::POST) | (Route::Workflow, &Method::PUT) => {
                BodyKind::Json
            }
            (Route::Jobs, &Method::POST) => BodyKind::JsonOrMultipart,
            (Route::Workflow, &Method::DELETE)
            | (
                Route::JobCancel
                | Route::JobWebhookRedeliver
                | Route::BackendDrain
                | Route::BackendResume
                | Route::AdminBackup,
                &Method::POST,
            ) => BodyKind::Empty,
            // Reads, and methods the route does not take (answered 405).
            _ => BodyKind::Ignored,
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
    /// The route table: each route with its pattern (the metrics' `route` label).
    router: matchit::Router<(Route, &'static str)>,
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
}

impl Ctx {
    /// Build the context and the route table; `stop` ends open event streams. An error if
    /// the bulk pool's threads cannot be started.
    pub fn new(gateway: Gateway, stop: tokio_util::sync::CancellationToken) -> std::io::Result<Ctx> {
        let mut router = matchit::Router::new();
        let table = [
            ("/health", Route::Health),
            ("/livez", Route::Livez),
            ("/readyz", Route::Readyz),
            ("/capabilities", Route::Capabilities),
            ("/openapi.json", Route::OpenApi),
            ("/workflows", Route::Workflows),
            ("/workflows/{id}", Route::Workflow),
            // A static segment wins over `{id}`, so no workflow can be named `import`.
            ("/workflows/import", Route::WorkflowImport),
            ("/jobs", Route::Jobs),
            ("/jobs/{id}", Route::Job),
            ("/jobs/{id}/cancel", Route::JobCancel),
            ("/jobs/{id}/events", Route::JobEvents),
            ("/jobs/{id}/logs", Route::JobLogs),
            ("/jobs/{id}/webhooks", Route::JobWebhooks),
            ("/jobs/{id}/webhook/redeliver", Route::JobWebhookRedeliver),
            ("/outputs/{id}", Route::Outputs),
            ("/outputs/{id}/{file}", Route::OutputFile),
            ("/metrics", Route::Metrics),
            ("/audit", Route::Audit),
            ("/backends", Route::Backends),
            ("/backends/{id}/drain", Route::BackendDrain),
            ("/backends/{id}/resume", Route::BackendResume),
            ("/", Route::Dashboard),
            ("/ui/{file}", Route::DashboardFile),
            ("/docs", Route::Docs),
            ("/admin/backup", Route::AdminBackup),
        ];
        for (path, route) in table {
            router.insert(path, (route, path)).expect("the route table is valid");
        }
        let limits = Limits::new(&gateway.config.api_limits);
        let guard = Guard::new(&gateway.config);
        Ok(Ctx {
            gateway,
            router,
            started: std::time::Instant::now(),
            stop,
            limits,
            guard,
            bulk: super::bulk::Bulk::start()?,
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

/// Who is calling: None in open mode and on the public routes (the probes, the dashboard's
/// static files, which hold no data; `/metrics` with `METRICS_PUBLIC`), else the principal
/// of valid credentials, else `AUTH_FAILED`.
/// Unknown paths need credentials too, so the route table cannot be probed.
fn authenticate(ctx: &Ctx, headers: &HeaderMap, route: Option<Route>) -> Result<Option<Principal>, Error> {
    let config = &ctx.gateway.config;
    let public = match route {
        Some(Route::Health | Route::Livez | Route::Readyz | Route::Dashboard | Route::DashboardFile | Route::Docs) => {
            true
        }
        Some(Route::Metrics) => config.metrics_public,
        _ => false,
    };
    if !config.auth.enabled() {
        return Ok(None);
    }
    if public {
        // Valid credentials on `/health` earn its details; anything else gets the public
        // answer (a probe with a stale key still learns up or down).
        let health = matches!(route, Some(Route::Health));
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        return Ok(health.then(|| config.auth.authenticate(api_key, bearer_token(headers)).ok()).flatten());
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
        let (route, pattern) = *m.value;
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
        (route, pattern, params)
    });
    let pattern = matched.as_ref().map_or(UNMATCHED_ROUTE, |(_, p, _)| *p);
    let client = Client::identify(peer, req.headers(), &ctx.limits.trusted_proxies);
    let preflight = Cors::is_preflight(&method, req.headers());
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    let span = tracing::info_span!("request", correlation_id = %correlation_id);
    async move {
        // Probes are never rate limited (a throttled probe would restart a healthy gateway).
        let is_probe = matches!(matched, Some((Route::Health | Route::Livez | Route::Readyz, _, _)));
        // Rate first, so that guessing credentials is throttled too.
        let rate = ctx.limits.rate.as_ref().filter(|_| !is_probe).map(|r| r.check(&client));
        let refused = ctx.guard.check(&method, req.headers(), preflight).err();
        // Browsers send CORS preflights without credentials.
        let caller =
            if preflight { Ok(None) } else { authenticate(ctx, req.headers(), matched.as_ref().map(|(r, _, _)| *r)) };
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
                if let Some((_, _, params)) = matched.as_mut() {
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
    matched: Option<(Route, &str, Params)>,
    preflight: bool,
    client: &Client,
) -> Result<Resp, Error> {
    let path = req.uri().path().to_string();
    let (route, _, params) = matched.ok_or_else(|| Error::new(ErrorCode::NotFound, format!("no route for {path}")))?;
    if preflight {
        // CORS fields (for allowed origins only) are added by `handle`.
        return Ok(reply::empty(http::StatusCode::NO_CONTENT));
    }
    if params.query.len() > QUERY_PARAMS_MAX {
        return Err(Error::validation("query", format!("more than {QUERY_PARAMS_MAX} query parameters")));
    }
    use Route::*;
    let method = req.method().clone();
    // Roles: workflow changes, the audit log, backend drains and (unless public) metrics
    // are for admins; reading backend states is for any authenticated caller.
    match (route, &method) {
        (Workflows | WorkflowImport, &Method::POST) | (Workflow, &Method::PUT | &Method::DELETE) => {
            admin_only(&params, "changing workflows")?
        }
        (Audit, &Method::GET) => admin_only(&params, "reading the audit log")?,
        (Metrics, &Method::GET) => admin_only(&params, "reading metrics")?,
        (BackendDrain | BackendResume, &Method::POST) => admin_only(&params, "draining or resuming a backend")?,
        (AdminBackup, &Method::POST) => admin_only(&params, "taking a backup")?,
        _ => {}
    }
    let has_body = !hyper::body::Body::is_end_stream(req.body());
    guard::check_media_type(route.body_kind(&method), req.headers(), has_body)?;
    match (route, &method) {
        (Health, &Method::GET) => {
            // Details (backend URLs, versions, errors) for callers who may see them.
            let details = !ctx.gateway.config.auth.enabled() || params.caller.is_some();
            handlers::health(ctx, details).await
        }
        (Livez, &Method::GET) => handlers::livez(ctx),
        (Readyz, &Method::GET) => handlers::readyz(ctx),
        (Capabilities, &Method::GET) => handlers::capabilities(ctx),
        (OpenApi, &Method::GET) => handlers::openapi(ctx),
        (Workflows, &Method::GET) => handlers::list_workflows(ctx),
        (Workflows, &Method::POST) => handlers::create_workflow(ctx, &params, req).await,
        (Workflow, &Method::GET) => handlers::get_workflow(ctx, &params),
        (Workflow, &Method::PUT) => handlers::update_workflow(ctx, &params, req).await,
        (Workflow, &Method::DELETE) => handlers::delete_workflow(ctx, &params).await,
        (WorkflowImport, &Method::POST) => handlers::import_workflow(ctx, &params, req).await,
        (Jobs, &Method::GET) => handlers::list_jobs(ctx, &params),
        (Jobs, &Method::POST) => handlers::create_job(ctx, &params, client, req).await,
        (Job, &Method::GET) => handlers::get_job(ctx, &params).await,
        (JobCancel, &Method::POST) => handlers::cancel_job(ctx, &params).await,
        (JobEvents, &Method::GET) => sse::job_events(ctx, &params, &req, client),
        (JobLogs, &Method::GET) => handlers::job_logs(ctx, &params),
        (JobWebhooks, &Method::GET) => handlers::job_webhooks(ctx, &params),
        (JobWebhookRedeliver, &Method::POST) => handlers::redeliver_webhooks(ctx, &params).await,
        (Outputs, &Method::GET) => handlers::list_outputs(ctx, &params),
        (OutputFile, &Method::GET | &Method::HEAD) => handlers::get_output(ctx, &params, &req).await,
        (Metrics, &Method::GET) => handlers::metrics(ctx),
        (Audit, &Method::GET) => handlers::audit(ctx, &params),
        (Backends, &Method::GET) => handlers::backends(ctx),
        (BackendDrain, &Method::POST) => handlers::set_draining(ctx, &params, true).await,
        (BackendResume, &Method::POST) => handlers::set_draining(ctx, &params, false).await,
        (Dashboard, &Method::GET | &Method::HEAD) => dashboard::serve(&method, req.headers(), None),
        (DashboardFile, &Method::GET | &Method::HEAD) => dashboard::serve(&method, req.headers(), Some(&params.file)),
        (Docs, &Method::GET | &Method::HEAD) => dashboard::serve(&method, req.headers(), Some("docs.html")),
        (AdminBackup, &Method::POST) => handlers::backup(ctx).await,
        _ => Err(Error::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed on {path}"))
            .with_details(serde_json::json!({ "allow": route.allowed_methods() }))),
    }
}
