//! One delivery attempt: the message body (built only from the stored delivery, so it is
//! byte-identical on every attempt, before and after a restart), the signed headers, and
//! the POST to the checked addresses of the callback URL, bounded by `WEBHOOK_TIMEOUT_MS`,
//! with no redirect followed.

use std::time::Duration;

use super::Settings;
use super::policy::check_destination;
use super::schedule::{Outcome, parse_retry_after};
use super::sign::{standard_signature, x_signature};
use crate::domain::{Delivery, Job, Links, now_ms};
use crate::ssrf::pinned_client;
use crate::wire::job::WebhookPayload;

/// The Standard Webhooks payload of a delivery: `{type, timestamp, data}`, where `data` is
/// the job as the API shows it (`job`: the delivery's snapshot with sealed fields opened)
/// with its links made by `links` (absolute: `Config::webhook_links`), plus `progress: {node, percent}` for
/// `job.progress`. `timestamp` is when the event happened, not when it is sent.
pub fn body(delivery: &Delivery, job: &Job, links: &Links) -> Vec<u8> {
    serde_json::to_vec(&WebhookPayload::new(delivery, job, links)).expect("a wire type serializes")
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// What went wrong (None when delivered).
    pub error: Option<String>,
    /// For the schedule.
    pub outcome: Outcome,
}

impl Sent {
    fn failed(status: Option<u16>, error: String, retry_after: Option<Duration>) -> Sent {
        Sent { status, error: Some(error), outcome: Outcome::Failed { retry_after } }
    }
}

/// POST `body` as message `msg_id` to `url`: the destination checked again, then one
/// request to the checked addresses, the whole bounded by `settings.timeout`.
pub async fn attempt(settings: &Settings, url: &str, msg_id: &str, body: &[u8]) -> Sent {
    let seconds = settings.timeout.as_secs_f64();
    match tokio::time::timeout(settings.timeout, attempt_unbounded(settings, url, msg_id, body)).await {
        Ok(sent) => sent,
        Err(_) => Sent::failed(None, format!("no answer within {seconds} s (WEBHOOK_TIMEOUT_MS)"), None),
    }
}

async fn attempt_unbounded(settings: &Settings, url: &str, msg_id: &str, body: &[u8]) -> Sent {
    let dest = match check_destination(url, settings).await {
        Ok(dest) => dest,
        Err(reason) => return Sent::failed(None, format!("callbackUrl {reason}"), None),
    };
    let client = match pinned_client(&dest.host, &dest.addrs).build() {
        Ok(client) => client,
        Err(e) => return Sent::failed(None, format!("cannot build the HTTP client: {e}"), None),
    };
    let ts_secs = (now_ms() / 1000) as i64;
    let mut req = client
        .post(dest.url)
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts_secs.to_string());
    if let Some(key) = &settings.key {
        req = req
            .header("webhook-signature", standard_signature(key, msg_id, ts_secs, body))
            .header("x-signature", x_signature(key, body));
    }
    let resp = match req.body(body.to_vec()).send().await {
        Ok(resp) => resp,
        Err(e) => return Sent::failed(None, format!("request failed: {}", error_chain(&e)), None),
    };
    let status = resp.status().as_u16();
    match status {
        200..=299 => Sent { status: Some(status), error: None, outcome: Outcome::Delivered },
        410 => Sent {
            status: Some(status),
            error: Some("HTTP 410 Gone: the endpoint is disabled until a redelivery".to_string()),
            outcome: Outcome::Gone,
        },
        _ => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now_ms()));
            let why = if (300..400).contains(&status) { " (redirects are not followed)" } else { "" };
            Sent::failed(Some(status), format!("HTTP {status}{why}"), retry_after)
        }
    }
}

