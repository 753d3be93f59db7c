//! What keeps a browser page from using the gateway behind its user's back, applied in
//! `routes::handle` before authentication:
//!
//! - **Host** (against DNS rebinding: a site whose name the attacker points at 127.0.0.1):
//!   in open mode, and with credentials when `ALLOWED_HOSTS` is set, the `Host` header must
//!   name the bound address, a loopback name (`localhost`, `127.0.0.1`, `[::1]`, any port),
//!   `PUBLIC_URL`'s host or an `ALLOWED_HOSTS` entry; with the gateway bound to every
//!   interface (`0.0.0.0`, `::`) any IP address is the bound one (a name is needed to
//!   rebind). Otherwise `403 HOST_NOT_ALLOWED`.
//! - **Origin** (cross-site request forgery): in open mode a state-changing request (POST,
//!   PUT, DELETE, PATCH) from a browser page of another origin (`Origin` neither the
//!   request's own host nor in `CORS_ORIGINS`, or `Sec-Fetch-Site: cross-site`) is
//!   `403 CROSS_ORIGIN_REFUSED`. With credentials a page cannot send them cross-origin
//!   without a CORS preflight, which only `CORS_ORIGINS` pass.
//! - **Media type**: a state-changing route takes only its real body type
//!   (`application/json`, and `multipart/form-data` for `POST /jobs`); a body in any other
//!   type, or without one, is `415 UNSUPPORTED_MEDIA_TYPE`. The types a page may send
//!   cross-origin without a preflight (`text/plain`, forms) are exactly the refused ones.
//!   Routes without a body (cancel, drain, ...) take an empty body of any type.

use std::net::IpAddr;

use http::{HeaderMap, Method, header};

use crate::config::{AllowedHosts, CorsOrigins, host_name};
use crate::error::{Error, ErrorCode};

/// The body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Reads and routes without a body: any body is left unread.
    Ignored,
    /// A state-changing route without a body: an empty one of any type, or JSON.
    Empty,
    /// A JSON object.
    Json,
    /// A JSON object, or `multipart/form-data` with the JSON in a part.
    JsonOrMultipart,
}

/// The request checks, built from the configuration.
#[derive(Debug)]
pub struct Guard {
    /// No credentials configured.
    open: bool,
    /// The host rule; None checks no host.
    hosts: Option<Hosts>,
    /// `CORS_ORIGINS`: origins whose pages may write.
    cors: CorsOrigins,
}

#[derive(Debug)]
struct Hosts {
    /// The bound address.
    bound: IpAddr,
    /// `ALLOWED_HOSTS` and `PUBLIC_URL`'s host.
    names: Vec<String>,
}

impl Guard {
    /// From the configuration: `open` when no credentials are configured.
    pub fn new(config: &crate::config::Config) -> Guard {
        let open = !config.auth.enabled();
        let limits = &config.api_limits;
        let hosts = match &limits.allowed_hosts {
            AllowedHosts::Any => None,
            AllowedHosts::List(list) if list.is_empty() && !open => None,
            AllowedHosts::List(list) => {
                let mut names = list.clone();
                if let Some(h) = reqwest::Url::parse(&config.public_url).ok().and_then(|u| u.host_str().map(host_name))
                {
                    names.push(h);
                }
                Some(Hosts { bound: config.host, names })
            }
        };
        Guard { open, hosts, cors: limits.cors.clone() }
    }

    /// Check a request's `Host` and, for a state-changing one in open mode, its origin.
    ///
    /// # Errors
    /// `HOST_NOT_ALLOWED` or `CROSS_ORIGIN_REFUSED`.
    pub fn check(&self, method: &Method, headers: &HeaderMap, preflight: bool) -> Result<(), Error> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let (Some(rule), Some(host)) = (&self.hosts, host) {
            let name = host_name(host);
            if !rule.allows(&name) {
                return Err(Error::new(
                    ErrorCode::HostNotAllowed,
                    format!(
                        "the Host {name:?} is not this gateway's: call it by its address or a loopback name, \
                         or list the name in ALLOWED_HOSTS"
                    ),
                ));
            }
        }
        let writes = matches!(*method, Method::POST | Method::PUT | Method::DELETE | Method::PATCH);
        if self.open && writes && !preflight {
            self.check_origin(headers, host)?;
        }
        Ok(())
    }

    fn check_origin(&self, headers: &HeaderMap, host: Option<&str>) -> Result<(), Error> {
        let refused = |why: &str| {
            Err(Error::new(
                ErrorCode::CrossOriginRefused,
                format!(
                    "{why}: without credentials configured, only pages of this gateway's origin or of CORS_ORIGINS may change anything"
                ),
            ))
        };
        let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("null"));
        if let Some(origin) = origin {
            let listed = match &self.cors {
                CorsOrigins::Any => true,
                CorsOrigins::List(list) => list.iter().any(|o| o == origin),
            };
            if listed {
                return Ok(());
            }
            if !same_origin(origin, host) {
                return refused("the request comes from another origin");
            }
        }
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).unwrap_or("");
        if site.eq_ignore_ascii_case("cross-site") {
            return refused("the request comes from another site (Sec-Fetch-Site)");
        }
        Ok(())
    }
}

