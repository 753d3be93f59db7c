//! The SSRF gate: where the gateway's own requests to URLs a client gave (image inputs,
//! webhook callbacks) may go. One gate for both callers ([`crate::inputs::fetch`],
//! [`crate::webhooks::policy`]), each with its own exemptions and wording:
//!
//! - [`parse`], [`host_port`]: http or https only, no credentials, a host and a port.
//! - [`checked_addrs`]: the gateway resolves the host itself ([`resolve`]) and refuses it
//!   if any address is loopback, private, link-local, shared (CGNAT), multicast, reserved
//!   or a cloud metadata address ([`forbidden_reason`]), unless the caller exempts it
//!   (`URL_INPUT_ALLOW_HOSTS` as an [`AllowList`], `WEBHOOK_ALLOWED_DOMAINS`).
//! - [`pinned_client`]: the HTTP client then connects only to the addresses checked (a
//!   second DNS answer cannot differ), through no proxy, following no redirect.
//!
//! A refusal never names the address a host resolved to: that would tell any client what a
//! name resolves to inside the gateway's network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// Why the gate refused a URL; each caller words it for its own setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a URL (the parser's reason).
    Invalid(String),
    /// A scheme other than http and https.
    Scheme(String),
    /// A user name or password in the URL.
    Credentials,
    /// No host.
    NoHost,
    /// No port, given or known for the scheme.
    NoPort,
    /// The host does not resolve, or has no address (the reason, naming the host).
    Unresolved(String),
    /// The host resolves to an address that is not public and not exempt.
    Forbidden {
        /// The host, as in the URL.
        host: String,
        /// What kind of address, from [`forbidden_reason`].
        reason: &'static str,
    },
}

/// The neutral wording; callers name their own settings where it helps (scheme,
/// credentials, a forbidden address) and keep this for the rest.
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(e) => write!(f, "is not a valid URL: {e}"),
            Refusal::Scheme(scheme) => write!(f, "has the scheme {scheme:?}; only http and https are allowed"),
            Refusal::Credentials => write!(f, "contains credentials"),
            Refusal::NoHost => write!(f, "has no host"),
            Refusal::NoPort => write!(f, "has no port"),
            Refusal::Unresolved(why) => write!(f, "{why}"),
            Refusal::Forbidden { host, reason } => {
                write!(
                    f,
                    "refers to host {host:?}, which resolves to a {reason} address; only public addresses are allowed"
                )
            }
        }
    }
}

/// Hosts and networks exempt from the public-address rule (`URL_INPUT_ALLOW_HOSTS`:
/// comma-separated host names, IP addresses or CIDRs).
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

    /// Whether `host` (as in a URL) is listed: all its addresses are exempt.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether `ip` is in a listed address or network.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// Parse a URL.
///
/// # Errors
/// [`Refusal::Invalid`].
pub fn parse(url: &str) -> Result<reqwest::Url, Refusal> {
    reqwest::Url::parse(url).map_err(|e| Refusal::Invalid(e.to_string()))
}

/// The host (as in the URL) and port a URL leads to, if the gate lets it through: http or
/// https, no credentials.
///
/// # Errors
/// [`Refusal::Scheme`], [`Refusal::Credentials`], [`Refusal::NoHost`], [`Refusal::NoPort`].
pub fn host_port(url: &reqwest::Url) -> Result<(String, u16), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme(url.scheme().to_string()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Credentials);
    }
    let host = url.host_str().ok_or(Refusal::NoHost)?.to_string();
    let port = url.port_or_known_default().ok_or(Refusal::NoPort)?;
    Ok((host, port))
}

/// The addresses `host:port` may be reached at: every resolved address, each public or
/// `exempt`.
///
/// # Errors
/// [`Refusal::Unresolved`], or [`Refusal::Forbidden`] if any address is neither.
pub async fn checked_addrs(host: &str, port: u16, exempt: impl Fn(IpAddr) -> bool) -> Result<Vec<SocketAddr>, Refusal> {
    let addrs = resolve(host, port).await.map_err(Refusal::Unresolved)?;
    for addr in &addrs {
        if let Some(reason) = forbidden_reason(addr.ip())
            && !exempt(addr.ip())
        {
            return Err(Refusal::Forbidden { host: host.to_string(), reason });
        }
    }
    Ok(addrs)
}

/// Why the gateway must not connect to an address, or None if it is a public unicast address.
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
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
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

/// An HTTP client builder that connects to `host` only at `addrs` (already checked; an IP
/// literal host needs no pinning), never through a proxy, and follows no redirect.
pub fn pinned_client(host: &str, addrs: &[SocketAddr]) -> reqwest::ClientBuilder {
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

    #[test]
    fn host_port_lets_through_http_and_https_without_credentials() {
        let hp = |s: &str| host_port(&parse(s).unwrap());
        assert_eq!(hp("http://example.com/x"), Ok(("example.com".to_string(), 80)));
        assert_eq!(hp("https://[::1]/x"), Ok(("[::1]".to_string(), 443)));
        assert_eq!(hp("HTTP://Example.COM:8080"), Ok(("example.com".to_string(), 8080)));
        assert_eq!(hp("ftp://example.com/x"), Err(Refusal::Scheme("ftp".to_string())));
        assert_eq!(hp("file:///etc/passwd"), Err(Refusal::Scheme("file".to_string())));
        assert_eq!(hp("http://user@example.com/"), Err(Refusal::Credentials));
        assert_eq!(hp("http://:pw@example.com/"), Err(Refusal::Credentials));
        assert!(matches!(parse("not a url"), Err(Refusal::Invalid(_))));
        assert_eq!(Refusal::NoPort.to_string(), "has no port");
        let forbidden = Refusal::Forbidden { host: "x".to_string(), reason: "private" };
        assert_eq!(
            forbidden.to_string(),
            "refers to host \"x\", which resolves to a private address; only public addresses are allowed"
        );
    }

    #[tokio::test]
    async fn checked_addrs_refuse_what_is_not_public_unless_exempt() {
        let e = checked_addrs("127.0.0.1", 9, |_| false).await.unwrap_err();
        assert_eq!(e, Refusal::Forbidden { host: "127.0.0.1".to_string(), reason: "loopback" });
        let e = checked_addrs("[fe80::1]", 9, |_| false).await.unwrap_err();
        assert_eq!(e, Refusal::Forbidden { host: "[fe80::1]".to_string(), reason: "link-local" });
        let ok = checked_addrs("127.0.0.1", 9, |ip| ip.is_loopback()).await.unwrap();
        assert_eq!(ok, vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
        // A name: every address it resolves to is checked.
        let e = checked_addrs("localhost", 9, |_| false).await.unwrap_err();
        assert!(matches!(e, Refusal::Forbidden { reason: "loopback", .. }), "{e:?}");
        assert!(checked_addrs("localhost", 9, |_| true).await.unwrap().iter().all(|a| a.ip().is_loopback()));
    }
}
