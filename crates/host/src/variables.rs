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
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").with_context(|| format!("unclosed `{{{{` in template {template:?}"))?;
        let name = after[..end].trim();
        check_variable_name(name)?;
        let value = app.get(name).with_context(|| format!("template {template:?} uses undefined variable `{name}`"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
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
