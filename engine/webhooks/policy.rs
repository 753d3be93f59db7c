//! Where webhooks may go: `WEBHOOK_ALLOWED_DOMAINS` over the gateway's SSRF gate
//! ([`crate::ssrf`], shared with URL inputs). Checked when a job is submitted
//! (`CALLBACK_NOT_ALLOWED`) and again before every attempt (DNS answers change); an attempt
//! connects only to the addresses checked for it.
//!
//! Rules: http or https, no credentials in the URL. With a non-empty list the host must be
//! an entry or a subdomain of one, on the entry's port when it names one (`host:port`; a
//! bare host allows every port). A host that *is* an entry (e.g. `127.0.0.1` for a local
//! receiver) may have any address; every other host must resolve only to public addresses
//! (no loopback, private, link-local, metadata, ...), subdomains of entries included.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::Settings;
use crate::error::{Error, ErrorCode};
use crate::ssrf::{self, Refusal};

/// `WEBHOOK_ALLOWED_DOMAINS`: host names (matching themselves and their subdomains) and IP
/// addresses (matching themselves), each on any port, or on one port when written
/// `host:port` (`[v6]:port`).
///
/// A bare host keeps meaning every port (compatible with lists written before ports could
/// be named); name the port (`127.0.0.1:9000`) when the host also runs other HTTP services,
/// ComfyUI's `/prompt` included, so callbacks can reach only the receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainList {
    names: Vec<(String, Option<u16>)>,
    ips: Vec<(IpAddr, Option<u16>)>,
}

/// How a host matches a [`DomainList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The host is an entry: it may have any address.
    Named,
    /// A subdomain of an entry, or any host with an empty list: public addresses only.
    Public,
    /// Not in a non-empty list.
    Refused,
}

/// A host name lower-cased, without brackets or a trailing dot.
fn normalize(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// An entry split into its host and optional port: `host`, `host:port`, `v4:port`,
/// `[v6]:port`, or a bare IPv6 address (its colons are not a port).
fn split_port(entry: &str) -> Result<(&str, Option<u16>), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("{entry:?} has a bad port {p:?}")),
    };
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("{entry:?} is missing a ']'"))?;
        return match after {
            "" => Ok((host, None)),
            _ => Ok((host, Some(port(after.strip_prefix(':').ok_or_else(|| format!("{entry:?} is malformed"))?)?))),
        };
    }
    match entry.split_once(':') {
        // One colon: `host:port`; more: a bare IPv6 address.
        Some((host, p)) if !p.contains(':') => Ok((host, Some(port(p)?))),
        _ => Ok((entry, None)),
    }
}

impl DomainList {
    /// Parse a comma-separated list; blanks are ignored.
    ///
    /// # Errors
    /// An entry that is neither a host name nor an IP address, with an optional port (a
    /// URL, a CIDR, a bad port...).
    pub fn parse(list: &str) -> Result<DomainList, String> {
        let mut out = DomainList::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (host, port) = split_port(entry)?;
            let host = normalize(host);
            if let Ok(ip) = IpAddr::from_str(&host) {
                out.ips.push((ip, port));
            } else if !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && label.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
                })
            {
                out.names.push((host, port));
            } else {
                return Err(format!("{entry:?} is not a host name or IP address (with an optional :port)"));
            }
        }
        Ok(out)
    }

    /// Whether no entry is listed (then any host may be called, public addresses only).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.ips.is_empty()
    }

    /// How `host` (as in a URL) on `port` matches.
    pub fn classify(&self, host: &str, port: u16) -> Match {
        let on_port = |p: &Option<u16>| p.is_none_or(|p| p == port);
        let host = normalize(host);
        if let Ok(ip) = IpAddr::from_str(&host) {
            return if self.ips.iter().any(|(i, p)| *i == ip && on_port(p)) {
                Match::Named
            } else if self.is_empty() {
                Match::Public
            } else {
                Match::Refused
            };
        }
        if self.names.iter().any(|(n, p)| *n == host && on_port(p)) {
            Match::Named
        } else if self.is_empty() || self.names.iter().any(|(n, p)| on_port(p) && host.ends_with(&format!(".{n}"))) {
            Match::Public
        } else {
            Match::Refused
        }
    }
}

