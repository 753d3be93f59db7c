//! The REST API: the only module that knows HTTP. A hyper 1 server (accept loop with
//! graceful shutdown, [`server`]), one route table ([`routes`]), handlers that translate
//! between JSON and the service's domain calls ([`handlers`]), the response helpers
//! that shape every body and error the same way ([`reply`]), the Server-Sent Events
//! stream of a job ([`sse`]), the web dashboard's embedded files ([`dashboard`]), and the limits against abuse: rate limits, the per-client
//! job cap, CORS ([`limits`]); the checks of `Host`, `Origin` and media types ([`guard`]); the lower-priority threads
//! that scan and parse large bodies ([`bulk`]); the Model Context Protocol endpoint ([`mcp`]).

pub mod bulk;
pub mod dashboard;
pub mod download;
pub mod guard;
pub mod handlers;
pub mod limits;
pub mod mcp;
pub mod openapi;
pub mod reply;
pub mod routes;
pub mod server;
pub mod sse;

pub use server::{Server, serve};
