//! `--runtime-config-file`: the part of Spin's runtime configuration format the host implements, the `default`
//! key-value store:
//!
//! ```toml
//! [key_value_store.default]
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//! ```
//!
//! or `type = "spin"` with an optional `path` (SQLite; relative paths are resolved against the file's directory).
//! Anything else in the file is refused by name rather than ignored, so a setting never silently does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// Where the `default` store lives, as a runtime config file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite at this file (Spin's `type = "spin"`); `None`: the state directory's default file.
    Sqlite(Option<PathBuf>),
    /// Redis at this URL.
    Redis(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key_value_store: BTreeMap<String, Store>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Store {
    Spin { path: Option<PathBuf> },
    Redis { url: String },
}

/// Reads the file at `path`.
pub fn load(path: &Path) -> Result<Option<StoreConfig>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path.parent().unwrap_or(Path::new(""))).with_context(|| format!("in {}", path.display()))
}

/// Parses a runtime config; `None` when it leaves the `default` store as it is.
pub fn parse(text: &str, base: &Path) -> Result<Option<StoreConfig>> {
    let file: File = toml::from_str(text)?;
    let mut config = None;
    for (label, store) in file.key_value_store {
        if !crate::bindings::PROVIDED_STORES.contains(&label.as_str()) {
            bail!("key_value_store.{label}: this host provides only the `default` store");
        }
        config = Some(match store {
            Store::Spin { path } => StoreConfig::Sqlite(path.map(|p| base.join(p))),
            Store::Redis { url } if url.starts_with("redis://") || url.starts_with("rediss://") => {
                StoreConfig::Redis(url)
            }
            Store::Redis { .. } => bail!("key_value_store.{label}: url must start with redis:// or rediss://"),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_spins_format() {
        let redis = "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n";
        assert_eq!(parse(redis, Path::new("/x")).ok(), Some(Some(StoreConfig::Redis("redis://127.0.0.1:6379".into()))));
        let spin = "[key_value_store.default]\ntype = \"spin\"\npath = \"data/kv.db\"\n";
        let want = StoreConfig::Sqlite(Some(PathBuf::from("/x/data/kv.db")));
        assert_eq!(parse(spin, Path::new("/x")).ok(), Some(Some(want)));
        assert_eq!(parse("", Path::new("/x")).ok(), Some(None));
    }

    #[test]
    fn reads_the_files_in_deploy() {
        let redis = include_str!("../../../deploy/runtime-config.redis.toml");
        assert!(matches!(parse(redis, Path::new("deploy")), Ok(Some(StoreConfig::Redis(_)))));
        let sqlite = include_str!("../../../deploy/runtime-config.sqlite.toml");
        let want = StoreConfig::Sqlite(Some(PathBuf::from("deploy/../.spin/sqlite_key_value.db")));
        assert_eq!(parse(sqlite, Path::new("deploy")).ok(), Some(Some(want)));
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        for bad in [
            "[key_value_store.other]\ntype = \"spin\"\n",
            "[key_value_store.default]\ntype = \"azure_cosmos\"\n",
            "[key_value_store.default]\ntype = \"redis\"\n",
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"http://x\"\n",
            "[sqlite_database.default]\ntype = \"spin\"\n",
        ] {
            assert!(parse(bad, Path::new("/x")).is_err(), "{bad}");
        }
    }
}
