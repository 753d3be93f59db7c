//! The web dashboard: static files compiled into the binary from `engine/api/dashboard/`
//! (plain HTML, CSS and JavaScript; no build step, no CDN), served at `/` and `/ui/{file}`;
//! and the API docs page (`docs.html`, `docs.js`, `docs.css`) at `/docs`, which renders
//! `GET /openapi.json` with a viewer of our own (24 KB): of the packaged viewers only Swagger
//! UI renders under the policy below, and it would add 2.0 MB to the binary; Redoc, RapiDoc,
//! Scalar and Stoplight Elements need inline styles, `eval` or a font CDN, which it forbids.
//!
//! The files are public: they hold no data. The page asks for an API key or a JWT, keeps
//! it in the browser's session storage and calls the same REST API as any client, with
//! the same credentials, so it shows only what that key may see.
//!
//! Every answer carries a strong ETag (BLAKE3 of the file) and `Cache-Control: no-cache`,
//! so a browser revalidates with one `304` and never runs a stale script after an
//! upgrade; and a Content-Security-Policy that allows nothing but this origin (scripts,
//! styles, `fetch`) and `blob:` images (the thumbnails, fetched with the credentials).

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::reply::{self, Resp};
use crate::error::{Error, ErrorCode, Result};

/// One embedded file.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 8] = [
    Asset { name: "index.html", media_type: "text/html; charset=utf-8", body: include_bytes!("dashboard/index.html") },
    Asset {
        name: "common.js",
        media_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/common.js"),
    },
    Asset { name: "app.js", media_type: "text/javascript; charset=utf-8", body: include_bytes!("dashboard/app.js") },
    Asset { name: "style.css", media_type: "text/css; charset=utf-8", body: include_bytes!("dashboard/style.css") },
    Asset { name: "favicon.svg", media_type: "image/svg+xml", body: include_bytes!("dashboard/favicon.svg") },
    Asset { name: "docs.html", media_type: "text/html; charset=utf-8", body: include_bytes!("dashboard/docs.html") },
    Asset { name: "docs.js", media_type: "text/javascript; charset=utf-8", body: include_bytes!("dashboard/docs.js") },
    Asset { name: "docs.css", media_type: "text/css; charset=utf-8", body: include_bytes!("dashboard/docs.css") },
];

/// The policy of every dashboard answer: this origin only; images also from `blob:`
/// (thumbnails) and `data:` (the favicon's fallbacks), media from `blob:` (video and audio
/// outputs, fetched with the credential); no framing, no plugins, no forms posted elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
    media-src blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The strong ETags, computed once.
static ETAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|a| format!("\"{}\"", &blake3::hash(a.body).to_hex()[..32])).collect());

/// `GET`/`HEAD /` (`file` None), `/ui/{file}` and `/docs` (`docs.html`).
///
/// # Errors
/// `NOT_FOUND` for a file that is not one of the dashboard's.
pub fn serve(method: &Method, headers: &HeaderMap, file: Option<&str>) -> Result<Resp> {
    let name = file.unwrap_or("index.html");
    let (i, asset) = ASSETS
        .iter()
        .enumerate()
        .find(|(_, a)| a.name == name)
        .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("the dashboard has no file {name:?}")))?;
    let etag = &ETAGS[i];
    let mut resp = if super::download::not_modified(headers, etag) {
        reply::empty(StatusCode::NOT_MODIFIED)
    } else if method == Method::HEAD {
        let mut r = reply::empty(StatusCode::OK);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.media_type));
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
        r
    } else {
        reply::bytes(StatusCode::OK, asset.media_type, Bytes::from_static(asset.body))
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn get(file: Option<&str>, headers: &HeaderMap) -> Resp {
        serve(&Method::GET, headers, file).expect("a dashboard file")
    }

    #[tokio::test]
    async fn every_file_is_served_with_its_type_policy_and_etag() {
        for asset in &ASSETS {
            let resp = get(Some(asset.name), &HeaderMap::new());
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], asset.media_type);
            assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
            let etag = resp.headers()[header::ETAG].to_str().unwrap().to_string();
            assert_eq!(etag.len(), 34);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], asset.body);
            // Revalidation: the same ETag is a 304 without a body.
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&format!("\"x\", {etag}")).unwrap());
            let resp = get(Some(asset.name), &h);
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
            assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty());
        }
        let index = get(None, &HeaderMap::new());
        assert_eq!(index.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
    }

    #[test]
    fn other_files_are_not_found_and_head_has_no_body() {
        for bad in ["", "../Cargo.toml", "index.htm", "app.js/", "APP.JS"] {
            let err = serve(&Method::GET, &HeaderMap::new(), Some(bad)).unwrap_err();
            assert_eq!(err.code, ErrorCode::NotFound, "{bad}");
        }
        let head = serve(&Method::HEAD, &HeaderMap::new(), Some("app.js")).unwrap();
        let app = ASSETS.iter().find(|a| a.name == "app.js").unwrap();
        assert_eq!(head.headers()[header::CONTENT_LENGTH], app.body.len().to_string().as_str());
    }

    #[test]
    fn the_pages_load_nothing_from_elsewhere() {
        // No CDN: every src/href of the dashboard and the docs page is a fragment or a path
        // of this origin, every `/ui/` one a file we have, and the scripts and styles name
        // no other origin (the CSP would block it anyway).
        for (page, n_files_min) in [("index.html", 3), ("docs.html", 5)] {
            let html = std::str::from_utf8(ASSETS.iter().find(|a| a.name == page).unwrap().body).unwrap();
            let mut files = 0;
            for attr in ["src=\"", "href=\""] {
                for part in html.split(attr).skip(1) {
                    let target = part.split('"').next().unwrap();
                    assert!(
                        target.starts_with('#') || (target.starts_with('/') && !target.starts_with("//")),
                        "{target}"
                    );
                    if let Some(file) = target.strip_prefix("/ui/") {
                        assert!(ASSETS.iter().any(|a| a.name == file), "{target}");
                        files += 1;
                    }
                }
            }
            assert!(files >= n_files_min, "{page} loads its script, styles and icon");
        }
        for asset in ASSETS.iter().filter(|a| a.name != "favicon.svg") {
            let text = std::str::from_utf8(asset.body).unwrap();
            assert!(!text.contains("http://") && !text.contains("https://"), "{} names another origin", asset.name);
        }
    }
}
