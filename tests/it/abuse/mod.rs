//! Availability under hostile clients, tenants and plugins: each attack runs against the
//! real binary with a well-behaved client beside it. The test checks that the neighbour is
//! still served (a generous bound: starvation is what is tested, not speed) and that the
//! attacker gets its 4xx/429/507.
//!
//! Every part lives in its own file; [`Neighbour`] is the well-behaved client they share.

use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one request of the well-behaved client may take while an attack runs before
/// the test calls it starved. Seconds, not milliseconds: CI machines are slow and busy.
pub const SERVED_WITHIN: Duration = Duration::from_secs(5);

/// A well-behaved client: its own HTTP connection pool and, optionally, its own API key.
pub struct Neighbour {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// What the neighbour saw over one [`Neighbour::probe_for`] run.
#[derive(Debug)]
pub struct Served {
    /// Requests answered.
    pub answered: usize,
    /// The slowest answer.
    pub worst: Duration,
}

impl Neighbour {
    /// A neighbour of the gateway at `base` (`http://127.0.0.1:port`), calling with `key`.
    pub fn new(base: &str, key: Option<&str>) -> Neighbour {
        let http = reqwest::Client::builder()
            .timeout(SERVED_WITHIN)
            .pool_max_idle_per_host(2)
            .build()
            .expect("reqwest client");
        Neighbour { http, base: base.to_string(), key: key.map(str::to_string) }
    }

    fn with_key(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => rb.header("x-api-key", k),
            None => rb,
        }
    }

    /// `GET {path}`: the status and JSON body; panics when it is not answered within
    /// [`SERVED_WITHIN`] (starved).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let started = Instant::now();
        let resp = self.with_key(self.http.get(format!("{}{path}", self.base))).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("neighbour GET {path} starved after {:?}: {e}", started.elapsed()));
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `POST {path}` with a JSON body: the status and JSON body; panics when starved.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let started = Instant::now();
        let resp = self.with_key(self.http.post(format!("{}{path}", self.base)).json(body)).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("neighbour POST {path} starved after {:?}: {e}", started.elapsed()));
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// For `duration`, `GET` each of `paths` in turn (every 100 ms), asserting each answer
    /// is `200` and arrives within [`SERVED_WITHIN`].
    pub async fn probe_for(&self, paths: &[&str], duration: Duration) -> Served {
        let until = Instant::now() + duration;
        let mut served = Served { answered: 0, worst: Duration::ZERO };
        while Instant::now() < until {
            for path in paths {
                let started = Instant::now();
                let (status, body) = self.get(path).await;
                let took = started.elapsed();
                assert_eq!(status, 200, "neighbour GET {path} while under attack: {body}");
                served.answered += 1;
                served.worst = served.worst.max(took);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served.answered > 0, "the neighbour made no request");
        served
    }
}

mod conn;
mod disk;
mod mem;
mod parse;
mod store;
mod web;

#[cfg(feature = "wasm-plugins")]
mod plugins;
