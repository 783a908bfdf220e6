//! What the tests need beyond Rust, checked before a run and installed when missing: Debian packages with `apt-get`
//! (as root, or through passwordless `sudo`), then `npm ci` in tests/browser. When it cannot install them, one line
//! names the command to run and the run stops before building anything.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Result, anyhow, bail};

use crate::{on_path, run};

/// A command the tests run and the Debian package that provides it.
#[derive(PartialEq)]
pub struct Tool {
    command: &'static str,
    package: &'static str,
    why: &'static str,
}

pub const CHROMIUM: Tool = Tool { command: "chromium", package: "chromium", why: "the browser tests" };
pub const NODE: Tool = Tool { command: "node", package: "nodejs", why: "the browser tests" };
pub const NPM: Tool = Tool { command: "npm", package: "npm", why: "`npm ci` in tests/browser" };
/// Not a command: a font with Chinese glyphs (the pages are Chinese first; without one Chromium draws boxes).
pub const CJK_FONT: Tool = Tool {
    command: "a Chinese font (fc-list :lang=zh)",
    package: "fonts-noto-cjk",
    why: "Chinese text in the browser tests",
};
pub const REDIS: Tool = Tool { command: "redis-server", package: "redis-server", why: "the Redis store tests" };
pub const XZ: Tool = Tool { command: "xz", package: "xz-utils", why: "unpacking the Spin CLI" };
pub const WRK: Tool = Tool { command: "wrk", package: "wrk", why: "the load generator of `cargo xtask bench`" };

const NPM_CI: &str = "(cd tests/browser && npm ci)";

/// Installs what of `tools` is missing and, with `browser`, runs `npm ci` in tests/browser unless its node_modules
/// matches package-lock.json; one line per thing installed. Fails with one line naming the command to run when it
/// cannot install.
pub fn ensure(root: &Path, tools: &[&Tool], browser: bool) -> Result<()> {
    let mut missing: Vec<&Tool> = Vec::new();
    for tool in tools {
        if !present(tool) && !missing.contains(tool) {
            missing.push(tool);
        }
    }
    let npm_ci = browser && !node_modules_in_step(root);
    if !missing.is_empty() {
        let commands = missing.iter().map(|t| t.command).collect::<Vec<_>>().join(", ");
        let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
        let sudo = match privilege() {
            Ok(sudo) => sudo,
            Err(why) => {
                let prefix = if is_root() { "" } else { "sudo " };
                let then = if npm_ci { format!(" && {NPM_CI}") } else { String::new() };
                bail!("missing {commands} ({why}); run: {prefix}apt-get install -y {}{then}", packages.join(" "));
            }
        };
        for tool in &missing {
            println!("xtask: installing {} for {} (no `{}` found)", tool.package, tool.why, tool.command);
        }
        apt(sudo, &["update", "-qq"])?;
        apt(sudo, &[&["install", "-y", "-qq"][..], &packages].concat())?;
        let still: Vec<&str> = missing.iter().filter(|t| !present(t)).map(|t| t.command).collect();
        if !still.is_empty() {
            bail!("apt-get installed {} but there is still no {}", packages.join(" "), still.join(", "));
        }
    }
    if npm_ci {
        println!(
            "xtask: npm ci in tests/browser for the browser tests (node_modules missing or not as package-lock.json pins)"
        );
        run(Command::new("npm").current_dir(root.join("tests/browser")).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))
        .map_err(|e| anyhow!("{e:#}; run: {NPM_CI}"))?;
    }
    Ok(())
}

/// Everything is looked up on `PATH` but Chromium (the browser tests run `CHROMIUM`, else Debian's /usr/bin/chromium)
/// and the Chinese font (fontconfig knows one for `zh`).
fn present(tool: &Tool) -> bool {
    if *tool == CJK_FONT {
        return Command::new("fc-list")
            .args([":lang=zh", "family"])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty());
    }
    if *tool == CHROMIUM {
        return std::env::var_os("CHROMIUM").is_some_and(|p| !p.is_empty()) || Path::new("/usr/bin/chromium").is_file();
    }
    on_path(tool.command).is_some()
}

/// How to run apt-get: directly as root (`None`), through `sudo -n` (`Some("sudo")`), or why not at all.
fn privilege() -> Result<Option<&'static str>, &'static str> {
    if on_path("apt-get").is_none() {
        return Err("no apt-get here");
    }
    if is_root() {
        return Ok(None);
    }
    let sudo = on_path("sudo").is_some()
        && Command::new("sudo").args(["-n", "true"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if sudo { Ok(Some("sudo")) } else { Err("not root and no passwordless sudo") }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `DEBIAN_FRONTEND=noninteractive apt-get <args>`, its progress silenced (errors still show).
fn apt(sudo: Option<&str>, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(sudo.unwrap_or("env"));
    if sudo.is_some() {
        cmd.args(["-n", "env"]);
    }
    run(cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]).args(args).stdout(Stdio::null()))
}

/// Whether tests/browser/node_modules holds what package-lock.json pins: npm's record of what it installed
/// (`node_modules/.package-lock.json`) lists the same packages at the same versions.
fn node_modules_in_step(root: &Path) -> bool {
    let dir = root.join("tests/browser");
    let versions = |file: &str| -> Option<Vec<(String, String)>> {
        let lock: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).ok()?).ok()?;
        let packages = lock.get("packages")?.as_object()?;
        let version = |v: &serde_json::Value| v.get("version").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        Some(packages.iter().filter(|(path, _)| !path.is_empty()).map(|(path, v)| (path.clone(), version(v))).collect())
    };
    versions("node_modules/.package-lock.json")
        .is_some_and(|installed| Some(installed) == versions("package-lock.json"))
}
