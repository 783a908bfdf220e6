//! Outbound HTTP: each component's `allowed_outbound_hosts`, parsed, templated and matched exactly as Spin 4 does,
//! and the `wasi:http` client hooks that send allowed requests and refuse the rest.
//!
//! Mirrored from spinframework/spin at 94a8fc8a (the Spin in `../shared/tools/spin`):
//! - `crates/outbound-networking-config/src/allowed_hosts.rs`: the entry grammar (`AllowedHostConfig::parse`,
//!   `SchemeConfig`, `HostConfig`, `PortConfig`, `well_known_port`), templates (`PartialAllowedHostConfig`,
//!   `AllowedHostsConfig::{parse, validate}`), service-chaining wildcard expansion and matching (`allows`,
//!   `allows_relative`, `OutboundUrl`);
//! - `crates/expressions/src/template.rs` and `lib.rs`: `{{ name }}` templates over application variables;
//! - `crates/loader/src/local.rs` (`load_component`): entries are validated at load with the variables' defaults;
//! - `crates/factor-outbound-networking/src/lib.rs` (`prepare`): the list is resolved with the variables' actual
//!   values, and a list that does not parse denies every request of the component;
//! - `crates/factor-outbound-http/src/wasi.rs` (`p3::WasiHttpHooks for InstanceHttpHooks`, `prepare_request`):
//!   self requests, `HttpRequestDenied`, 600 s default timeouts;
//! - `crates/runtime-factors/src/lib.rs` (`disallowed_host_handler`): the message printed on a refusal.
//!
//! Where this differs (no new dependencies: `url`, `idna` and `ip_network` are not host dependencies): host names
//! must be ASCII (punycode `xn--` labels are fine; Spin would also accept Unicode and convert it), and
//! service chaining (`http://<component>.spin.internal`) is matched like Spin but not routed (the request fails).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use wasmtime_wasi_http::p3::RequestOptions;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use crate::manifest::Manifest;
use crate::variables::Template;

/// Spin's default for each of the connect, first-byte and between-bytes timeouts when the guest sets none
/// (`DEFAULT_TIMEOUT` in `crates/factor-outbound-http/src/wasi.rs`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The domain used for service chaining.
const SERVICE_CHAINING_DOMAIN_SUFFIX: &str = ".spin.internal";

// ---------------------------------------------------------------------------------------------------------------
// One entry

/// One `allowed_outbound_hosts` entry: `<scheme>://<host>[:<port>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHostConfig {
    scheme: SchemeConfig,
    host: HostConfig,
    port: PortConfig,
}

