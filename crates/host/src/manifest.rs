//! The subset of Spin's application manifest (`spin_manifest_version = 2`) the host runs: HTTP triggers,
//! components (source, key-value stores, variables) and application variables.
//!
//! Unknown fields are ignored, as Spin ignores what a trigger or tool does not use; anything the host would have
//! to guess about is an error at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    #[serde(default)]
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, Component>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Application {
    #[serde(default)]
    pub name: String,
}

/// An application variable: `{ default = "..." }`, `{ required = true }`, optionally `secret = true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Deserialize)]
pub struct HttpTrigger {
    pub route: Route,
    pub component: String,
}

/// A route pattern, or `{ private = true }` for a component reachable only by service chaining.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Route {
    Pattern(String),
    Private { private: bool },
}

#[derive(Debug, Deserialize)]
pub struct Component {
    pub source: String,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
}

impl Manifest {
    /// Reads and validates `spin.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let manifest: Manifest = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<()> {
        if self.spin_manifest_version != 2 {
            bail!("spin_manifest_version must be 2 (found {})", self.spin_manifest_version);
        }
        for name in self.variables.keys() {
            check_variable_name(name).with_context(|| format!("application variable `{name}`"))?;
        }
        for (name, var) in &self.variables {
            if var.required && var.default.is_some() {
                bail!("variable `{name}` cannot be both required and have a default");
            }
            if !var.required && var.default.is_none() {
                bail!("variable `{name}` needs a default or `required = true`");
            }
        }
        for trigger in &self.trigger.http {
            if !self.component.contains_key(&trigger.component) {
                bail!(
                    "trigger route {:?} names component `{}`, which is not defined",
                    trigger.route,
                    trigger.component
                );
            }
            if let Route::Private { private: false } = trigger.route {
                bail!("route must be a string pattern or '{{ private = true }}': '{}'", trigger.component);
            }
        }
        for (id, component) in &self.component {
            for name in component.variables.keys() {
                check_variable_name(name).with_context(|| format!("variable `{name}` of component `{id}`"))?;
            }
        }
        Ok(())
    }

    /// The component's wasm file, relative to the manifest's directory.
    pub fn source_path(&self, manifest_dir: &Path, id: &str) -> Option<PathBuf> {
        self.component.get(id).map(|c| manifest_dir.join(&c.source))
    }
}

/// Spin's rule for variable names: lowercase ASCII letters, digits and underscores, starting with a letter.
pub fn check_variable_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__");
    if valid {
        Ok(())
    } else {
        bail!("invalid variable name `{name}`: use lowercase letters, digits and single underscores")
    }
}
