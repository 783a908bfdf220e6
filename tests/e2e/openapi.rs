//! `docs/openapi.yaml` against the components: the document is well formed, it documents exactly the routes of the
//! components' route tables (the `//! | Method | Path | ... |` tables of `components/*/src/lib.rs`), every
//! operation it documents is really routed by some component of the running app, and `OPTIONS` and `405`s on a
//! documented path name exactly its methods in `Allow`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use scenefin_e2e::{TestApp, workspace};
use serde_json::Value;

/// The operation keys of an OpenAPI path item.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The stand-in for a path parameter without an example.
const PLACEHOLDER: &str = "placeholder";

pub(crate) fn document() -> Value {
    let path = workspace().join("docs/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// One documented operation.
pub(crate) struct Operation<'a> {
    /// Upper-case method.
    pub(crate) method: String,
    /// The path template, e.g. `/api/utility/orders/{id}`.
    pub(crate) path: &'a str,
    pub(crate) item: &'a Value,
    pub(crate) op: &'a Value,
}

impl Operation<'_> {
    pub(crate) fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Path-level and operation-level parameters, resolved.
    pub(crate) fn parameters<'d>(&'d self, doc: &'d Value) -> Vec<&'d Value> {
        [self.item, self.op]
            .into_iter()
            .filter_map(|v| v["parameters"].as_array())
            .flatten()
            .map(|p| resolve(doc, p))
            .collect()
    }
}

pub(crate) fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let Some(paths) = doc["paths"].as_object() else { return Vec::new() };
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push(Operation { method: method.to_uppercase(), path, item, op });
            }
        }
    }
    ops
}

/// Follows `$ref`s (local ones; an unresolvable one is reported by the well-formedness test).
pub(crate) fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match v["$ref"].as_str().and_then(|r| r.strip_prefix('#')).and_then(|pointer| doc.pointer(pointer)) {
            Some(target) => v = target,
            None => break,
        }
    }
    v
}

/// Every `$ref` in `v`, with where it is.
fn refs<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("$ref", Value::String(r)) => out.push((at.to_owned(), r.as_str())),
                    _ => refs(child, &format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The `{name}`s of a path template, in order.
pub(crate) fn template_names(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// A path with its parameter names erased (`/a/{id}/b` → `/a/{}/b`): two templates that differ only in names are the
/// same route.
fn normalise(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') && seg.ends_with('}') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The JSON types a schema allows (through `$ref`, `oneOf`, `anyOf`, `allOf`), `null` left out.
fn schema_types(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolve(doc, schema);
    let mut types = BTreeSet::new();
    match &schema["type"] {
        Value::String(t) => {
            types.insert(t.clone());
        }
        Value::Array(ts) => types.extend(ts.iter().filter_map(Value::as_str).map(str::to_owned)),
        _ => {}
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for branch in schema[key].as_array().into_iter().flatten() {
            types.extend(schema_types(doc, branch));
        }
    }
    types.remove("null");
    types
}

/// The `format`s a schema names (through `$ref`, `oneOf`, `anyOf`, `allOf`).
fn schema_formats(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolve(doc, schema);
    let mut formats: BTreeSet<String> = schema["format"].as_str().map(str::to_owned).into_iter().collect();
    for key in ["oneOf", "anyOf", "allOf"] {
        for branch in schema[key].as_array().into_iter().flatten() {
            formats.extend(schema_formats(doc, branch));
        }
    }
    formats
}

/// Every `properties` entry anywhere in `v`: (where, property name, schema).
fn properties<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a str, &'a Value)>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, schema) in props {
                    out.push((at.to_owned(), name, schema));
                }
            }
            for (k, child) in map {
                properties(child, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                properties(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn openapi_document_is_well_formed() {
    let doc = document();
    let mut problems = Vec::new();

    let version = doc["openapi"].as_str().unwrap_or_default();
    if !version.starts_with("3.1") {
        problems.push(format!("`openapi` is {:?}, not 3.1.x", doc["openapi"]));
    }
    let ops = operations(&doc);
    if ops.is_empty() {
        problems.push("no operations under `paths`".into());
    }

    let mut all_refs = Vec::new();
    refs(&doc, "#", &mut all_refs);
    for (at, r) in &all_refs {
        let target = r.strip_prefix('#').and_then(|pointer| doc.pointer(pointer));
        if target.is_none() {
            problems.push(format!("{at}: $ref {r} does not resolve in the document"));
        }
    }

    let mut operation_ids = BTreeMap::new();
    for op in &ops {
        let name = op.name();
        match op.op["operationId"].as_str() {
            Some(id) => {
                if let Some(other) = operation_ids.insert(id.to_owned(), name.clone()) {
                    problems.push(format!("{name}: operationId {id} is also used by {other}"));
                }
            }
            None => problems.push(format!("{name}: no operationId")),
        }

        let responses = op.op["responses"].as_object();
        if responses.is_none_or(|r| r.is_empty()) {
            problems.push(format!("{name}: no responses"));
        }
        for (status, response) in responses.into_iter().flatten() {
            if !status.starts_with('4') && !status.starts_with('5') {
                continue;
            }
            let schema = &resolve(&doc, response)["content"]["application/problem+json"]["schema"];
            if schema["$ref"] != "#/components/schemas/Problem" {
                let what = "is not application/problem+json with the Problem schema";
                problems.push(format!("{name}: response {status} {what}"));
            }
        }

        let in_template: BTreeSet<&str> = template_names(op.path).into_iter().collect();
        let mut declared = BTreeSet::new();
        for p in op.parameters(&doc).into_iter().filter(|p| p["in"] == "path") {
            let pname = p["name"].as_str().unwrap_or_default();
            if p["required"] != true {
                problems.push(format!("{name}: path parameter {pname} is not `required: true`"));
            }
            declared.insert(pname);
        }
        for missing in in_template.difference(&declared) {
            problems.push(format!("{name}: path parameter {{{missing}}} is not declared"));
        }
        for extra in declared.difference(&in_template) {
            problems.push(format!("{name}: declares path parameter {extra}, which is not in the path"));
        }
    }

    let mut props = Vec::new();
    properties(&doc, "#", &mut props);
    for (at, name, schema) in props {
        if name.ends_with("_fen") && schema_types(&doc, schema) != BTreeSet::from(["integer".to_owned()]) {
            problems.push(format!("{at}: money field {name} is not an integer (fen)"));
        }
        if name.ends_with("_at") && !schema_formats(&doc, schema).contains("date-time") {
            problems.push(format!("{at}: time field {name} is not an RFC 3339 date-time"));
        }
    }

    assert!(problems.is_empty(), "docs/openapi.yaml:\n  {}", problems.join("\n  "));
}

/// A route of a component's route table.
#[derive(Debug)]
struct TableRoute {
    method: String,
    path: String,
    /// `file:line` of its row.
    row: String,
    /// The row says the route takes an `Idempotency-Key`.
    idempotent: bool,
}

/// Splits a Markdown table row into its cells (`\|` is a literal bar).
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                if let Some(cell) = out.last_mut() {
                    cell.push('|');
                }
            }
            '|' => out.push(String::new()),
            _ => {
                if let Some(cell) = out.last_mut() {
                    cell.push(c);
                }
            }
        }
    }
    out.iter().map(|c| c.trim().to_owned()).collect()
}

