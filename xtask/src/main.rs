//! `cargo xtask <command>`: the project's build and run tasks, in Rust so they work wherever cargo does.
//!
//! - `build`: make sure the `wasm32-wasip2` target is installed, then build every component of spin.toml and every
//!   test fixture in release, in one cargo invocation.
//! - `up [host args...]`: build, generate development secrets on first run, serve spin.toml on 127.0.0.1:3000, and
//!   print (every time) the console's address and the operator token with where it is kept.
//! - `test [cargo test args...]`: build, then `cargo test --workspace`; a full run (no args) first installs what the
//!   tests need beyond Rust (see `deps.rs`; `test --deps-only` does only that), and at the end regenerates
//!   docs/RELIABILITY.md from the rows the reliability tests wrote, then runs the money and concurrency suites
//!   again under the real Spin CLI (`test-spin`) when there is one.
//! - `test-spin [spin-sqlite | spin-redis] [test filters...]`: install what it needs (xz to unpack the Spin CLI,
//!   redis-server for spin-redis), build, then run the end-to-end suites of [`SPIN_SUITES`] (or the filters) under
//!   `spin up`, on Spin's SQLite store and on Redis (or the one runtime named).
//! - `check-invariants`: the architecture invariants a machine can check (see ARCHITECTURE.md).
//! - `bench`: load-test the host with `wrk`, then real Spin (SQLite) and both on Redis, count store operations per
//!   route (the `kv_ops` test) and write docs/BENCHMARKS.md (see `bench.rs`).

