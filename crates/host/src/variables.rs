//! Spin variables: application variables (`[variables]`) resolved from `SPIN_VARIABLE_<NAME>` environment
//! overrides or their defaults, and component variables (`[component.X.variables]`) as templates over them.
//!
//! Everything is resolved once at start-up, so a missing required variable stops the host with a clear error
//! instead of failing requests later (Spin's variables factor validates the same way before serving).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result, bail};

use crate::manifest::{Manifest, check_variable_name};

/// Resolves application variables: environment override first (`SPIN_VARIABLE_` + upper-case name), then default.
pub fn resolve_application(manifest: &Manifest, env: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut resolved = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, var) in &manifest.variables {
        let key = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
        match env.get(&key).cloned().or_else(|| var.default.clone()) {
            Some(value) => {
                resolved.insert(name.clone(), value);
            }
            None => missing.push(format!("`{name}` (set {key})")),
        }
    }
    if !missing.is_empty() {
        bail!("required variables are not set: {}", missing.join(", "));
    }
    Ok(resolved)
}

/// Expands a component variable template such as `"{{ region }}.db.example.com"`.
pub fn expand(template: &str, app: &BTreeMap<String, String>) -> Result<String> {
    Template::parse(template)?.resolve(&|name| {
        check_variable_name(name)?;
        app.get(name).cloned().with_context(|| format!("template {template:?} uses undefined variable `{name}`"))
    })
}

/// A manifest template (Spin's `spin_expressions::Template`): literal text and `{{ name }}` expressions, each
/// trimmed and running to the next `}}`; an unclosed `{{` is an error. Component variables and
/// `allowed_outbound_hosts` entries are templates over the application variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Expr(String),
}

impl Template {
    /// Splits `template` into its literal text and expressions.
    pub fn parse(template: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_owned()));
            }
            let (expr, after) = rest[start + 2..]
                .split_once("}}")
                .with_context(|| format!("unclosed `{{{{` in template {template:?}"))?;
            parts.push(Part::Expr(expr.trim().to_owned()));
            rest = after;
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(Self(parts))
    }

    /// Whether it has no expression.
    pub fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The text with each expression replaced by `lookup(name)`.
    pub fn resolve(&self, lookup: &dyn Fn(&str) -> Result<String>) -> Result<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Lit(lit) => out.push_str(lit),
                Part::Expr(name) => out.push_str(&lookup(name)?),
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.0 {
            match part {
                Part::Lit(lit) => f.write_str(lit)?,
                Part::Expr(name) => write!(f, "{{{{ {name} }}}}")?,
            }
        }
        Ok(())
    }
}

/// Resolves one component's variables.
pub fn resolve_component(
    manifest: &Manifest,
    id: &str,
    app: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let Some(component) = manifest.component.get(id) else { bail!("no component `{id}`") };
    component
        .variables
        .iter()
        .map(|(name, template)| {
            let value = expand(template, app).with_context(|| format!("variable `{name}` of component `{id}`"))?;
            Ok((name.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_application_variables() {
        let app = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        assert_eq!(expand("{{ region }}.db/{{region}}", &app).expect("expand"), "eu.db/eu");
        assert_eq!(expand("plain", &app).expect("expand"), "plain");
        assert!(expand("{{ nope }}", &app).is_err());
        assert!(expand("{{ region ", &app).is_err());
    }
}
