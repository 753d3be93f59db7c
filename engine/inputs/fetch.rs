//! The SSRF-guarded fetch of an image URL.
//!
//! The gateway resolves the host itself, refuses the request if any resolved address is
//! loopback, private, link-local, shared (CGNAT), multicast, reserved or a cloud metadata
//! address (unless `URL_INPUT_ALLOW_HOSTS` allows the host or the address), and then
//! connects only to the addresses it checked (the HTTP client is pinned to them, so a
//! second DNS answer cannot differ). Redirects are followed by hand, each hop checked the
//! same way, at most [`REDIRECTS_MAX`]. The whole fetch is bounded in time and size.
//! Proxies from the environment are never used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ipnet::IpNet;

/// Most redirects followed from the URL given.
pub const REDIRECTS_MAX: usize = 5;

/// Hosts and networks that may be fetched even though they are not public
/// (`URL_INPUT_ALLOW_HOSTS`: comma-separated host names, IP addresses or CIDRs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parse a comma-separated list; blanks are ignored.
    ///
    /// # Errors
    /// An entry that is neither a host name nor an IP address or CIDR.
    pub fn parse(list: &str) -> Result<AllowList, String> {
        let mut allow = AllowList::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bare = entry.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = IpAddr::from_str(bare) {
                allow.nets.push(IpNet::from(ip));
            } else if let Ok(net) = IpNet::from_str(entry) {
                allow.nets.push(net);
            } else if entry.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
                allow.hosts.push(entry.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(format!("{entry:?} is not a host name, IP address or CIDR"));
            }
        }
        Ok(allow)
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

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

/// Why an address must not be fetched, or None if it is a public unicast address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (169, 254, 169) if ip.octets()[3] == 254 => "cloud metadata",
        (100, 100, 100) if ip.octets()[3] == 200 => "cloud metadata",
        (0, _, _) => "unspecified (\"this network\")",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the embedded IPv4 address.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(Ipv4Addr::from(((u32::from(seg[6])) << 16) | u32::from(seg[7])));
    }
    if seg[0] == 0x2002 {
        return forbidden_v4(Ipv4Addr::from(((u32::from(seg[1])) << 16) | u32::from(seg[2])));
    }
    Some(match seg[0] {
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "cloud metadata",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        // ::/96 (deprecated IPv4-compatible) and the rest of ::/8.
        0 => "reserved",
        0xfc00..=0xfdff => "private (unique local)",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        _ => return None,
    })
}

/// Every address of `host:port`: the literal itself for an IP address, else the DNS answer.
///
/// # Errors
/// The host does not resolve, or has no address.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match IpAddr::from_str(literal) {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("host {host:?} has no address"));
    }
    Ok(addrs)
}

/// The addresses `host:port` may be fetched from, all checked; an error if any is refused.
async fn checked_addrs(host: &str, port: u16, allow: &AllowList) -> Result<Vec<SocketAddr>, String> {
    let addrs = resolve(host, port).await?;
    if !allow.allows_host(host) {
        for addr in &addrs {
            let ip = addr.ip();
            if let Some(reason) = forbidden_reason(ip)
                && !allow.allows_ip(ip)
            {
                // Never the address itself: the answer would tell any client what a
                // name resolves to inside the gateway's network.
                return Err(format!(
                    "refers to host {host:?}, which resolves to a {reason} address; the gateway fetches only \
                     public addresses (see URL_INPUT_ALLOW_HOSTS)"
                ));
            }
        }
    }
    Ok(addrs)
}

/// An HTTP client builder that connects to `host` only at `addrs` (already checked; an IP
/// literal host needs no pinning), never through a proxy, and follows no redirect.
pub(crate) fn pinned_client(host: &str, addrs: &[SocketAddr]) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("comfyui-gateway/", env!("CARGO_PKG_VERSION")));
    if IpAddr::from_str(host.trim_start_matches('[').trim_end_matches(']')).is_err() {
        // Connect only to the addresses just checked.
        builder.resolve_to_addrs(host, addrs)
    } else {
        builder
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
    let mut url = reqwest::Url::parse(url).map_err(|e| format!("is not a valid URL: {e}"))?;
    for _ in 0..=REDIRECTS_MAX {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("leads to a {} URL; only http and https are fetched", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("contains credentials, which are not sent".to_string());
        }
        let host = url.host_str().ok_or("has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("has no port")?;
        let addrs = checked_addrs(&host, port, &limits.allow).await?;
        let client = pinned_client(&host, &addrs)
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

    fn reason(s: &str) -> Option<&'static str> {
        forbidden_reason(IpAddr::from_str(s).unwrap())
    }

    #[test]
    fn classifies_ipv4() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "cloud metadata"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("100.127.255.255", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved or broadcast"),
        ] {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "169.255.0.1", "93.184.216.34"] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn classifies_ipv6_and_mapped() {
        for (ip, why) in [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fd12:3456::1", "private (unique local)"),
            ("fc00::1", "private (unique local)"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:a9fe:a9fe::", "cloud metadata"),
            ("::127.0.0.1", "reserved"),
        ] {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
        for ip in ["2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8"] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn allow_list_parses_hosts_ips_and_cidrs() {
        let allow = AllowList::parse(" 127.0.0.1, 10.0.0.0/8 ,images.internal., [::1] ").unwrap();
        assert!(allow.allows_ip(IpAddr::from_str("127.0.0.1").unwrap()));
        assert!(!allow.allows_ip(IpAddr::from_str("127.0.0.2").unwrap()));
        assert!(allow.allows_ip(IpAddr::from_str("10.9.8.7").unwrap()));
        assert!(allow.allows_ip(IpAddr::from_str("::1").unwrap()));
        assert!(allow.allows_host("Images.Internal"));
        assert!(!allow.allows_host("other.internal"));
        assert!(AllowList::parse("http://x/").is_err());
        assert_eq!(AllowList::parse("").unwrap(), AllowList::default());
    }

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