impl Hosts {
    fn allows(&self, name: &str) -> bool {
        if name == "localhost" || self.names.iter().any(|n| n == name) {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.bound || self.bound.is_unspecified(),
            Err(_) => false,
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`, as browsers send it) names the same host and
/// port as the request's `Host` header.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let (Ok(url), Some(host)) = (reqwest::Url::parse(origin), host) else { return false };
    let Some(origin_host) = url.host_str() else { return false };
    let origin_port = url.port_or_known_default();
    let host_port = match host.trim().rsplit_once(':') {
        Some((_, p)) if !p.contains(']') => p.parse::<u16>().ok(),
        _ => None,
    }
    .or_else(|| url.port_or_known_default().filter(|_| url.port().is_none()));
    host_name(origin_host) == host_name(host) && origin_port == host_port
}

/// Check the media type of a request's body against what its route takes; `has_body` is
/// whether any body bytes may follow.
///
/// # Errors
/// `UNSUPPORTED_MEDIA_TYPE` naming what the route takes.
pub fn check_media_type(kind: BodyKind, headers: &HeaderMap, has_body: bool) -> Result<(), Error> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let json = essence.as_deref() == Some("application/json");
    let (ok, takes) = match kind {
        BodyKind::Ignored => return Ok(()),
        BodyKind::Empty => (!has_body || json, "no body (or application/json)"),
        BodyKind::Json => (json, "application/json"),
        BodyKind::JsonOrMultipart => {
            (json || essence.as_deref() == Some("multipart/form-data"), "application/json or multipart/form-data")
        }
    };
    // No body and no type: the handler names what is missing (400).
    if ok || (!has_body && essence.is_none()) {
        return Ok(());
    }
    let got = match &essence {
        Some(t) => format!("a body of type {t:?}"),
        None => "a body without Content-Type".to_string(),
    };
    Err(Error::new(ErrorCode::UnsupportedMediaType, format!("this route takes {takes}, not {got}"))
        .with_details(serde_json::json!({ "accepted": takes })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn guard(open: bool, bound: &str, names: &[&str], cors: CorsOrigins) -> Guard {
        let hosts = Hosts { bound: bound.parse().unwrap(), names: names.iter().map(|s| s.to_string()).collect() };
        Guard { open, hosts: Some(hosts), cors }
    }

    fn code(r: Result<(), Error>) -> Option<&'static str> {
        r.err().map(|e| e.code.as_str())
    }

    #[test]
    fn hosts_are_the_bound_address_loopback_names_and_the_list() {
        let g = guard(true, "127.0.0.1", &["gw.lan"], CorsOrigins::List(vec![]));
        for ok in ["127.0.0.1:3000", "localhost:3000", "LOCALHOST", "[::1]:3000", "127.0.0.2", "gw.lan:8080", "gw.lan."]
        {
            assert_eq!(code(g.check(&Method::GET, &headers(&[("host", ok)]), false)), None, "{ok}");
        }
        for bad in ["evil.example:3000", "localhost.evil.example", "10.0.0.1:3000", "gw.lan.evil"] {
            assert_eq!(
                code(g.check(&Method::GET, &headers(&[("host", bad)]), false)),
                Some("HOST_NOT_ALLOWED"),
                "{bad}"
            );
        }
        // No Host (HTTP/1.0 tools) is no browser.
        assert_eq!(code(g.check(&Method::GET, &HeaderMap::new(), false)), None);
        // Bound to every interface: any address, still no foreign name.
        let any = guard(true, "0.0.0.0", &[], CorsOrigins::List(vec![]));
        assert_eq!(code(any.check(&Method::GET, &headers(&[("host", "192.168.1.5:3000")]), false)), None);
        assert_eq!(
            code(any.check(&Method::GET, &headers(&[("host", "rebind.evil:3000")]), false)),
            Some("HOST_NOT_ALLOWED")
        );
    }

    #[test]
    fn open_mode_refuses_cross_origin_writes_only() {
        let cors = CorsOrigins::List(vec!["http://localhost:5173".into()]);
        let g = guard(true, "127.0.0.1", &[], cors);
        let host = ("host", "127.0.0.1:3000");
        let post = |extra: &[(&'static str, &'static str)]| {
            let mut all = vec![host];
            all.extend_from_slice(extra);
            code(g.check(&Method::POST, &headers(&all), false))
        };
        // Same origin (the dashboard), tools without Origin, and a CORS_ORIGINS page.
        assert_eq!(post(&[("origin", "http://127.0.0.1:3000"), ("sec-fetch-site", "same-origin")]), None);
        assert_eq!(post(&[]), None);
        assert_eq!(post(&[("origin", "http://localhost:5173"), ("sec-fetch-site", "cross-site")]), None);
        // Anyone else.
        assert_eq!(post(&[("origin", "https://evil.example")]), Some("CROSS_ORIGIN_REFUSED"));
        assert_eq!(post(&[("origin", "http://127.0.0.1:3001")]), Some("CROSS_ORIGIN_REFUSED"), "another port");
        assert_eq!(post(&[("origin", "null")]), Some("CROSS_ORIGIN_REFUSED"));
        assert_eq!(post(&[("sec-fetch-site", "cross-site")]), Some("CROSS_ORIGIN_REFUSED"));
        // Reads, preflights, and any request once credentials are configured.
        let h = headers(&[host, ("origin", "https://evil.example")]);
        assert_eq!(code(g.check(&Method::GET, &h, false)), None);
        assert_eq!(code(g.check(&Method::OPTIONS, &h, true)), None);
        let authed = Guard { open: false, ..guard(true, "127.0.0.1", &[], CorsOrigins::List(vec![])) };
        assert_eq!(code(authed.check(&Method::POST, &h, false)), None);
        // CORS_ORIGINS=* trusts every page.
        let star = guard(true, "127.0.0.1", &[], CorsOrigins::Any);
        assert_eq!(code(star.check(&Method::POST, &h, false)), None);
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        assert!(same_origin("http://127.0.0.1:3000", Some("127.0.0.1:3000")));
        assert!(same_origin("http://gw.example", Some("gw.example")));
        assert!(same_origin("https://gw.example", Some("GW.example:443")));
        assert!(same_origin("http://[::1]:3000", Some("[::1]:3000")));
        assert!(!same_origin("http://gw.example", Some("gw.example:3000")));
        assert!(!same_origin("http://127.0.0.1:3000", None));
        assert!(!same_origin("null", Some("127.0.0.1:3000")));
    }

    #[test]
    fn media_types_per_route() {
        let json = headers(&[("content-type", "Application/JSON; charset=utf-8")]);
        let multipart = headers(&[("content-type", "multipart/form-data; boundary=x")]);
        let text = headers(&[("content-type", "text/plain")]);
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let none = HeaderMap::new();
        let check = |k, h: &HeaderMap, body| code(check_media_type(k, h, body));
        assert_eq!(check(BodyKind::Json, &json, true), None);
        assert_eq!(check(BodyKind::Json, &multipart, true), Some("UNSUPPORTED_MEDIA_TYPE"));
        assert_eq!(check(BodyKind::JsonOrMultipart, &multipart, true), None);
        for h in [&text, &form, &none] {
            assert_eq!(check(BodyKind::Json, h, true), Some("UNSUPPORTED_MEDIA_TYPE"));
            assert_eq!(check(BodyKind::JsonOrMultipart, h, true), Some("UNSUPPORTED_MEDIA_TYPE"));
            // A POST without body (cancel, drain) keeps working whatever it says.
            assert_eq!(check(BodyKind::Empty, h, false), None);
            assert_eq!(check(BodyKind::Empty, h, true), Some("UNSUPPORTED_MEDIA_TYPE"));
            assert_eq!(check(BodyKind::Ignored, h, true), None);
        }
        assert_eq!(check(BodyKind::Empty, &json, true), None);
        assert_eq!(check(BodyKind::Json, &none, false), None, "no body: the handler's 400 says what is missing");
        assert_eq!(check(BodyKind::Json, &text, false), Some("UNSUPPORTED_MEDIA_TYPE"));
        let e = check_media_type(BodyKind::Json, &text, true).unwrap_err();
        assert_eq!(e.code.status(), 415);
        assert!(e.message.contains("application/json") && e.message.contains("text/plain"), "{}", e.message);
    }
}