mod bench;
mod deps;
mod reliability;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> std::process::ExitCode {
    match xtask() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn xtask() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = root();
    match task.as_str() {
        "build" => build(&root),
        "up" => {
            build(&root)?;
            up(&root, &rest)
        }
        "check-invariants" => check_invariants(&root),
        "bench" => {
            build(&root)?;
            bench::bench(&root)
        }
        "test" => {
            let deps_only = rest.first().is_some_and(|a| a == "--deps-only");
            if rest.is_empty() || deps_only {
                let mut needs = vec![&deps::CHROMIUM, &deps::CJK_FONT, &deps::NODE, &deps::NPM, &deps::REDIS];
                needs.extend(spin_needs(&root, &[]));
                deps::ensure(&root, &needs, true)?;
                if deps_only {
                    println!("xtask: everything the tests need is installed");
                    return Ok(());
                }
            }
            build(&root)?;
            // Tests that kill or multiply hosts run the binary.
            run(Command::new(cargo()).current_dir(&root).args(["build", "-p", "scenefin-host"]))?;
            let rows = root.join("target/reliability");
            let _ = std::fs::remove_dir_all(&rows);
            run(Command::new(cargo()).current_dir(&root).args(["test", "--workspace"]).args(&rest))?;
            if rest.is_empty() {
                reliability::write(&root, &rows)?;
                test_spin(&root, &[])?;
            }
            Ok(())
        }
        "test-spin" => {
            deps::ensure(&root, &spin_needs(&root, &rest), false)?;
            build(&root)?;
            test_spin(&root, &rest)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <build | up [host args] | test [--deps-only | cargo test args] | \
                 test-spin [spin-sqlite | spin-redis] [test filters] | check-invariants | bench>"
            );
            bail!("unknown task {task:?}")
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The end-to-end modules that move money or race, and the operators' access and budget reviews, which run under the
/// real Spin CLI too (libtest filters: a test's name starts with its module).
const SPIN_SUITES: &[&str] = &[
    "utility_payments::",
    "property_fees::",
    "campus_card::",
    "merchant_coupons::",
    "referral_tiers::",
    "customers::",
    "bursts::",
    "money_edges::",
    "mixed_day::",
    "staff::",
    "privacy::",
    "approvals::",
    "partner_events::",
    "webhooks::",
    "insights::reservations_nobody_came_back_for",
];

/// Tests run at once under Spin: each starts its own `spin up` (and Redis), and Spin's SQLite store syncs every write
/// behind one lock, so more than this on two cores only queues.
const SPIN_TEST_THREADS: &str = "3";

/// Runs the e2e `filters` (default [`SPIN_SUITES`]) under `spin up`, on each runtime of `args` (default both);
/// without a Spin binary, says so in one line and succeeds.
fn test_spin(root: &Path, args: &[String]) -> Result<()> {
    let (runtimes, filters) = spin_args(args);
    let filters = if filters.is_empty() { SPIN_SUITES.to_vec() } else { filters };
    let Some(spin) = spin_binary(root) else {
        println!("xtask: no Spin binary (set SCENEFIN_SPIN or put spin on PATH): the real-Spin suites are skipped");
        return Ok(());
    };
    let mut failed = Vec::new();
    for runtime in runtimes {
        println!("xtask: the real-Spin suites on {runtime} ({})", spin.display());
        let started = std::time::Instant::now();
        let mut cmd = Command::new(cargo());
        cmd.current_dir(root)
            .args(["test", "-p", "scenefin-e2e", "--test", "e2e", "--"])
            .args(&filters)
            .args(["--test-threads", SPIN_TEST_THREADS])
            .env("SCENEFIN_E2E_RUNTIME", runtime)
            .env("SCENEFIN_SPIN", &spin);
        let result = run(&mut cmd);
        let took = started.elapsed().as_secs();
        match result {
            Ok(()) => println!("xtask: the real-Spin suites on {runtime} passed in {took} s"),
            Err(e) => {
                println!("xtask: the real-Spin suites on {runtime} failed in {took} s: {e:#}");
                failed.push(runtime);
            }
        }
    }
    if !failed.is_empty() {
        bail!("the real-Spin suites failed on {}", failed.join(" and "));
    }
    Ok(())
}

/// `test-spin`'s arguments: the runtimes (default both) and the test filters.
fn spin_args(args: &[String]) -> (Vec<&str>, Vec<&str>) {
    let (runtimes, filters): (Vec<&str>, Vec<&str>) =
        args.iter().map(String::as_str).partition(|a| matches!(*a, "spin-sqlite" | "spin-redis"));
    (if runtimes.is_empty() { vec!["spin-sqlite", "spin-redis"] } else { runtimes }, filters)
}

/// What `test-spin` with `args` needs beyond Rust: xz when the Spin CLI is still to be unpacked, redis-server when
/// there is a Spin CLI to run on Redis.
fn spin_needs(root: &Path, args: &[String]) -> Vec<&'static deps::Tool> {
    let on_hand = spin_on_hand().is_some();
    let unpack = !on_hand && spin_installer(root).is_some();
    let mut needs = Vec::new();
    if unpack {
        needs.push(&deps::XZ);
    }
    if (on_hand || unpack) && spin_args(args).0.contains(&"spin-redis") {
        needs.push(&deps::REDIS);
    }
    needs
}

/// The Spin CLI on hand: `SCENEFIN_SPIN`, else `spin` on `PATH`.
fn spin_on_hand() -> Option<PathBuf> {
    std::env::var_os("SCENEFIN_SPIN").filter(|p| !p.is_empty()).map(PathBuf::from).or_else(|| on_path("spin"))
}

/// The script that unpacks the real Spin CLI beside the checkout.
fn spin_installer(root: &Path) -> Option<PathBuf> {
    Some(root.join("../shared/tools/spin/install")).filter(|p| p.is_file())
}

/// The Spin CLI: [`spin_on_hand`], else what `../shared/tools/spin/install` unpacks (the same search as the e2e
/// tests' `runtime::spin_binary`).
fn spin_binary(root: &Path) -> Option<PathBuf> {
    if let Some(spin) = spin_on_hand() {
        return Some(spin);
    }
    let install = spin_installer(root)?;
    let out = Command::new(&install).current_dir(root).stderr(std::process::Stdio::inherit()).output().ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == WASM_TARGET) => Ok(()),
        Ok(_) => run(Command::new("rustup").args(["target", "add", WASM_TARGET])),
        Err(_) => {
            eprintln!("xtask: rustup not found; assuming the {WASM_TARGET} target is installed");
            Ok(())
        }
    }
}

