//! HTTP trigger routing with Spin's rules (spinframework/spin `crates/routes`): exact routes, `:name` segments and
//! trailing `/...` wildcards, the most specific match winning (by the same `routefinder` ranking Spin uses), and
//! the `spin-*` request headers Spin 4 gives a component.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{Result, anyhow};

/// What a matched route tells the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub component: String,
    /// The route as written in spin.toml (base `/`), e.g. `/api/utility/...`.
    pub route: String,
    /// The path below the route's prefix, e.g. `/bills/1` (empty for an exact route).
    pub path_info: String,
    /// `:name` captures.
    pub captures: Vec<(String, String)>,
}

impl RouteMatch {
    /// The route without a trailing wildcard, e.g. `/api/utility`.
    pub fn route_or_prefix(&self) -> &str {
        self.route.strip_suffix("/...").unwrap_or(&self.route)
    }

    /// The headers Spin 4 adds to the request (spinframework/spin `crates/trigger-http/src/headers.rs`).
    pub fn spin_headers(&self, full_url: &str, client: SocketAddr) -> Vec<(String, String)> {
        let mut headers = vec![
            ("spin-path-info".to_owned(), self.path_info.clone()),
            ("spin-full-url".to_owned(), full_url.to_owned()),
            ("spin-matched-route".to_owned(), self.route.clone()),
            ("spin-base-path".to_owned(), "/".to_owned()),
            ("spin-raw-component-route".to_owned(), self.route.clone()),
            ("spin-component-route".to_owned(), self.route_or_prefix().to_owned()),
            ("spin-client-addr".to_owned(), client.to_string()),
        ];
        for (name, value) in &self.captures {
            headers.push((format!("spin-path-match-{}", name.to_ascii_lowercase()), value.clone()));
        }
        headers
    }
}

pub struct Router {
    inner: routefinder::Router<(String, String)>,
}

/// Spin strips one trailing slash and makes the route absolute.
fn sanitize(route: &str) -> String {
    let route = if route.starts_with('/') { route.to_owned() } else { format!("/{route}") };
    route.strip_suffix('/').map(str::to_owned).unwrap_or(route)
}

impl Router {
    /// Builds the router from `(route, component id)` pairs. A later duplicate of the same route replaces an
    /// earlier one, as in Spin.
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut unique: indexmap_lite::IndexMap = indexmap_lite::IndexMap::default();
        for (route, component) in routes {
            unique.insert(sanitize(route), component.to_owned());
        }
        let mut inner = routefinder::Router::new();
        for (route, component) in unique.into_iter() {
            let spec = match route.strip_suffix("/...") {
                Some(prefix) => format!("{prefix}/*"),
                None => route.clone(),
            };
            let written = if route.is_empty() { "/".to_owned() } else { route.clone() };
            inner
                .add(spec.as_str(), (component.clone(), written))
                .map_err(|e| anyhow!("route {route} of component {component}: {e}"))?;
        }
        Ok(Self { inner })
    }

    /// The best match for a request path, if any.
    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let found = self.inner.best_match(path)?;
        let (component, route) = found.handler().clone();
        let captures = found.captures();
        let path_info = match captures.wildcard() {
            // Spin keeps trailing slashes, which routefinder drops.
            Some(rest) => match (rest.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".to_owned(),
                (false, false) => format!("/{rest}"),
                (false, true) => format!("/{rest}/"),
            },
            None => String::new(),
        };
        let named: HashMap<&str, &str> = captures.iter().collect();
        let mut captures: Vec<(String, String)> =
            named.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        captures.sort();
        Some(RouteMatch { component, route, path_info, captures })
    }
}

/// A tiny insertion-ordered map, enough to dedupe routes the way Spin does without another dependency.
mod indexmap_lite {
    #[derive(Default)]
    pub struct IndexMap(Vec<(String, String)>);

    impl IndexMap {
        pub fn insert(&mut self, key: String, value: String) {
            match self.0.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => self.0.push((key, value)),
            }
        }

        pub fn into_iter(self) -> impl Iterator<Item = (String, String)> {
            self.0.into_iter()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::build([
            ("/...", "console"),
            ("/api/utility/...", "utility"),
            ("/api/utility/billers", "billers-exact"),
            ("/api/users/:id/...", "users"),
            ("/api/users/:id/profile", "profile"),
        ])
        .expect("router")
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router();
        assert_eq!(r.route("/api/utility/billers").map(|m| m.component), Some("billers-exact".into()));
        assert_eq!(r.route("/api/utility/bills/1").map(|m| m.component), Some("utility".into()));
        assert_eq!(r.route("/api/users/42/profile").map(|m| m.component), Some("profile".into()));
        assert_eq!(r.route("/api/users/42/orders").map(|m| m.component), Some("users".into()));
        assert_eq!(r.route("/elsewhere").map(|m| m.component), Some("console".into()));
    }

    #[test]
    fn path_info_and_captures_follow_spin() {
        let r = router();
        let m = r.route("/api/utility/bills/1/").expect("match");
        assert_eq!(
            (m.route.as_str(), m.path_info.as_str(), m.route_or_prefix()),
            ("/api/utility/...", "/bills/1/", "/api/utility")
        );
        assert_eq!(r.route("/api/utility").expect("match").path_info, "");
        let m = r.route("/api/users/42/a/b").expect("match");
        assert_eq!(m.captures, vec![("id".to_owned(), "42".to_owned())]);
        assert_eq!(m.path_info, "/a/b");
        assert_eq!(m.route_or_prefix(), "/api/users/:id");
    }
}