/// An error with its sources, e.g. "error sending request: connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use serde_json::json;

    use crate::domain::{DeliveryState, OutputRef, WebhookEvent};
    use crate::webhooks::sign::{SignedHeaders, SigningKey, verify};
    use crate::webhooks::{DomainList, Settings};

    fn delivery(event: WebhookEvent) -> Delivery {
        let id = uuid::Uuid::from_u128(7);
        let mut job = Job::new_queued(id, ("icon_512", 1), r#"{"prompt":"a fox"}"#.into(), "{}".into(), 0, 0, 1_000);
        job.outputs.push(OutputRef {
            name: "out_0.png".into(),
            node_id: "9".into(),
            media_type: "image/png".into(),
            size_bytes: 3,
            hash: [1; 32],
        });
        Delivery {
            seq: 1,
            id: "msg_0123456789abcdef0123456789abcdef".into(),
            job_id: id,
            event,
            url: String::new(),
            job,
            created_ms: 1_795_472_586_254,
            state: DeliveryState::Pending,
            n_attempts: 0,
            next_attempt_ms: 0,
            last_attempt_ms: None,
            last_status: None,
            last_error: None,
        }
    }

    #[test]
    fn body_is_the_standard_payload_with_absolute_urls_and_is_deterministic() {
        let d = delivery(WebhookEvent::Progress { node: "3".into(), percent: 50 });
        let bytes = body(&d, &d.job, &Links::under("https://gw.example.com/"));
        assert_eq!(
            bytes,
            body(&d, &d.job.clone(), &Links::under("https://gw.example.com/")),
            "byte-identical every time"
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "job.progress");
        assert_eq!(v["timestamp"], "2026-11-23T22:23:06.254Z");
        assert_eq!(v["data"]["jobId"], d.job_id.to_string());
        assert_eq!(v["data"]["outputs"][0]["url"], format!("https://gw.example.com/outputs/{}/out_0.png", d.job_id));
        assert_eq!(v["data"]["pollUrl"], format!("https://gw.example.com/jobs/{}", d.job_id));
        assert_eq!(v["data"]["progress"], json!({ "node": "3", "percent": 50 }));
        let done: serde_json::Value =
            serde_json::from_slice(&body(&delivery(WebhookEvent::Succeeded), &d.job, &Links::under("http://h:1")))
                .unwrap();
        assert_eq!(done["type"], "job.succeeded");
        assert!(done["data"].get("progress").is_none());
    }

    /// A one-request-per-connection HTTP receiver answering each request with the next of
    /// `answers` (raw status line and headers); returns its URL and the requests received.
    async fn receiver(answers: Vec<&'static str>) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for answer in answers {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then content-length bytes of body.
                loop {
                    let n = sock.read(&mut buf).await.unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    }
                }
                if answer != "hang" {
                    sock.write_all(answer.as_bytes()).await.unwrap();
                    let _ = tx.send(String::from_utf8_lossy(&req).to_string()).await;
                } else {
                    let _ = tx.send(String::from_utf8_lossy(&req).to_string()).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        });
        (url, rx)
    }

    fn header<'a>(req: &'a str, name: &str) -> Option<&'a str> {
        req.split("\r\n\r\n").next()?.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn local_settings(secret: Option<&str>) -> Settings {
        Settings {
            key: secret.map(|s| SigningKey::parse(s).unwrap()),
            allowed: DomainList::parse("127.0.0.1").unwrap(),
            // Generous: a local answer never runs into it, however loaded the machine.
            timeout: Duration::from_secs(30),
            ..Settings::default()
        }
    }

    #[tokio::test]
    async fn posts_signed_and_classifies_answers() {
        const OK: &str = "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
        const GONE: &str = "HTTP/1.1 410 Gone\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        const BUSY: &str = "HTTP/1.1 503 Busy\r\nretry-after: 7\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        const MOVED: &str = "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: 0\r\n\r\n";
        let (url, mut got) = receiver(vec![OK, GONE, BUSY, MOVED, "hang"]).await;
        let settings = local_settings(Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        let key = settings.key.clone().unwrap();
        let msg = "msg_0123456789abcdef0123456789abcdef";
        let body = br#"{"type":"job.succeeded"}"#;

        let sent = attempt(&settings, &url, msg, body).await;
        assert_eq!(sent, Sent { status: Some(204), error: None, outcome: Outcome::Delivered });
        let req = got.recv().await.unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
        assert!(req.ends_with(r#"{"type":"job.succeeded"}"#), "{req}");
        assert_eq!(header(&req, "content-type"), Some("application/json"));
        assert_eq!(header(&req, "webhook-id"), Some(msg));
        assert!(header(&req, "user-agent").unwrap().starts_with("comfyui-gateway/"));
        let ts = header(&req, "webhook-timestamp").unwrap();
        let signed = SignedHeaders { id: msg, timestamp: ts, signature: header(&req, "webhook-signature").unwrap() };
        let now = (now_ms() / 1000) as i64;
        assert_eq!(verify(&key, signed, body, now, 5), Ok(()));
        assert_eq!(header(&req, "x-signature"), Some(x_signature(&key, body).as_str()));

        let sent = attempt(&settings, &url, msg, body).await;
        assert_eq!((sent.status, sent.outcome), (Some(410), Outcome::Gone));
        got.recv().await.unwrap();
        let sent = attempt(&settings, &url, msg, body).await;
        assert_eq!(sent.status, Some(503));
        assert_eq!(sent.outcome, Outcome::Failed { retry_after: Some(Duration::from_secs(7)) });
        got.recv().await.unwrap();
        let sent = attempt(&settings, &url, msg, body).await;
        assert_eq!(sent.status, Some(302));
        assert!(sent.error.unwrap().contains("redirects are not followed"));
        got.recv().await.unwrap();
        // A receiver that never answers (it holds the connection 5 s) runs into the timeout.
        let hasty = Settings { timeout: Duration::from_millis(500), ..settings.clone() };
        let sent = attempt(&hasty, &url, msg, body).await;
        assert_eq!((sent.status, sent.outcome), (None, Outcome::Failed { retry_after: None }));
        assert!(sent.error.unwrap().contains("WEBHOOK_TIMEOUT_MS"));
        // Nobody listens any more on a closed port: a connection error, retried.
        let sent = attempt(&settings, "http://127.0.0.1:1/hook", msg, body).await;
        assert!(sent.error.unwrap().contains("request failed"));
    }

    #[tokio::test]
    async fn unsigned_without_a_secret_and_refused_destinations_are_not_called() {
        const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let (url, mut got) = receiver(vec![OK]).await;
        let sent = attempt(&local_settings(None), &url, "msg_x", b"{}").await;
        assert_eq!(sent.outcome, Outcome::Delivered);
        let req = got.recv().await.unwrap();
        assert_eq!(header(&req, "webhook-signature"), None);
        assert_eq!(header(&req, "x-signature"), None);
        assert!(header(&req, "webhook-timestamp").is_some());
        // The guard applies at delivery time too: loopback is refused without the list.
        let sent =
            attempt(&Settings { timeout: Duration::from_millis(500), ..Settings::default() }, &url, "msg_x", b"{}")
                .await;
        assert!(sent.status.is_none() && sent.error.unwrap().contains("loopback"));
    }
}