/// Wasm packages to build: spin.toml's components plus the host's test fixtures.
fn wasm_packages(root: &Path) -> Result<Vec<String>> {
    let mut packages: Vec<String> = manifest_components(&root.join("spin.toml"))?;
    let fixtures = root.join("tests/fixtures");
    if let Ok(entries) = std::fs::read_dir(&fixtures) {
        for entry in entries.flatten() {
            if entry.path().join("Cargo.toml").exists() {
                packages.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    packages.sort();
    packages.dedup();
    Ok(packages)
}

fn manifest_components(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(doc.get("component").and_then(|c| c.as_table()).map(|t| t.keys().cloned().collect()).unwrap_or_default())
}

fn build(root: &Path) -> Result<()> {
    ensure_target()?;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args(["build", "--target", WASM_TARGET, "--release"]);
    for package in wasm_packages(root)? {
        cmd.args(["-p", &package]);
    }
    run(&mut cmd)
}

/// Required application variables get random development values, generated once and kept in
/// `.spin/dev-variables.toml`, so a fresh clone needs no set-up. Values already in the environment win.
fn dev_variables(root: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(root.join("spin.toml"))?;
    let doc: toml::Table = toml::from_str(&text)?;
    let required: Vec<String> = doc
        .get("variables")
        .and_then(|v| v.as_table())
        .map(|vars| {
            vars.iter()
                .filter(|(_, v)| v.get("required").and_then(|r| r.as_bool()).unwrap_or(false))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let path = root.join(".spin/dev-variables.toml");
    let mut stored: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let mut created = Vec::new();
    for name in required {
        if std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())).is_ok() || stored.contains_key(&name) {
            continue;
        }
        let value = random_secret(&name)?;
        created.push((name.clone(), value.clone()));
        stored.insert(name, value);
    }
    if !created.is_empty() {
        std::fs::create_dir_all(root.join(".spin"))?;
        std::fs::write(&path, toml::to_string(&stored)?)?;
        eprintln!("xtask: generated development secrets (kept in {}, shown once):", path.display());
        for (name, value) in &created {
            eprintln!("  {name} = {value}");
        }
    }
    Ok(stored)
}

fn random_secret(name: &str) -> Result<String> {
    let mut buf = [0u8; 24];
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut buf)?;
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    Ok(if name == "gateway_secret" { format!("whsec_{}", base64(&buf)) } else { hex })
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Serves the app. With `--demo`, also turns on `demo_mode` and seeds the demo data (tests/browser/seed.mjs,
/// through the real APIs) once the host answers, so a person can click through `/app` and `/console` at once.
fn up(root: &Path, host_args: &[String]) -> Result<()> {
    let demo = host_args.iter().any(|a| a == "--demo");
    let host_args: Vec<&String> = host_args.iter().filter(|a| *a != "--demo").collect();
    let vars = dev_variables(root)?;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args(["run", "--quiet", "-p", "scenefin-host", "--", "up", "--from", "spin.toml"]);
    cmd.args(&host_args);
    if demo {
        cmd.env("SPIN_VARIABLE_DEMO_MODE", "true");
    }
    let from_env = std::env::var("SPIN_VARIABLE_OPERATOR_TOKEN").ok();
    let token_source = if from_env.is_some() {
        "from SPIN_VARIABLE_OPERATOR_TOKEN in your environment".to_owned()
    } else {
        format!("kept as operator_token in {}", root.join(".spin/dev-variables.toml").display())
    };
    let operator_token = from_env.or_else(|| vars.get("operator_token").cloned());
    for (name, value) in vars {
        let key = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
        if std::env::var(&key).is_err() {
            cmd.env(key, value);
        }
    }
    let listen = host_args
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| host_args.get(i + 1))
        .map_or_else(|| "127.0.0.1:3000".to_owned(), |s| (*s).clone());
    let console = console_banner(&listen, operator_token.as_deref(), &token_source);
    if !demo {
        println!("{console}");
        return run(&mut cmd);
    }
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while std::net::TcpStream::connect(&listen).is_err() {
        if child.try_wait()?.is_some() || std::time::Instant::now() > deadline {
            bail!("the host did not start listening on {listen}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let token = operator_token.context("no operator token to seed the demo with")?;
    let seeded = Command::new("node")
        .current_dir(root.join("tests/browser"))
        .args(["seed.mjs", &format!("http://{listen}"), &token])
        .status();
    match seeded {
        Ok(s) if s.success() => println!("demo: open http://{listen}/app (personas alice, bob, carol, dave)"),
        other => eprintln!("demo: seeding failed ({other:?}); the app still runs"),
    }
    println!("{console}");
    let status = child.wait()?;
    if !status.success() {
        bail!("the host exited with {status}");
    }
    Ok(())
}

/// Where the operator console is and how to sign in to it, printed by every `up` (not only the first, which also
/// shows the generated secrets): the address, the token (a local development value) and where it is kept.
fn console_banner(listen: &str, token: Option<&str>, source: &str) -> String {
    let token = token.unwrap_or("(none: set SPIN_VARIABLE_OPERATOR_TOKEN)");
    format!(
        "console: open http://{listen}/console and sign in with the operator token\n  operator token: {token}\n  \
         ({source}; the console keeps it in the tab's session storage until you sign out)\n  \
         It is the break-glass token (every role, logged on every use); bank staff sign in as themselves with a \
         staff session token (docs/SECURITY.md)."
    )
}

/// Checks what ARCHITECTURE.md promises and a machine can check:
/// - no crate outside `crates/guest` and `components/*` (and the fixtures) depends on spin-sdk;
/// - only `keys.rs` files build KV keys with `format!`;
/// - no component lists the store (`get_keys`) on a request path.
fn check_invariants(root: &Path) -> Result<()> {
    let mut problems = Vec::new();

    let out = Command::new(cargo())
        .current_dir(root)
        .args(["tree", "-e", "normal", "-i", "spin-sdk", "--prefix", "none", "--workspace"])
        .output()
        .context("running cargo tree")?;
    let tree = String::from_utf8_lossy(&out.stdout);
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let allowed = name == "spin-sdk"
            || name == "scenefin-guest"
            || line.contains("/components/")
            || line.contains("/tests/fixtures/");
        if !allowed && line.contains("(/") {
            problems.push(format!("{name} depends on spin-sdk (only scenefin-guest and components may)"));
        }
    }

    let mut files = Vec::new();
    for dir in ["crates", "components"] {
        collect_rs(&root.join(dir), &mut files);
    }
    let owners = ["cust", "util", "prop", "campus", "cpn", "ref", "ledger", "idem", "ops"];
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let rel = file.strip_prefix(root).unwrap_or(file).display().to_string();
        if !rel.ends_with("keys.rs") {
            for owner in owners {
                if text.contains(&format!("format!(\"{owner}:")) {
                    problems.push(format!("{rel}: builds a `{owner}:` key outside keys.rs"));
                }
            }
        }
        if rel.starts_with("components/") && text.contains("get_keys") {
            problems.push(format!("{rel}: lists the store (get_keys) on a request path"));
        }
    }

    if problems.is_empty() {
        println!("check-invariants: ok ({} source files)", files.len());
        Ok(())
    } else {
        for p in &problems {
            eprintln!("invariant broken: {p}");
        }
        bail!("{} architecture invariant(s) broken", problems.len())
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                collect_rs(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