/// A callback URL checked for an attempt: where to connect.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The parsed URL.
    pub url: reqwest::Url,
    /// Its host, as in the URL.
    pub host: String,
    /// The checked addresses to connect to.
    pub addrs: Vec<SocketAddr>,
}

/// Check `url` against the settings and resolve it: the addresses an attempt may connect to.
///
/// # Errors
/// Why it is refused, as a phrase following "callbackUrl".
pub async fn check_destination(url: &str, settings: &Settings) -> Result<Destination, String> {
    let parsed = ssrf::parse(url).map_err(refusal)?;
    let (host, port) = ssrf::host_port(&parsed).map_err(refusal)?;
    let matched = settings.allowed.classify(&host, port);
    if matched == Match::Refused {
        return Err(format!("names host {host:?} port {port}, which is not in WEBHOOK_ALLOWED_DOMAINS"));
    }
    // A host that is an entry may have any address; every other, public ones only.
    let addrs = ssrf::checked_addrs(&host, port, |_| matched == Match::Named).await.map_err(refusal)?;
    Ok(Destination { url: parsed, host, addrs })
}

/// A refusal of the gate, worded for a callback URL.
fn refusal(refused: Refusal) -> String {
    match &refused {
        Refusal::Scheme(scheme) => format!("has the scheme {scheme:?}; only http and https are called"),
        Refusal::Credentials => "contains credentials; sign requests with WEBHOOK_SECRET instead".to_string(),
        Refusal::Forbidden { host, reason } => format!(
            "refers to host {host:?}, which resolves to a {reason} address; webhooks go only to public \
             addresses unless the host is listed in WEBHOOK_ALLOWED_DOMAINS"
        ),
        Refusal::Invalid(_) | Refusal::NoHost | Refusal::NoPort | Refusal::Unresolved(_) => refused.to_string(),
    }
}

