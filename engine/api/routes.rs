//! The one route table. Every request gets a correlation id (echoed as
//! `X-Correlation-Id` and in error bodies); unknown paths are `404 NOT_FOUND`, known
//! paths with another method `405 METHOD_NOT_ALLOWED`.

use http::{HeaderValue, Method, Request};
use hyper::body::Incoming;

use super::handlers;
use super::reply::{self, Resp};
use crate::error::{Error, ErrorCode};
use crate::service::Gateway;

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/health`
    Health,
    /// `/capabilities`
    Capabilities,
    /// `/openapi.json`
    OpenApi,
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
    /// `/outputs/{id}`
    Outputs,
    /// `/outputs/{id}/{file}`
    OutputFile,
}

impl Route {
    /// The methods the route answers, for `Allow` (RFC 9110 §15.5.6).
    pub fn allowed_methods(self) -> &'static str {
        match self {
            Route::Health | Route::Capabilities | Route::OpenApi | Route::Job | Route::Outputs => "GET",
            Route::OutputFile => "GET, HEAD",
            Route::Workflows => "GET, POST",
            Route::Jobs => "POST",
            Route::Workflow => "GET, PUT, DELETE",
            Route::JobCancel => "POST",
        }
    }
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
}

impl Ctx {
    /// Build the context and the route table.
    pub fn new(gateway: Gateway) -> Ctx {
        let mut router = matchit::Router::new();
        let table = [
            ("/health", Route::Health),
            ("/capabilities", Route::Capabilities),
            ("/openapi.json", Route::OpenApi),
            ("/workflows", Route::Workflows),
            ("/workflows/{id}", Route::Workflow),
            ("/jobs", Route::Jobs),
            ("/jobs/{id}", Route::Job),
            ("/jobs/{id}/cancel", Route::JobCancel),
            ("/outputs/{id}", Route::Outputs),
            ("/outputs/{id}/{file}", Route::OutputFile),
        ];
        for (path, route) in table {
            router.insert(path, route).expect("the route table is valid");
        }
        Ctx { gateway, router, started: std::time::Instant::now() }
    }
}

/// A request's path parameters.
#[derive(Debug, Default)]
pub struct Params {
    /// `{id}`.
    pub id: String,
    /// `{file}`.
    pub file: String,
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
    };
    use Route::*;
    let method = req.method().clone();
    match (route, &method) {
        (Health, &Method::GET) => handlers::health(ctx).await,
        (Capabilities, &Method::GET) => handlers::capabilities(ctx),
        (OpenApi, &Method::GET) => handlers::openapi(ctx),
        (Workflows, &Method::GET) => handlers::list_workflows(ctx),
        (Workflows, &Method::POST) => handlers::create_workflow(ctx, req).await,
        (Workflow, &Method::GET) => handlers::get_workflow(ctx, &params),
        (Workflow, &Method::PUT) => handlers::update_workflow(ctx, &params, req).await,
        (Workflow, &Method::DELETE) => handlers::delete_workflow(ctx, &params).await,
        (Jobs, &Method::POST) => handlers::create_job(ctx, req).await,
        (Job, &Method::GET) => handlers::get_job(ctx, &params, &req),
        (JobCancel, &Method::POST) => handlers::cancel_job(ctx, &params).await,
        (Outputs, &Method::GET) => handlers::list_outputs(ctx, &params),
        (OutputFile, &Method::GET | &Method::HEAD) => handlers::get_output(ctx, &params, &req),
        _ => Err(Error::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed on {path}"))
            .with_details(serde_json::json!({ "allow": route.allowed_methods() }))),
    }
}