/// The paths of a route table's Path cell: every backticked path, query strings dropped, and `…/suffix` (or
/// `.../suffix`) read as the previous path with its last segment replaced.
fn row_paths(cell: &str, row: &str) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for (i, quoted) in cell.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let quoted = quoted.split('?').next().unwrap_or_default();
        let path = match quoted.strip_prefix('…').or_else(|| quoted.strip_prefix("...")) {
            Some(suffix) => {
                let previous = paths.last().unwrap_or_else(|| panic!("{row}: `…{suffix}` follows no path"));
                let prefix = previous.rsplit_once('/').map(|(p, _)| p).unwrap_or_default();
                format!("{prefix}{suffix}")
            }
            None => quoted.to_owned(),
        };
        assert!(path.starts_with('/'), "{row}: `{quoted}` in the Path column is not a path");
        paths.push(path);
    }
    assert!(!paths.is_empty(), "{row}: no `path` in the Path column");
    paths
}

/// The routes of every `components/*/src/lib.rs` route table.
fn table_routes() -> Vec<TableRoute> {
    let root = workspace();
    let mut libs: Vec<_> = std::fs::read_dir(root.join("components"))
        .expect("components/")
        .filter_map(Result::ok)
        .map(|e| e.path().join("src/lib.rs"))
        .filter(|p| p.is_file())
        .collect();
    libs.sort();
    let mut routes = Vec::new();
    for lib in libs {
        let text = std::fs::read_to_string(&lib).unwrap_or_else(|e| panic!("reading {}: {e}", lib.display()));
        let file = lib.strip_prefix(&root).unwrap_or(&lib).display().to_string();
        // (Method column, Path column) of the table being read.
        let mut columns: Option<(usize, usize)> = None;
        for (n, line) in text.lines().enumerate() {
            let row = format!("{file}:{}", n + 1);
            let Some(doc) = line.strip_prefix("//!").map(str::trim) else { continue };
            if !doc.starts_with('|') {
                columns = None;
                continue;
            }
            let cells = cells(doc);
            let position = |name: &str| cells.iter().position(|c| c == name);
            if let (Some(m), Some(p)) = (position("Method"), position("Path")) {
                columns = Some((m, p));
                continue;
            }
            if cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' '))) {
                continue;
            }
            let Some((m, p)) = columns else { continue };
            let (Some(methods), Some(path_cell)) = (cells.get(m), cells.get(p)) else {
                panic!("{row}: a route row without Method and Path cells")
            };
            let paths = row_paths(path_cell, &row);
            for method in methods.split(',').map(str::trim) {
                assert!(
                    METHODS.iter().any(|known| known.to_uppercase() == method),
                    "{row}: `{method}` in the Method column is not an HTTP method"
                );
                for path in &paths {
                    routes.push(TableRoute {
                        method: method.to_owned(),
                        path: path.clone(),
                        row: row.clone(),
                        idempotent: path_cell.contains("Idempotency-Key"),
                    });
                }
            }
        }
    }
    routes
}

