//! The SSRF-guarded fetch of an image URL.
//!
//! Every hop goes through the gateway's SSRF gate ([`crate::ssrf`]): http or https, no
//! credentials, every resolved address public unless `URL_INPUT_ALLOW_HOSTS` allows the
//! host or the address, and a client pinned to the addresses checked. Redirects are
//! followed by hand, each hop checked the same way, at most [`REDIRECTS_MAX`]. The whole
//! fetch is bounded in time and size. Proxies from the environment are never used.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::ssrf::{self, AllowList, Refusal};

/// Most redirects followed from the URL given.
pub const REDIRECTS_MAX: usize = 5;

/// Bounds of one input image fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchLimits {
    /// `MAX_INPUT_IMAGE_BYTES`: largest image accepted, however given.
    pub bytes_max: usize,
    /// `URL_INPUT_TIMEOUT_MS`: the whole fetch, redirects included.
    pub timeout: Duration,
    /// `URL_INPUT_ALLOW_HOSTS`.
    pub allow: AllowList,
}

/// The addresses `host:port` may be fetched from, all checked.
async fn checked_addrs(host: &str, port: u16, allow: &AllowList) -> Result<Vec<SocketAddr>, String> {
    let whole_host = allow.allows_host(host);
    ssrf::checked_addrs(host, port, |ip| whole_host || allow.allows_ip(ip)).await.map_err(refusal)
}

/// A refusal of the gate, worded for an image input.
fn refusal(refused: Refusal) -> String {
    match &refused {
        Refusal::Scheme(scheme) => format!("leads to a {scheme} URL; only http and https are fetched"),
        Refusal::Credentials => "contains credentials, which are not sent".to_string(),
        Refusal::Forbidden { host, reason } => format!(
            "refers to host {host:?}, which resolves to a {reason} address; the gateway fetches only public \
             addresses (see URL_INPUT_ALLOW_HOSTS)"
        ),
        Refusal::Invalid(_) | Refusal::NoHost | Refusal::NoPort | Refusal::Unresolved(_) => refused.to_string(),
    }
}

/// Fetch `url` under `limits`: the body's bytes (not yet type-checked).
///
/// # Errors
/// A message for the client: refused address, bad URL, HTTP error status, too many
/// redirects, too large, timeout.
pub async fn fetch(url: &str, limits: &FetchLimits) -> Result<Bytes, String> {
    let seconds = limits.timeout.as_secs_f64();
    match tokio::time::timeout(limits.timeout, fetch_unbounded(url, limits)).await {
        Ok(result) => result,
        Err(_) => Err(format!("could not be fetched within {seconds} s (URL_INPUT_TIMEOUT_MS)")),
    }
}

async fn fetch_unbounded(url: &str, limits: &FetchLimits) -> Result<Bytes, String> {
    let mut url = ssrf::parse(url).map_err(refusal)?;
    for _ in 0..=REDIRECTS_MAX {
        let (host, port) = ssrf::host_port(&url).map_err(refusal)?;
        let addrs = checked_addrs(&host, port, &limits.allow).await?;
        let client = ssrf::pinned_client(&host, &addrs)
            .connect_timeout(limits.timeout)
            .build()
            .map_err(|e| format!("cannot be fetched: {e}"))?;
        let mut resp = client.get(url.clone()).send().await.map_err(|e| format!("could not be fetched: {e}"))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("answered HTTP {} without a Location", status.as_u16()))?;
            url = url.join(location).map_err(|e| format!("redirects to an invalid URL: {e}"))?;
            continue;
        }
        if !status.is_success() {
            return Err(format!("could not be fetched: the server answered HTTP {}", status.as_u16()));
        }
        let too_large = || format!("is larger than {} bytes (the gateway's MAX_INPUT_IMAGE_BYTES)", limits.bytes_max);
        if resp.content_length().is_some_and(|n| n > limits.bytes_max as u64) {
            return Err(too_large());
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("could not be fetched: {e}"))? {
            if body.len() + chunk.len() > limits.bytes_max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(body.freeze());
    }
    Err(format!("redirects more than {REDIRECTS_MAX} times"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_loopback_and_private_literals_unless_allowed() {
        let limits = FetchLimits { bytes_max: 1024, timeout: Duration::from_secs(2), allow: AllowList::default() };
        for url in ["http://127.0.0.1:9/x.png", "http://[::1]:9/x.png", "http://169.254.169.254/latest/meta-data"] {
            let e = fetch(url, &limits).await.unwrap_err();
            assert!(e.contains("address"), "{url}: {e}");
        }
        let e = fetch("http://localhost:9/x.png", &limits).await.unwrap_err();
        assert!(e.contains("resolves to a loopback address"), "{e}");
        // What a name resolves to stays inside the gateway.
        assert!(!e.contains("127.0.0.1") && !e.contains("::1"), "{e}");
        assert!(fetch("ftp://example.com/x.png", &limits).await.unwrap_err().contains("only http"));
        // https goes through the same guard (TLS is rustls; the host name stays the SNI and
        // certificate name while the connection is pinned to the checked address).
        let e = fetch("https://127.0.0.1:9/x.png", &limits).await.unwrap_err();
        assert!(e.contains("address"), "{e}");
        let allowed = FetchLimits { allow: AllowList::parse("127.0.0.1").unwrap(), ..limits };
        let e = fetch("https://127.0.0.1:9/x.png", &allowed).await.unwrap_err();
        assert!(e.contains("could not be fetched"), "an allowed https URL is really tried: {e}");
    }
}
