//! `GET /ws`: the WebSocket endpoint. Registration by `clientId` (or a generated
//! `uuid4().hex`), the `status` greeting with `sid`, the reconnect `executing {node}`
//! variant, `feature_flags` negotiation on the first message, and ComfyUI's same-sid
//! quirk: a new socket replaces the registry entry without closing the old one, and the
//! old one's close unregisters whatever is registered under that sid.

use super::state::Shared;
use super::state::{SocketEntry, WS_QUEUE_MESSAGES_MAX, WsOut, ws_text};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// Answer the upgrade request and spawn the socket task.
pub fn upgrade(shared: Arc<Shared>, req: &mut Request<Incoming>, client_id: Option<String>) -> Response<Full<Bytes>> {
    let is_ws = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes()));
    let (true, Some(accept)) = (is_ws, key) else {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"400: No WebSocket UPGRADE hdr: None\n Can \"Upgrade\" only to \"WebSocket\".",
        )));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
        return resp;
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(crate::comfy::ws::ws_config()),
                )
                .await;
                run_socket(shared, ws, client_id).await;
            }
            Err(e) => tracing::debug!(error = %e, "sim: websocket upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("websocket"));
    h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

async fn run_socket<S>(shared: Arc<Shared>, ws: WebSocketStream<S>, client_id: Option<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(WS_QUEUE_MESSAGES_MAX);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let kill = CancellationToken::new();
    let sid = match client_id.filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let (mut sink, mut stream) = ws.split();
    let greeting = {
        let mut inner = shared.lock();
        inner.sockets.remove(&sid);
        inner.sockets.insert(sid.clone(), SocketEntry { conn_id, tx, preview_metadata: false });
        inner.connections.insert(conn_id, kill.clone());
        let mut msgs = vec![ws_text(
            "status",
            &json!({"status": {"exec_info": {"queue_remaining": inner.queue_remaining()}}, "sid": sid}),
        )];
        if inner.client_id.as_deref() == Some(sid.as_str())
            && let Some(node) = &inner.last_node_id
        {
            msgs.push(ws_text("executing", &json!({"node": node})));
        }
        msgs
    };
    let mut greeted = true;
    for m in greeting {
        if sink.send(Message::text(m)).await.is_err() {
            greeted = false;
            break;
        }
    }
    let mut rx = Some(rx);
    let mut first_message = true;
    while greeted && !shared.shutdown.is_cancelled() {
        tokio::select! {
            _ = kill.cancelled() => {
                // Fault dropWs: vanish without a close frame.
                return;
            }
            _ = shared.shutdown.cancelled() => return,
            out = async {
                match rx.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let msg = match out {
                    Some(WsOut::Text(t)) => Message::text(t),
                    Some(WsOut::Binary(b)) => Message::binary(b),
                    None => { rx = None; continue; }
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        if first_message && v.get("type").and_then(Value::as_str) == Some("feature_flags") {
                            let wants = v.get("data").and_then(|d| d.get("supports_preview_metadata")).and_then(Value::as_bool).unwrap_or(false);
                            let mut inner = shared.lock();
                            if let Some(e) = inner.sockets.get_mut(&sid) {
                                e.preview_metadata = wants;
                            }
                            let flags = json!({"supports_preview_metadata": true, "max_upload_size": shared.config.max_upload_bytes()});
                            inner.send("feature_flags", &flags, Some(&sid));
                        }
                        first_message = false;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = sink.close().await;
    let mut inner = shared.lock();
    // ComfyUI: `self.sockets.pop(sid, None)`, even if a newer socket owns the sid.
    inner.sockets.remove(&sid);
    inner.connections.remove(&conn_id);
}
