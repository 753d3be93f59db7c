//! A webhook receiver for the tests: a small hyper server on 127.0.0.1 that records every
//! request (path, headers, body, arrival time) and answers from a per-path script
//! (status, extra headers), 200 once the script is used up. It can be "down": a port
//! reserved with nobody listening (connections refused) until [`Receiver::start_on`].

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::{DeadPort, eventually_within};

/// One request received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    /// Its path.
    pub path: String,
    /// Its headers, names lower-case.
    pub headers: HashMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

impl Hit {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("webhook body is not JSON: {e}"))
    }
}

/// An answer: a status and extra headers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Answer {
    /// Just a status.
    pub fn status(status: u16) -> Answer {
        Answer { status, headers: Vec::new(), delay: Duration::ZERO }
    }

    /// A status with a `Retry-After` in seconds.
    pub fn retry_after(status: u16, secs: u64) -> Answer {
        Answer { status, headers: vec![("retry-after".into(), secs.to_string())], delay: Duration::ZERO }
    }

    /// 200 after `delay` (a slow receiver).
    pub fn slow(delay: Duration) -> Answer {
        Answer { status: 200, headers: Vec::new(), delay }
    }
}

#[derive(Default)]
struct State {
    hits: Vec<Hit>,
    scripts: HashMap<String, VecDeque<Answer>>,
}

/// The receiver.
pub struct Receiver {
    /// Its port.
    pub port: u16,
    state: Arc<Mutex<State>>,
    /// The port while it is down: bound, not listening.
    reserved: Option<DeadPort>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// A receiver on port 0, listening.
    pub async fn start() -> Receiver {
        let mut r = Receiver::down();
        r.start_on().await;
        r
    }

    /// A receiver whose port is reserved but not listening (connections are refused).
    pub fn down() -> Receiver {
        let reserved = DeadPort::new();
        Receiver { port: reserved.port, state: Arc::default(), reserved: Some(reserved), task: None }
    }

    /// Start listening on its port (once: the port is the one [`Receiver::down`] reserved).
    pub async fn start_on(&mut self) {
        assert!(self.task.is_none(), "already listening");
        let listener = self.reserved.take().expect("a stopped receiver does not listen again").listen();
        let state = self.state.clone();
        self.task = Some(tokio::spawn(async move {
            // The connections end with this task (a JoinSet aborts its tasks when dropped):
            // a stopped receiver keeps no client's keep-alive connection answering.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    Some(_) = connections.join_next() => continue,
                };
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let at = Instant::now();
                            let path = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect();
                            let body =
                                req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                            let answer = {
                                let mut s = state.lock().unwrap();
                                let answer = s
                                    .scripts
                                    .get_mut(&path)
                                    .and_then(VecDeque::pop_front)
                                    .unwrap_or(Answer::status(200));
                                s.hits.push(Hit { at, path, headers, body, status: answer.status });
                                answer
                            };
                            tokio::time::sleep(answer.delay).await;
                            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = hyper::StatusCode::from_u16(answer.status).unwrap();
                            for (k, v) in answer.headers {
                                resp.headers_mut().insert(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    hyper::header::HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Stop listening and wait until its listener is closed: its port is free for another
    /// server (the backend that comes up where this one stood in for it). The port.
    pub async fn close(mut self) -> u16 {
        if let Some(task) = self.task.take() {
            task.abort();
            // An aborted task's future, holding the listener, is dropped when this returns.
            let _ = task.await;
        }
        self.port
    }

    /// Stop listening (connections are refused again).
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer the next requests to `path` with `answers`, in order.
    pub fn script(&self, path: &str, answers: Vec<Answer>) {
        self.state.lock().unwrap().scripts.entry(path.to_string()).or_default().extend(answers);
    }

    /// Every request so far, to any path.
    pub fn hits_all(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Every request to `path` so far.
    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.state.lock().unwrap().hits.iter().filter(|h| h.path == path).cloned().collect()
    }

    /// Wait until `path` got `n` requests (or panic after `within`).
    pub async fn wait_hits(&self, path: &str, n: usize, within: Duration) -> Vec<Hit> {
        let what = format!("{n} webhooks to {path}");
        eventually_within(within, what, async || {
            let hits = self.hits(path);
            if hits.len() >= n { Ok(hits) } else { Err(format!("{} hits", hits.len())) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
