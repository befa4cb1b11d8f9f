//! The upstream's address: `TASKGATE_UPSTREAM_ENDPOINT` read once into the URL requests go to and
//! the `Host` that is sent and signed.

/// The international site's SSM domain: the one the API's own page names for
/// `DescribeAsyncRequestInfo`, and the international Tencent SDK's default. The China site
/// (`ssm.tencentcloudapi.com`) and regional hosts (`ssm.ap-guangzhou.tencentcloudapi.com`) are
/// set with `TASKGATE_UPSTREAM_ENDPOINT`.
pub(crate) const DEFAULT_ENDPOINT: &str = "https://ssm.intl.tencentcloudapi.com";

/// Where and how to reach the upstream, derived once from `TASKGATE_UPSTREAM_ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL requests are posted to, always with path `/`.
    pub url: String,
    /// The `Host` value sent and signed: lowercase, with the port when it is not the default.
    pub host: String,
    pub is_tls: bool,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: awc::http::Uri = text
            .trim()
            .parse()
            .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        let is_tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{text:?} must start with https:// or http://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err("must not carry user information".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{text:?} must be a bare origin (the API is always POST /)"
            ));
        }
        let host_name = authority.host().to_ascii_lowercase();
        let default_port = if is_tls { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{host_name}:{port}"),
            _ => host_name,
        };
        let scheme = if is_tls { "https" } else { "http" };
        Ok(Self {
            url: format!("{scheme}://{host}/"),
            host,
            is_tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_non_default_ports_in_the_host() {
        let e = Endpoint::parse("http://127.0.0.1:18080").unwrap();
        assert_eq!(e.host, "127.0.0.1:18080");
        assert_eq!(e.url, "http://127.0.0.1:18080/");
        assert!(!e.is_tls);
        let e = Endpoint::parse("https://SSM.TencentCloudAPI.com:443/").unwrap();
        assert_eq!(e.host, "ssm.tencentcloudapi.com");
        assert!(e.is_tls);
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("https://x/path").is_err());
        assert!(Endpoint::parse("https://user:pw@x/").is_err());
    }

    #[test]
    fn the_default_is_the_international_site() {
        let e = Endpoint::parse(DEFAULT_ENDPOINT).unwrap();
        assert_eq!(e.host, "ssm.intl.tencentcloudapi.com");
        assert!(e.is_tls);
    }
}