#[test]
fn route_tables_are_read_as_written() {
    let campus = "`/api/campus/cards/{id}/report-lost`, `…/unfreeze`, `…/reissue` (Idempotency-Key)";
    let orders = "`/api/utility/orders?cursor=&limit=`, `/api/utility/orders/{id}`";

    assert_eq!(
        row_paths(campus, "test"),
        ["/api/campus/cards/{id}/report-lost", "/api/campus/cards/{id}/unfreeze", "/api/campus/cards/{id}/reissue"]
    );
    assert_eq!(row_paths(orders, "test"), ["/api/utility/orders", "/api/utility/orders/{id}"]);
    assert_eq!(cells("| POST, GET | `/a` | `x \\| y` |"), ["POST, GET", "`/a`", "`x | y`"]);
    assert_eq!(normalise("/api/campus/schools/{id}/cards/{card}/freeze"), "/api/campus/schools/{}/cards/{}/freeze");
}

#[test]
fn openapi_documents_exactly_the_routes_of_the_components_route_tables() {
    let doc = document();
    let ops = operations(&doc);
    let documented: BTreeMap<(String, String), &Operation> =
        ops.iter().map(|op| ((op.method.clone(), normalise(op.path)), op)).collect();
    let tables = table_routes();
    let served: BTreeMap<(String, String), &TableRoute> =
        tables.iter().map(|r| ((r.method.clone(), normalise(&r.path)), r)).collect();

    let mut report = String::new();
    let undocumented: Vec<_> = served.iter().filter(|(k, _)| !documented.contains_key(*k)).collect();
    if !undocumented.is_empty() {
        report.push_str("\nserved (in a component's route table) but not documented in docs/openapi.yaml:\n");
        for (_, r) in undocumented {
            let _ = writeln!(report, "  {} {}    ({})", r.method, r.path, r.row);
        }
    }
    let unserved: Vec<_> = documented.iter().filter(|(k, _)| !served.contains_key(*k)).collect();
    if !unserved.is_empty() {
        report.push_str("\ndocumented in docs/openapi.yaml but in no component's route table:\n");
        for (_, op) in unserved {
            let _ = writeln!(report, "  {}", op.name());
        }
    }
    let without_key: Vec<_> = served
        .iter()
        .filter(|(_, r)| r.idempotent)
        .filter_map(|(k, r)| documented.get(k).map(|op| (op, r)))
        .filter(|(op, _)| {
            !op.parameters(&doc).iter().any(|p| {
                p["in"] == "header" && p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("Idempotency-Key"))
            })
        })
        .collect();
    if !without_key.is_empty() {
        report.push_str("\ntaking an Idempotency-Key (says the route table) but not documenting the header:\n");
        for (op, r) in without_key {
            let _ = writeln!(report, "  {}    ({})", op.name(), r.row);
        }
    }
    assert!(report.is_empty(), "docs/openapi.yaml and the route tables of components/*/src/lib.rs differ:{report}");
}