/// The submit-time check of a job's `callbackUrl`.
///
/// # Errors
/// `CALLBACK_NOT_ALLOWED` naming the reason, with `details: {path: "/callbackUrl", reason}`.
pub async fn check_callback_url(url: &str, settings: &Settings) -> crate::error::Result<()> {
    // Bounded like an attempt: a host whose DNS never answers cannot hold a submit.
    let checked = match tokio::time::timeout(settings.timeout, check_destination(url, settings)).await {
        Ok(checked) => checked,
        Err(_) => Err(format!(
            "could not be checked within {} s (its host did not resolve; WEBHOOK_TIMEOUT_MS)",
            settings.timeout.as_secs_f64()
        )),
    };
    match checked {
        Ok(_) => Ok(()),
        Err(reason) => Err(Error::new(ErrorCode::CallbackNotAllowed, format!("/callbackUrl {reason}"))
            .with_details(serde_json::json!({ "path": "/callbackUrl", "reason": reason }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(list: &str) -> Settings {
        Settings { allowed: DomainList::parse(list).unwrap(), ..Settings::default() }
    }

    #[test]
    fn list_matches_names_subdomains_and_ips() {
        let list = DomainList::parse(" Example.com., 127.0.0.1 ,[::1], hooks_internal ").unwrap();
        assert_eq!(list.classify("example.com", 443), Match::Named);
        assert_eq!(list.classify("EXAMPLE.COM.", 8080), Match::Named, "a bare host: any port");
        assert_eq!(list.classify("api.example.com", 443), Match::Public);
        assert_eq!(list.classify("badexample.com", 443), Match::Refused);
        assert_eq!(list.classify("example.com.evil.net", 443), Match::Refused);
        assert_eq!(list.classify("127.0.0.1", 8188), Match::Named);
        assert_eq!(list.classify("[::1]", 80), Match::Named);
        assert_eq!(list.classify("127.0.0.2", 80), Match::Refused);
        assert_eq!(list.classify("hooks_internal", 80), Match::Named);
        assert_eq!(DomainList::default().classify("anything.org", 443), Match::Public);
        assert_eq!(DomainList::default().classify("10.0.0.1", 80), Match::Public);
        for bad in ["http://example.com", "10.0.0.0/8", "a..b", "-a.com", "a b", "example.com:0", "example.com:http"] {
            assert!(DomainList::parse(bad).is_err(), "{bad}");
        }
        for bad in ["example.com:65536", "[::1]:x", "[::1", "127.0.0.1:"] {
            assert!(DomainList::parse(bad).is_err(), "{bad}");
        }
        assert!(DomainList::parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn a_port_in_an_entry_allows_that_port_only() {
        let list = DomainList::parse("127.0.0.1:9000, [::1]:9001, hooks.example.com:8443, ::2").unwrap();
        assert_eq!(list.classify("127.0.0.1", 9000), Match::Named);
        // The same host's other services (ComfyUI on 8188) stay out of reach.
        assert_eq!(list.classify("127.0.0.1", 8188), Match::Refused);
        assert_eq!(list.classify("[::1]", 9001), Match::Named);
        assert_eq!(list.classify("[::1]", 9000), Match::Refused);
        assert_eq!(list.classify("hooks.example.com", 8443), Match::Named);
        assert_eq!(list.classify("a.hooks.example.com", 8443), Match::Public);
        assert_eq!(list.classify("a.hooks.example.com", 443), Match::Refused);
        assert_eq!(list.classify("::2", 1), Match::Named, "a bare IPv6 address has no port");
        // Two entries for one host: each port it names, or any with a bare entry.
        let both = DomainList::parse("127.0.0.1:9000,127.0.0.1:9002").unwrap();
        assert_eq!(both.classify("127.0.0.1", 9002), Match::Named);
        assert_eq!(both.classify("127.0.0.1", 9001), Match::Refused);
    }

    #[tokio::test]
    async fn refuses_schemes_credentials_unlisted_and_private_hosts() {
        let open = settings("");
        for (url, why) in [
            ("ftp://example.com/x", "only http and https"),
            ("http://user:pw@example.com/x", "credentials"),
            ("not a url", "not a valid URL"),
            ("http://127.0.0.1:9/hook", "loopback"),
            ("http://[::1]:9/hook", "loopback"),
            ("http://169.254.169.254/latest", "cloud metadata"),
            ("http://10.1.2.3/hook", "private"),
            ("http://localhost:9/hook", "loopback"),
        ] {
            let e = check_destination(url, &open).await.unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        // What a name resolves to stays inside the gateway.
        let e = check_destination("http://localhost:9/hook", &open).await.unwrap_err();
        assert!(e.contains("resolves to a loopback address"), "{e}");
        assert!(!e.contains("127.0.0.1") && !e.contains("::1"), "{e}");
        let listed = settings("127.0.0.1,example.com");
        let e = check_destination("http://hooks.other.org/x", &listed).await.unwrap_err();
        assert!(e.contains("not in WEBHOOK_ALLOWED_DOMAINS"), "{e}");
        let e = check_destination("http://127.0.0.2:9/x", &listed).await.unwrap_err();
        assert!(e.contains("not in WEBHOOK_ALLOWED_DOMAINS"), "{e}");
        let ported = settings("127.0.0.1:9");
        assert!(check_destination("http://127.0.0.1:9/hook", &ported).await.is_ok());
        let e = check_destination("http://127.0.0.1:8188/prompt", &ported).await.unwrap_err();
        assert!(e.contains("port 8188, which is not in WEBHOOK_ALLOWED_DOMAINS"), "{e}");
        let ok = check_destination("http://127.0.0.1:9/hook", &listed).await.unwrap();
        assert_eq!(ok.addrs, vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
        assert_eq!(ok.host, "127.0.0.1");
    }

    #[tokio::test]
    async fn submit_check_answers_callback_not_allowed_naming_the_field() {
        let e = check_callback_url("http://169.254.169.254/", &settings("")).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::CallbackNotAllowed);
        assert!(e.message.starts_with("/callbackUrl ") && e.message.contains("cloud metadata"), "{}", e.message);
        let details = e.details.unwrap();
        assert_eq!(details["path"], "/callbackUrl");
        assert!(details["reason"].as_str().unwrap().contains("cloud metadata"));
        assert!(check_callback_url("http://127.0.0.1:1/hook", &settings("127.0.0.1")).await.is_ok());
    }
}