impl AllowedHostConfig {
    /// Spin's `AllowedHostConfig::parse`, step for step (including which part's error is reported first).
    pub fn parse(original: &str) -> Result<Self> {
        let url = original.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            match url {
                "*" | ":" | "" | "?" => bail!(
                    "{url:?} is not an allowed outbound host format.\nHosts must be in the form \
                     <scheme>://<host>[:<port>], with '*' wildcards allowed for each.\nIf you intended to allow all \
                     outbound networking, you can use '*://*:*' - this will obviate all network sandboxing."
                ),
                _ => bail!("{url:?} does not contain a scheme (e.g., 'http://' or '*://')"),
            }
        };
        let (host, port) = match rest.rsplit_once(':') {
            None => (rest, ""),
            Some((h, "")) => (h, ""),
            Some((h, tail)) => {
                if HostConfig::parse(rest).is_ok() {
                    (rest, "")
                } else {
                    let port = match tail.split_once('/') {
                        Some((port, path)) => {
                            if !path.is_empty() {
                                bail!("{url:?} has a path but is not allowed to");
                            }
                            port
                        }
                        None => tail,
                    };
                    (h, port)
                }
            }
        };
        let port = PortConfig::parse(port, scheme).with_context(|| format!("Invalid allowed host port {port:?}"))?;
        let scheme = SchemeConfig::parse(scheme).with_context(|| format!("Invalid allowed host scheme {scheme:?}"))?;
        let host = HostConfig::parse(host).with_context(|| format!("Invalid allowed host {host:?}"))?;
        Ok(Self { scheme, host, port })
    }

    fn allows(&self, url: &OutboundUrl) -> bool {
        self.scheme.allows(&url.scheme) && self.host.allows(&url.host) && self.port.allows(url.port, &url.scheme)
    }

    fn allows_relative(&self, schemes: &[&str]) -> bool {
        schemes.iter().any(|s| self.scheme.allows(s)) && self.host.allows_relative()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemeConfig {
    Any,
    List(Vec<String>),
}

impl SchemeConfig {
    fn parse(scheme: &str) -> Result<Self> {
        if scheme == "*" {
            return Ok(Self::Any);
        }
        if scheme.starts_with('{') {
            bail!("scheme lists are not supported")
        }
        if scheme.chars().any(|c| !c.is_alphabetic()) {
            bail!("only alphabetic characters are allowed");
        }
        Ok(Self::List(vec![scheme.into()]))
    }

    fn allows(&self, scheme: &str) -> bool {
        match self {
            Self::Any => true,
            Self::List(l) => l.iter().any(|s| s == scheme),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostConfig {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    AnySubdomain(String),
    /// `self` or `self.alt`: requests to the app itself.
    ToSelf,
    Literal(Host),
    Cidr(Cidr),
}

impl HostConfig {
    fn parse(host: &str) -> Result<Self> {
        let mut host = host.trim();
        if host == "*" {
            return Ok(Self::Any);
        }
        if host == "self" || host == "self.alt" {
            return Ok(Self::ToSelf);
        }
        if host.starts_with('{') {
            ensure!(host.ends_with('}'));
            bail!("host lists are not yet supported")
        }
        if let Some(net) = Cidr::parse(host) {
            return Ok(Self::Cidr(net));
        }
        host = host.strip_suffix('/').unwrap_or(host);
        if host.contains('/') {
            bail!("must not include a path");
        }
        if let Some(domain) = host.strip_prefix("*.") {
            if domain.contains('*') {
                bail!("wildcards are allowed only as prefixes");
            }
            let domain = Host::parse(domain).with_context(|| format!("invalid wildcard host \"*.{domain}\""))?;
            let Host::Domain(domain) = domain else { bail!("wildcard suffix must be a domain") };
            return Ok(Self::AnySubdomain(format!(".{domain}")));
        }
        if host.contains('*') {
            bail!("wildcards are allowed only as subdomains");
        }
        Ok(Self::Literal(Host::parse(host)?))
    }

    fn allows(&self, host: &str) -> bool {
        let Ok(host) = Host::parse(host) else { return false };
        match (self, host) {
            (Self::Any, _) => true,
            (Self::AnySubdomain(suffix), Host::Domain(domain)) => domain.ends_with(suffix.as_str()),
            (Self::Literal(literal), host) => host == *literal,
            (Self::Cidr(c), Host::Ipv4(ip)) => c.contains(IpAddr::V4(ip)),
            (Self::Cidr(c), Host::Ipv6(ip)) => c.contains(IpAddr::V6(ip)),
            (Self::AnySubdomain(_), _) | (Self::Cidr(_), Host::Domain(_)) | (Self::ToSelf, _) => false,
        }
    }

    fn allows_relative(&self) -> bool {
        matches!(self, Self::Any | Self::ToSelf)
    }
}

/// `url::Host` as the `url` crate parses a special-scheme host (WHATWG URL host parser), for ASCII input.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Domain(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl Host {
    fn parse(input: &str) -> Result<Self> {
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner.strip_suffix(']').context("invalid IPv6 address")?;
            return Ok(Self::Ipv6(inner.parse().context("invalid IPv6 address")?));
        }
        ensure!(!input.is_empty(), "empty host");
        let decoded = percent_decode(input);
        if !decoded.is_ascii() {
            bail!("non-ASCII host names are not supported by scenefin-host: write {input:?} in punycode (xn--)");
        }
        let domain = decoded.to_ascii_lowercase();
        ensure!(!domain.is_empty(), "empty host");
        if let Some(c) = domain.chars().find(|&c| is_forbidden_domain_code_point(c)) {
            bail!("invalid domain character {c:?}");
        }
        if ends_in_a_number(&domain) {
            return Ok(Self::Ipv4(parse_ipv4(&domain).context("invalid IPv4 address")?));
        }
        Ok(Self::Domain(domain))
    }
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && hex.bytes().all(|c| c.is_ascii_hexdigit())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// WHATWG "forbidden domain code point".
fn is_forbidden_domain_code_point(c: char) -> bool {
    c.is_ascii_control()
        || matches!(c, ' ' | '#' | '/' | ':' | '<' | '>' | '?' | '@' | '[' | '\\' | ']' | '^' | '|' | '%' | '\u{7f}')
}

/// WHATWG "ends in a number".
fn ends_in_a_number(domain: &str) -> bool {
    let mut parts: Vec<&str> = domain.split('.').collect();
    if parts.last() == Some(&"") {
        if parts.len() == 1 {
            return false;
        }
        parts.pop();
    }
    let last = parts.last().copied().unwrap_or_default();
    (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())) || parse_ipv4_number(last).is_some()
}

fn parse_ipv4_number(input: &str) -> Option<u64> {
    if input.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = input.strip_prefix("0x").or_else(|| input.strip_prefix("0X")) {
        (hex, 16)
    } else if input.len() > 1 && input.starts_with('0') {
        (&input[1..], 8)
    } else {
        (input, 10)
    };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Saturate: any value this large fails the range checks below.
    Some(u64::from_str_radix(digits, radix).unwrap_or(u64::MAX))
}

/// WHATWG IPv4 parser (accepts `127.1`, hex and octal parts, as browsers and the `url` crate do).
fn parse_ipv4(input: &str) -> Option<Ipv4Addr> {
    let mut parts: Vec<&str> = input.split('.').collect();
    if parts.last() == Some(&"") && parts.len() > 1 {
        parts.pop();
    }
    if parts.len() > 4 {
        return None;
    }
    let numbers = parts.iter().map(|p| parse_ipv4_number(p)).collect::<Option<Vec<u64>>>()?;
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|&n| n > 255) || *last >= 256u64.pow(5 - numbers.len() as u32) {
        return None;
    }
    let mut ipv4 = *last;
    for (i, n) in init.iter().enumerate() {
        ipv4 += n * 256u64.pow(3 - i as u32);
    }
    Some(Ipv4Addr::from(ipv4 as u32))
}

/// `ip_network::IpNetwork::from_str_truncate`: `<address>/<prefix>` (the slash is required), host bits cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = s.split_once('/')?;
        let ip: IpAddr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let network = match ip {
            IpAddr::V4(ip) if prefix <= 32 => IpAddr::V4(Ipv4Addr::from(u32::from(ip) & v4_mask(prefix))),
            IpAddr::V6(ip) if prefix <= 128 => IpAddr::V6(Ipv6Addr::from(u128::from(ip) & v6_mask(prefix))),
            _ => return None,
        };
        Some(Self { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & v4_mask(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & v6_mask(self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortConfig {
    Any,
    List(Vec<IndividualPortConfig>),
}

impl PortConfig {
    fn parse(port: &str, scheme: &str) -> Result<Self> {
        if port.is_empty() {
            return well_known_port(scheme).map(|p| Self::List(vec![IndividualPortConfig::Port(p)])).with_context(
                || format!("no port was provided and the scheme {scheme:?} does not have a known default port number"),
            );
        }
        if port == "*" {
            return Ok(Self::Any);
        }
        if port.starts_with('{') {
            bail!("port lists are not yet supported")
        }
        Ok(Self::List(vec![IndividualPortConfig::parse(port)?]))
    }

    fn allows(&self, port: Option<u16>, scheme: &str) -> bool {
        match self {
            Self::Any => true,
            Self::List(l) => match port.or_else(|| well_known_port(scheme)) {
                Some(port) => l.iter().any(|p| p.allows(port)),
                None => false,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IndividualPortConfig {
    Port(u16),
    /// `start..end`: the end is excluded, as in Spin (a Rust `Range`).
    Range(Range<u16>),
}

impl IndividualPortConfig {
    fn parse(port: &str) -> Result<Self> {
        if let Some((start, end)) = port.split_once("..") {
            let start = start.parse().with_context(|| format!("port range {port:?} contains non-number"))?;
            let end = end.parse().with_context(|| format!("port range {port:?} contains non-number"))?;
            return Ok(Self::Range(start..end));
        }
        Ok(Self::Port(port.parse().with_context(|| format!("port {port:?} is not a number"))?))
    }

    fn allows(&self, port: u16) -> bool {
        match self {
            Self::Port(p) => *p == port,
            Self::Range(r) => r.contains(&port),
        }
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Templates and the whole list

/// `PartialAllowedHostConfig::parse_or_skip`: a templated entry that resolves to nothing (or a bare `http://` /
/// `https://`) is dropped, so an empty variable means "no such endpoint". A literal empty entry stays an error.
fn parse_or_skip(resolved: &str) -> Result<Option<AllowedHostConfig>> {
    if resolved.is_empty() || resolved == "http://" || resolved == "https://" {
        Ok(None)
    } else {
        AllowedHostConfig::parse(resolved).map(Some)
    }
}

enum Partial {
    Exact(AllowedHostConfig),
    Unresolved(Template),
}

/// `AllowedHostsConfig::parse_partial`: literal entries are parsed now, templated ones when resolved.
fn parse_partial(hosts: &[String]) -> Result<Vec<Partial>> {
    if hosts.len() == 1 && hosts[0] == "insecure:allow-all" {
        bail!(
            "'insecure:allow-all' is not allowed - use '*://*:*' instead if you really want to allow all outbound \
             traffic'"
        )
    }
    hosts
        .iter()
        .map(|host| {
            let template = Template::parse(host)?;
            if template.is_literal() {
                Ok(Partial::Exact(AllowedHostConfig::parse(host)?))
            } else {
                Ok(Partial::Unresolved(template))
            }
        })
        .collect()
}

/// A component's resolved `allowed_outbound_hosts` (Spin's `AllowedHostsConfig::SpecificHosts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    hosts: Vec<AllowedHostConfig>,
}

impl AllowedHosts {
    /// `AllowedHostsConfig::parse`: every entry is one host pattern after its variables are substituted (a value
    /// is never split on commas); `*.spin.internal` is expanded to one entry per component of the app.
    pub fn parse(hosts: &[String], lookup: &dyn Fn(&str) -> Result<String>, component_ids: &[String]) -> Result<Self> {
        let mut allowed = Vec::new();
        for partial in parse_partial(hosts)? {
            let host = match partial {
                Partial::Exact(h) => Some(h),
                Partial::Unresolved(template) => parse_or_skip(&template.resolve(lookup)?)?,
            };
            let Some(host) = host else { continue };
            match &host.host {
                HostConfig::AnySubdomain(suffix) if suffix == SERVICE_CHAINING_DOMAIN_SUFFIX => {
                    for id in component_ids {
                        let mut one = host.clone();
                        one.host = HostConfig::Literal(Host::Domain(format!("{id}{SERVICE_CHAINING_DOMAIN_SUFFIX}")));
                        allowed.push(one);
                    }
                }
                _ => allowed.push(host),
            }
        }
        Ok(Self { hosts: allowed })
    }

    /// `AllowedHostsConfig::validate`, as Spin's loader runs it: literal entries must parse; a templated entry is
    /// checked with the variables' defaults, and skipped when one of its variables has no default.
    pub fn validate(hosts: &[String], defaults: &dyn Fn(&str) -> Result<String>) -> Result<()> {
        for partial in parse_partial(hosts)? {
            if let Partial::Unresolved(template) = partial {
                let Ok(resolved) = template.resolve(defaults) else { continue };
                parse_or_skip(&resolved).with_context(|| {
                    format!(
                        "using default variable value(s) with template {:?} results in invalid config {resolved:?}",
                        template.to_string()
                    )
                })?;
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Whether a request to this absolute URL is allowed.
    pub fn allows(&self, url: &OutboundUrl) -> bool {
        self.hosts.iter().any(|h| h.allows(url))
    }

    /// Whether a relative ("self") request with one of these schemes is allowed.
    pub fn allows_relative_url(&self, schemes: &[&str]) -> bool {
        self.hosts.iter().any(|h| h.allows_relative(schemes))
    }
}

/// The destination of an outgoing request, as Spin's `OutboundUrl` sees it (the `url` crate's view: lower-case
/// scheme, the port dropped when it is the scheme's default).
#[derive(Debug, Clone)]
pub struct OutboundUrl {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl OutboundUrl {
    pub fn from_uri(uri: &http::Uri) -> Option<Self> {
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let authority = uri.authority()?;
        let default = match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            "ftp" => Some(21),
            _ => None,
        };
        let port = authority.port_u16().filter(|p| Some(*p) != default);
        Some(Self { scheme, host: authority.host().to_owned(), port })
    }

    /// `scheme://host[:port]`, what Spin suggests adding to `allowed_outbound_hosts`.
    pub fn pattern(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{port}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Per component, at load

/// A component's outbound HTTP policy, shared by its instances.
pub struct OutboundHttp {
    component: String,
    /// The resolved list, or why it could not be resolved (then every request is denied, as in Spin).
    allowed: std::result::Result<AllowedHosts, String>,
    /// The host's listening address, for self requests (`http://self.alt/...`); set once the host listens.
    self_addr: Arc<OnceLock<SocketAddr>>,
}

impl OutboundHttp {
    /// Resolves component `id`'s `allowed_outbound_hosts` from the application variables' values (`app_vars`, the
    /// same values component variables get). Fails, like Spin's loader, when an entry is malformed as written or
    /// with the variables' defaults; a list that only the actual values make invalid denies every request and is
    /// reported here, as Spin reports it (at the first request there).
    pub fn resolve(
        manifest: &Manifest,
        id: &str,
        app_vars: &BTreeMap<String, String>,
        self_addr: Arc<OnceLock<SocketAddr>>,
    ) -> Result<Self> {
        let component = manifest.component.get(id).with_context(|| format!("no component `{id}`"))?;
        let hosts = &component.allowed_outbound_hosts;
        AllowedHosts::validate(hosts, &|name| default_value(manifest, name))
            .with_context(|| format!("component `{id}`: `allowed_outbound_hosts` is malformed"))?;
        let values = |name: &str| -> Result<String> {
            app_vars.get(name).cloned().with_context(|| format!("invalid variable name {name:?}"))
        };
        let component_ids: Vec<String> = manifest.component.keys().cloned().collect();
        let allowed = AllowedHosts::parse(hosts, &values, &component_ids).map_err(|e| format!("{e:#}"));
        if let Err(e) = &allowed {
            eprintln!(
                "component `{id}`: error parsing allowed outbound hosts with the variables' values ({e}); every \
                 outbound request of this component will be denied"
            );
        }
        Ok(Self { component: id.to_owned(), allowed, self_addr })
    }

    /// A policy from an already resolved list (tests).
    pub fn new(component: &str, allowed: AllowedHosts, self_addr: Arc<OnceLock<SocketAddr>>) -> Self {
        Self { component: component.to_owned(), allowed: Ok(allowed), self_addr }
    }

    /// Prints what Spin's `disallowed_host_handler` prints, naming the component and the request.
    fn report_denied(&self, uri: &http::Uri, pattern: &str, is_self: bool) {
        let request = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or_default(),
            uri.path()
        );
        let what = if is_self {
            "tried to make an HTTP request to its own app but it does not have permission".to_owned()
        } else {
            format!("tried to make an outbound network connection to disallowed destination '{pattern}'")
        };
        eprintln!(
            "Warning: component `{}` {what} (request to {request}).\nTo allow this request, add \
             'allowed_outbound_hosts = [\"{pattern}\"]' to the manifest component section.",
            self.component
        );
    }
}

/// Spin's loader validates every component's list, served or not (`crates/loader/src/local.rs`).
pub fn validate_manifest(manifest: &Manifest) -> Result<()> {
    for (id, component) in &manifest.component {
        AllowedHosts::validate(&component.allowed_outbound_hosts, &|name| default_value(manifest, name))
            .with_context(|| format!("component `{id}`: `allowed_outbound_hosts` is malformed"))?;
    }
    Ok(())
}

/// The loader's resolver: a variable's default, or an error for a required variable or an unknown name.
fn default_value(manifest: &Manifest, name: &str) -> Result<String> {
    let var = manifest.variables.get(name).with_context(|| format!("invalid variable name {name:?}"))?;
    var.default.clone().with_context(|| format!("no provider resolved required variable {name:?}"))
}

type Body = UnsyncBoxBody<Bytes, ErrorCode>;
type IoFuture = Box<dyn Future<Output = std::result::Result<(), ErrorCode>> + Send>;

/// The `wasi:http` client hooks of one instance: Spin's `prepare_request`, then the real send.
pub struct OutboundHooks(pub Arc<OutboundHttp>);

impl wasmtime_wasi_http::p3::WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<Body>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<
        dyn Future<
                Output = std::result::Result<
                    (http::Response<Body>, IoFuture),
                    wasmtime_wasi::TrappableError<ErrorCode>,
                >,
            > + Send,
    > {
        // As in Spin: a response-processing error reported by the guest is of no use here.
        _ = fut;
        let outbound = self.0.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            // Spin: a request without an authority, or to `self.alt`, is a request to the app itself.
            let is_self = uri.authority().is_none_or(|a| a.host().is_empty() || a.host() == "self.alt");
            let allowed = match &outbound.allowed {
                Err(_) => false,
                Ok(list) if is_self => list.allows_relative_url(&["http", "https"]),
                Ok(list) => OutboundUrl::from_uri(&uri).is_some_and(|url| list.allows(&url)),
            };
            if !allowed {
                let pattern = match OutboundUrl::from_uri(&uri) {
                    _ if is_self => "http://self".to_owned(),
                    Some(url) => url.pattern(),
                    None => uri.to_string(),
                };
                outbound.report_denied(&uri, &pattern, is_self);
                return Err(ErrorCode::HttpRequestDenied.into());
            }
            if is_self {
                // Spin sends self requests to the address the trigger listens on, with the inbound scheme (ours is
                // plain HTTP).
                let Some(addr) = outbound.self_addr.get() else {
                    return Err(ErrorCode::HttpRequestUriInvalid.into());
                };
                let authority: http::uri::Authority =
                    addr.to_string().parse().map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.path_and_query = uri.path_and_query().cloned().or_else(|| Some("/".parse().expect("valid")));
                let host =
                    http::HeaderValue::from_str(authority.as_str()).map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
                parts.authority = Some(authority);
                *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
                request.headers_mut().insert(http::header::HOST, host);
            } else if uri.host().is_some_and(|h| h.to_ascii_lowercase().ends_with(SERVICE_CHAINING_DOMAIN_SUFFIX)) {
                eprintln!(
                    "component `{}`: request to {uri}: service chaining (*.spin.internal) is not supported by \
                     scenefin-host",
                    outbound.component
                );
                return Err(ErrorCode::InternalError(Some("service chaining is not supported".into())).into());
            }
            let options = RequestOptions {
                connect_timeout: Some(options.and_then(|o| o.connect_timeout).unwrap_or(DEFAULT_TIMEOUT)),
                first_byte_timeout: Some(options.and_then(|o| o.first_byte_timeout).unwrap_or(DEFAULT_TIMEOUT)),
                between_bytes_timeout: Some(options.and_then(|o| o.between_bytes_timeout).unwrap_or(DEFAULT_TIMEOUT)),
            };
            let (response, io) = wasmtime_wasi_http::p3::default_send_request(request, Some(options)).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(name: &str) -> Result<String> {
        bail!("invalid variable name {name:?}")
    }

    fn list(hosts: &[&str]) -> AllowedHosts {
        let hosts: Vec<String> = hosts.iter().map(|s| (*s).to_owned()).collect();
        AllowedHosts::parse(&hosts, &no_vars, &[]).expect("parse")
    }

    fn url(s: &str) -> OutboundUrl {
        OutboundUrl::from_uri(&s.parse().expect("uri")).expect("absolute")
    }

    // Spin: allowed_hosts.rs `test_allowed_hosts_respects_allow_all` / default ports per scheme.
    #[test]
    fn scheme_host_and_default_port() {
        let allowed = list(&["http://example.com", "https://api.example.com"]);
        assert!(allowed.allows(&url("http://example.com/a")));
        assert!(allowed.allows(&url("http://example.com:80/a")));
        assert!(!allowed.allows(&url("http://example.com:8080/a")));
        assert!(!allowed.allows(&url("https://example.com/a")));
        assert!(allowed.allows(&url("https://api.example.com/x?y")));
        assert!(allowed.allows(&url("https://API.Example.com:443/")));
        assert!(!allowed.allows(&url("https://evil.api.example.com/")));
    }

    // Spin: `test_allowed_hosts_can_be_subdomain_wildcards`, `wildcard_subdomain_is_case_insensitive`.
    #[test]
    fn subdomain_wildcards() {
        let allowed = list(&["http://*.example.com", "http://*.example2.com:8383", "http://*.Example3.COM"]);
        assert!(allowed.allows(&url("http://a.example.com/foo/bar")));
        assert!(allowed.allows(&url("http://a.b.example.com/foo/bar")));
        assert!(allowed.allows(&url("http://a.b.example2.com:8383/foo/bar")));
        assert!(!allowed.allows(&url("http://a.b.example2.com/foo/bar")));
        assert!(!allowed.allows(&url("http://example.com/foo/bar")));
        assert!(!allowed.allows(&url("http://example.com:8383/foo/bar")));
        assert!(!allowed.allows(&url("http://myexample.com/foo/bar")));
        assert!(allowed.allows(&url("http://foo.example3.com")));
    }

    // Spin: `PortConfig`, `IndividualPortConfig` (ranges exclude their end), `*` ports and schemes.
    #[test]
    fn ports_and_any() {
        let allowed = list(&["http://localhost:8000..9000", "https://*:*", "*://pay.example:7443"]);
        assert!(allowed.allows(&url("http://localhost:8000/")));
        assert!(allowed.allows(&url("http://localhost:8999/")));
        assert!(!allowed.allows(&url("http://localhost:9000/")));
        assert!(allowed.allows(&url("https://anything.example:1234/")));
        assert!(!allowed.allows(&url("http://anything.example/")));
        let any_scheme = list(&["*://pay.example:7443"]);
        assert!(any_scheme.allows(&url("http://pay.example:7443/")));
        assert!(any_scheme.allows(&url("https://pay.example:7443/")));
        assert!(!any_scheme.allows(&url("https://pay.example/")));
        // A `*` scheme has no default port, so a port is required.
        assert!(AllowedHostConfig::parse("*://example.com").is_err());
        assert!(list(&["*://*:*"]).allows(&url("http://a.b:1/")));
    }

    // Spin: `test_cidr`, `ipv6_literal_allows_and_denies_requests`, `ipv6_cidr_allows_addresses_in_range`.
    #[test]
    fn ip_literals_and_cidr() {
        let allowed = list(&["http://10.0.0.0/8", "http://[::1]", "http://2001:db8::/32", "*://127.0.0.1/24:63551"]);
        assert!(allowed.allows(&url("http://10.1.2.3/")));
        assert!(!allowed.allows(&url("http://11.1.2.3/")));
        assert!(allowed.allows(&url("http://[::1]/some/path")));
        assert!(!allowed.allows(&url("http://[::1]:81/")));
        assert!(allowed.allows(&url("http://[2001:db8:abcd::1]/x")));
        assert!(!allowed.allows(&url("http://[2001:db9::1]/")));
        assert!(allowed.allows(&url("http://127.0.0.9:63551/")));
        let literal = list(&["http://127.0.0.1:3000"]);
        assert!(literal.allows(&url("http://127.0.0.1:3000/")));
        assert!(!literal.allows(&url("http://localhost:3000/")));
    }

    // Spin: `test_allowed_hosts_with_trailing_slash`.
    #[test]
    fn trailing_slash() {
        let allowed = list(&["https://my.api.com/"]);
        assert!(allowed.allows(&url("https://my.api.com")));
        assert!(allowed.allows(&url("https://my.api.com/")));
    }

    // Spin: `rejects_invalid_allowed_host_entries`, `rejects_malformed_ipv6_allowed_hosts`,
    // `rejects_double_slash_paths`, `rejects_wildcard_non_domain_suffixes`, `invalid_explicit_port_reports_port_error`.
    #[test]
    fn invalid_entries() {
        for bad in [
            "http://example.com:notaport",
            "http://example.com:8080..70000",
            "http://self:notaport",
            "http://*:notaport",
            "http://127.0.0.1:notaport",
            "http://[::1]:notaport",
            "http://*.example.com:8080..",
            "http://example.com:8080/p",
            "http://*.example.com/p",
            "http://127.0.0.0/24/p",
            "http://[::1junk",
            "http://*.",
            "http://*.:8080",
            "example.com:8080",
            "example.com",
            "*",
            "",
            "http://example%.com",
            "http://example%GG.com",
            "http://exa[mple.com",
            r"http://exa\mple.com",
            "http://example.com:80:90",
            "http://[vG.example]",
            "http://[::1]/foo",
            "http://ff00::/8/extra",
            "http://[::1",
            "http://[::1]::80",
            "[::1]:8080",
            "http://example.com//",
            "http://*.127.0.0.1",
            "http://*.192.168.001.001",
            "http://*.[::1]",
            "http://ex*ample.com",
            "http://*.*.example.com",
            "ht-tp://example.com",
            "{http,https}://example.com",
            "http://{a,b}",
        ] {
            assert!(AllowedHostConfig::parse(bad).is_err(), "expected {bad:?} to be rejected");
        }
        for bad in ["http://example.com:99999", "http://[::1]:99999", "http://ff00::/8:99999"] {
            let err = AllowedHostConfig::parse(bad).expect_err(bad);
            assert_eq!(err.to_string(), "Invalid allowed host port \"99999\"");
        }
        let hosts = vec!["insecure:allow-all".to_owned()];
        assert!(AllowedHosts::parse(&hosts, &no_vars, &[]).is_err());
    }

    // Spin: `self`/`self.alt` only allow relative requests (`allows_relative`); `*` host allows them too.
    #[test]
    fn self_requests() {
        assert!(list(&["http://self"]).allows_relative_url(&["http", "https"]));
        assert!(list(&["https://self.alt"]).allows_relative_url(&["http", "https"]));
        assert!(list(&["*://*:*"]).allows_relative_url(&["http", "https"]));
        assert!(!list(&["http://localhost:3000"]).allows_relative_url(&["http", "https"]));
        assert!(!list(&["http://self"]).allows(&url("http://self/")));
        assert!(!AllowedHosts::default().allows_relative_url(&["http", "https"]));
    }

    // Spin: `variables_make_hosts_valid`, `bad_variables_make_hosts_invalid`,
    // `allowed_hosts_ignores_empty_due_to_empty_variables`, `missing_variables_ignored_when_checking_validity`.
    #[test]
    fn templates() {
        let vars = BTreeMap::from([
            ("dbhost".to_owned(), "example.com".to_owned()),
            ("dbport".to_owned(), "1234".to_owned()),
            ("webhook_hosts".to_owned(), "https://hooks.partner.example".to_owned()),
            ("empty".to_owned(), String::new()),
            ("two".to_owned(), "https://a.example,https://b.example".to_owned()),
        ]);
        let lookup = |name: &str| -> Result<String> { vars.get(name).cloned().context("no such variable") };
        let hosts: Vec<String> =
            ["http://{{ dbhost }}:{{dbport}}", "{{ webhook_hosts }}", "https://{{ empty }}", "{{empty}}"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        let allowed = AllowedHosts::parse(&hosts, &lookup, &[]).expect("parse");
        assert_eq!(allowed.hosts.len(), 2, "empty resolutions are dropped");
        assert!(allowed.allows(&url("http://example.com:1234/")));
        assert!(allowed.allows(&url("https://hooks.partner.example/hook")));
        // One variable is one entry: a comma-separated value is not split, and is invalid.
        assert!(AllowedHosts::parse(&["{{ two }}".to_owned()], &lookup, &[]).is_err());
        // An undefined variable fails resolution (Spin then denies every request of the component).
        assert!(AllowedHosts::parse(&["https://{{ nope }}".to_owned()], &lookup, &[]).is_err());
        assert!(AllowedHosts::parse(&["https://{{ dbhost ".to_owned()], &lookup, &[]).is_err());
        // Validation at load: defaults that make an entry invalid fail; missing defaults defer the check.
        let bad_default = |_: &str| -> Result<String> { Ok("zoinks, Scooby!".to_owned()) };
        assert!(AllowedHosts::validate(&["http://{{ dbhost }}".to_owned()], &bad_default).is_err());
        assert!(AllowedHosts::validate(&["http://{{ dbhost }}".to_owned()], &no_vars).is_ok());
        assert!(AllowedHosts::validate(&["zootle! wurdl!".to_owned()], &no_vars).is_err());
    }

    // Spin: `expand_wildcard_service_chaining_lists_all_components`.
    #[test]
    fn service_chaining_wildcard_expands_to_components() {
        let ids = vec!["first".to_owned(), "second".to_owned()];
        let allowed = AllowedHosts::parse(&["http://*.spin.internal".to_owned()], &no_vars, &ids).expect("parse");
        assert_eq!(allowed.hosts.len(), 2);
        assert!(allowed.allows(&url("http://first.spin.internal/")));
        assert!(!allowed.allows(&url("http://third.spin.internal/")));
    }

    // The `url` crate's host parsing that Spin relies on.
    #[test]
    fn host_parsing_like_url_crate() {
        assert_eq!(Host::parse("127.1").expect("ipv4"), Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(Host::parse("0x7f.0.0.1").expect("ipv4"), Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(Host::parse("192.168.001.001").expect("ipv4"), Host::Ipv4(Ipv4Addr::new(192, 168, 1, 1)));
        assert!(Host::parse("256.0.0.1").is_err());
        assert!(Host::parse("1.2.3.4.5").is_err());
        assert_eq!(Host::parse("ExAmple%2Ecom").expect("domain"), Host::Domain("example.com".into()));
        assert_eq!(
            Host::parse("xn--bcher-kva.example").expect("punycode"),
            Host::Domain("xn--bcher-kva.example".into())
        );
        assert!(Host::parse("bücher.example").is_err());
    }

    /// Sends one request through the hooks the way wasmtime-wasi-http's `wasi:http/client.send` does.
    async fn send(outbound: &Arc<OutboundHttp>, uri: &str) -> std::result::Result<(u16, String), ErrorCode> {
        use wasmtime_wasi_http::p3::WasiHttpHooks as _;
        let body = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync();
        let uri: http::Uri = uri.parse().expect("uri");
        let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let request = http::Request::builder().uri(uri).header("host", host).body(body).expect("request");
        let mut hooks = OutboundHooks(outbound.clone());
        let fut = hooks.send_request(request, None, Box::new(async { Ok(()) }));
        match Box::into_pin(fut).await {
            Ok((response, _io)) => {
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok((status, String::from_utf8_lossy(&body).into_owned()))
            }
            Err(e) => Err(e.downcast().expect("an error code, not a trap")),
        }
    }

    /// A one-shot HTTP/1.1 server that answers each request with its Host header and path.
    async fn echo_server() -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    let host = head
                        .lines()
                        .find_map(|l| l.strip_prefix("host: ").or_else(|| l.strip_prefix("Host: ")))
                        .unwrap_or_default()
                        .to_owned();
                    let body = format!("{host} {path}");
                    let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    // Spin's `prepare_request` then a real send (`default_send_request`): allowed URLs go out, others get
    // `HttpRequestDenied`, `http://self.alt/...` goes to the app's own address when `self` is allowed.
    #[tokio::test]
    async fn hooks_send_allowed_and_deny_the_rest() {
        let addr = echo_server().await;
        let self_addr = Arc::new(OnceLock::new());
        self_addr.set(addr).expect("set");
        let allowed = list(&[&format!("http://127.0.0.1:{}", addr.port()), "http://self"]);
        let outbound = Arc::new(OutboundHttp::new("webhooks", allowed, self_addr.clone()));
        let (status, body) =
            send(&outbound, &format!("http://127.0.0.1:{}/hook?x=1", addr.port())).await.expect("sent");
        assert_eq!((status, body.as_str()), (200, format!("127.0.0.1:{} /hook?x=1", addr.port()).as_str()));
        let (status, body) = send(&outbound, "http://self.alt/api/health").await.expect("self request");
        assert_eq!((status, body), (200, format!("{addr} /api/health")));
        let other = format!("http://localhost:{}/hook", addr.port());
        assert!(matches!(send(&outbound, &other).await.expect_err("denied"), ErrorCode::HttpRequestDenied));
        assert!(matches!(
            send(&outbound, "https://example.com/").await.expect_err("denied"),
            ErrorCode::HttpRequestDenied
        ));
        // An empty list (the default) denies everything, self requests included.
        let none = Arc::new(OutboundHttp::new("quiet", AllowedHosts::default(), self_addr));
        let url = format!("http://127.0.0.1:{}/hook", addr.port());
        assert!(matches!(send(&none, &url).await.expect_err("denied"), ErrorCode::HttpRequestDenied));
        assert!(matches!(send(&none, "http://self.alt/x").await.expect_err("denied"), ErrorCode::HttpRequestDenied));
    }
}