/// The request path of an operation: each path parameter replaced by its schema's first example, or a placeholder.
pub(crate) fn concrete_path(doc: &Value, op: &Operation) -> String {
    let params = op.parameters(doc);
    let mut path = op.path.to_owned();
    for name in template_names(op.path) {
        let example = params
            .iter()
            .find(|p| p["in"] == "path" && p["name"] == name)
            .and_then(|p| resolve(doc, &p["schema"])["examples"][0].as_str());
        path = path.replace(&format!("{{{name}}}"), example.unwrap_or(PLACEHOLDER));
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed_by_some_component() {
    let doc = document();
    let app = TestApp::spawn().await.expect("app starts");

    // Arrange: no credentials, no body, placeholder path parameters: a component that routes the request answers with
    // its own refusal (401, 400, a 404 with a domain code, 422...), never the runtime's or a component's "no such
    // route" 404 nor a 405.
    let mut unrouted = Vec::new();
    for op in operations(&doc) {
        let path = concrete_path(&doc, &op);

        // Act
        let r = app.send_raw(&op.method, &path, Vec::new(), &[]).await;

        // Assert
        let code = r.body["code"].as_str().unwrap_or_default();
        let detail = r.body["detail"].as_str().unwrap_or_default();
        let no_route = r.status == 404
            && (code == "route_not_found"
                || (code == "not_found" && matches!(detail, "no such route" | "no such page")));
        if no_route || r.status == 405 {
            unrouted.push(format!("{}    ({} {path} → {} {code}: {detail})", op.name(), op.method, r.status));
        }
    }
    app.host.shutdown().await;

    assert!(
        unrouted.is_empty(),
        "documented in docs/openapi.yaml but routed by no component:\n  {}",
        unrouted.join("\n  ")
    );
}

/// The methods of a response's `Allow` header (RFC 9110 §10.2.1), or `None` without one.
fn allow(res: &reqwest::Response) -> Option<BTreeSet<String>> {
    let value = res.headers().get(reqwest::header::ALLOW)?.to_str().ok()?;
    Some(value.split(',').map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_and_405s_allow_exactly_the_documented_methods() {
    let doc = document();
    let mut documented: BTreeMap<&str, (String, BTreeSet<String>)> = BTreeMap::new();
    for op in operations(&doc) {
        let concrete = concrete_path(&doc, &op);
        documented.entry(op.path).or_insert_with(|| (concrete, BTreeSet::new())).1.insert(op.method.clone());
    }
    let app = TestApp::spawn().await.expect("app starts");
    let send = |method: &str, path: &str| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        app.client.request(method, format!("{}{path}", app.base)).send()
    };

    // Arrange: every documented path, its parameters filled in; the methods it should allow are the documented ones,
    // OPTIONS, and HEAD exactly where HEAD is really answered (the console's pages).
    let mut wrong = Vec::new();
    for (template, (path, methods)) in &documented {
        let head = send("HEAD", path).await.expect("HEAD");
        let mut expected = methods.clone();
        expected.insert("OPTIONS".to_owned());
        if head.status() != 405 {
            expected.insert("HEAD".to_owned());
        }

        // Act
        let options = send("OPTIONS", path).await.expect("OPTIONS");

        // Assert
        if (options.status().as_u16(), allow(&options).as_ref()) != (204, Some(&expected)) {
            wrong.push(format!(
                "OPTIONS {path} ({template}): {} Allow {:?}, expected 204 Allow {expected:?}",
                options.status(),
                allow(&options)
            ));
        }
        let lacking = ["GET", "POST", "PUT", "DELETE"].into_iter().find(|m| !methods.contains(*m));
        for method in ["TRACE", "PATCH"].into_iter().chain(lacking).filter(|m| !methods.contains(*m)) {
            let res = send(method, path).await.expect(method);
            let status = res.status().as_u16();
            let allowed = allow(&res);
            let content_type =
                res.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body: Value = res.json().await.unwrap_or(Value::Null);
            if (status, allowed.as_ref(), content_type.as_deref(), body["code"].as_str())
                != (405, Some(&expected), Some("application/problem+json"), Some("method_not_allowed"))
            {
                wrong.push(format!(
                    "{method} {path} ({template}): {status} {content_type:?} {} Allow {allowed:?}, expected 405 \
                     problem+json method_not_allowed Allow {expected:?}",
                    body["code"]
                ));
            }
        }
    }
    // An unknown path under each component's prefix is not served with any method.
    for path in [
        "/api/utility/x1",
        "/api/property/orders/x1/x1",
        "/api/campus/cards/x1",
        "/api/coupons/x1",
        "/api/referrals/programs/x1/x1",
        "/api/ops/x1",
        "/api/ops/customers/x1/x1",
        "/api/channels/x1/x1",
        "/x1",
        "/assets/x1.css",
    ] {
        let res = send("OPTIONS", path).await.expect("OPTIONS");
        let status = res.status().as_u16();
        let allowed = allow(&res);
        let content_type = res.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if (status, allowed.is_some(), content_type) != (404, false, Some("application/problem+json")) {
            wrong.push(format!(
                "OPTIONS {path}: {status} {content_type:?} Allow {allowed:?}, expected 404 problem+json"
            ));
        }
    }
    app.host.shutdown().await;

    assert!(wrong.is_empty(), "Allow of OPTIONS and 405s against docs/openapi.yaml:\n  {}", wrong.join("\n  "));
}
