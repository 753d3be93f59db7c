//! The one route table. Every request gets a correlation id (echoed as
//! `X-Correlation-Id` and in error bodies); unknown paths are `404 NOT_FOUND`, known
//! paths with another method `405 METHOD_NOT_ALLOWED`.

use http::{HeaderValue, Method, Request};
use hyper::body::Incoming;

use super::reply::{self, Resp};
use super::{handlers, sse};
use crate::error::{Error, ErrorCode};
use crate::service::Gateway;

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/health`
    Health,
    /// `/capabilities`
    Capabilities,
    /// `/workflows`
    Workflows,
    /// `/workflows/{id}`
    Workflow,
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
    /// `/outputs/{id}`
    Outputs,
    /// `/outputs/{id}/{file}`
    OutputFile,
}

/// Everything a handler needs.
#[derive(Debug)]
pub struct Ctx {
    /// The service.
    pub gateway: Gateway,
    /// The route table.
    router: matchit::Router<Route>,
    /// When the server started.
    pub started: std::time::Instant,
    /// Cancelled when the server stops: ends open event streams.
    pub stop: tokio_util::sync::CancellationToken,
}

impl Ctx {
    /// Build the context and the route table; `stop` ends open event streams.
    pub fn new(gateway: Gateway, stop: tokio_util::sync::CancellationToken) -> Ctx {
        let mut router = matchit::Router::new();
        let table = [
            ("/health", Route::Health),
            ("/capabilities", Route::Capabilities),
            ("/workflows", Route::Workflows),
            ("/workflows/{id}", Route::Workflow),
            ("/jobs", Route::Jobs),
            ("/jobs/{id}", Route::Job),
            ("/jobs/{id}/cancel", Route::JobCancel),
            ("/jobs/{id}/events", Route::JobEvents),
            ("/jobs/{id}/logs", Route::JobLogs),
            ("/outputs/{id}", Route::Outputs),
            ("/outputs/{id}/{file}", Route::OutputFile),
        ];
        for (path, route) in table {
            router.insert(path, route).expect("the route table is valid");
        }
        Ctx { gateway, router, started: std::time::Instant::now(), stop }
    }
}

/// A request's path parameters.
#[derive(Debug, Default)]
pub struct Params {
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

/// Route and answer one request.
pub async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Resp {
    let correlation_id = uuid::Uuid::new_v4().simple().to_string();
    let mut resp = match route(ctx, req).await {
        Ok(resp) => resp,
        Err(err) => reply::error(&err, &correlation_id),
    };
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        resp.headers_mut().insert("x-correlation-id", v);
    }
    resp
}

async fn route(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp, Error> {
    let path = req.uri().path().to_string();
    let matched = ctx.router.at(&path).map_err(|_| Error::new(ErrorCode::NotFound, format!("no route for {path}")))?;
    let route = *matched.value;
    let params = Params {
        id: matched.params.get("id").unwrap_or("").to_string(),
        file: matched.params.get("file").unwrap_or("").to_string(),
        query: form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect(),
    };
    use Route::*;
    let method = req.method().clone();
    match (route, &method) {
        (Health, &Method::GET) => handlers::health(ctx).await,
        (Capabilities, &Method::GET) => handlers::capabilities(ctx),
        (Workflows, &Method::GET) => handlers::list_workflows(ctx),
        (Workflows, &Method::POST) => handlers::create_workflow(ctx, req).await,
        (Workflow, &Method::GET) => handlers::get_workflow(ctx, &params),
        (Workflow, &Method::PUT) => handlers::update_workflow(ctx, &params, req).await,
        (Workflow, &Method::DELETE) => handlers::delete_workflow(ctx, &params).await,
        (Jobs, &Method::GET) => handlers::list_jobs(ctx, &params),
        (Jobs, &Method::POST) => handlers::create_job(ctx, &params, req).await,
        (Job, &Method::GET) => handlers::get_job(ctx, &params),
        (JobCancel, &Method::POST) => handlers::cancel_job(ctx, &params).await,
        (JobEvents, &Method::GET) => sse::job_events(ctx, &params, &req),
        (JobLogs, &Method::GET) => handlers::job_logs(ctx, &params),
        (Outputs, &Method::GET) => handlers::list_outputs(ctx, &params),
        (OutputFile, &Method::GET) => handlers::get_output(ctx, &params, &req),
        _ => Err(Error::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed on {path}"))),
    }
}
