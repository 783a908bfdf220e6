//! `scenefin-host up`: serve a Spin app from spin.toml.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use scenefin_host::{CasMode, FaultPlan, HostConfig, KvKind};

#[derive(Parser)]
#[command(name = "scenefin-host", version, about = "Runs a Spin 4 app (spin.toml) on wasmtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the application's HTTP triggers.
    Up(Up),
}

#[derive(Clone, Copy, ValueEnum)]
enum KvArg {
    Sqlite,
    Memory,
}

#[derive(Parser)]
struct Up {
    /// The application manifest.
    #[arg(long = "from", short = 'f', default_value = "spin.toml")]
    manifest: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Serve only this component (repeatable), like `spin up --component-id`.
    #[arg(long = "component", alias = "component-id")]
    components: Vec<String>,
    /// Backend of the `default` key-value store (a runtime config file's `[key_value_store.default]` wins).
    #[arg(long, value_enum, default_value = "sqlite")]
    kv: KvArg,
    /// A Spin runtime config file: `[key_value_store.default]` with `type = "redis"` and `url`, or `type = "spin"`
    /// and an optional `path`.
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Directory for the SQLite store and the compiled-module cache (default: `.spin` beside the manifest).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Per-request time limit; a component that has not responded by then gets the instance killed and a 500.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Memory limit per instance, in MiB.
    #[arg(long, default_value_t = 128)]
    memory_limit_mib: usize,
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Requests one instance serves before it is dropped (Spin 4: 128).
    #[arg(long, default_value_t = 128)]
    max_instance_reuse_count: usize,
    /// Requests one instance serves at the same time (Spin 4: 16).
    #[arg(long, default_value_t = 16)]
    max_instance_concurrent_reuse_count: usize,
    /// How long an idle instance is kept (Spin 4: 1s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    idle_instance_timeout: Duration,
    /// Do not use the on-disk compiled-module cache.
    #[arg(long)]
    no_cache: bool,
    /// Do not print an access-log line per request.
    #[arg(long)]
    quiet: bool,
    /// Experiments only: do not mirror where Spin 4's key-value stores are weak (an increment on a non-counter is
    /// then a store error, not a trap; on Redis, swap reports its true outcome and get-many uses MGET).
    #[arg(long)]
    no_spin_quirks: bool,
    /// Fault injection (tests only): the Nth key-value operation of every request fails, writing nothing.
    #[arg(long, value_name = "N")]
    fault_fail_op: Option<u64>,
    /// Fault injection (tests only): the instance traps right after the Nth write of every request.
    #[arg(long, value_name = "N")]
    fault_trap_after_write: Option<u64>,
    /// Fault injection (tests only): every key-value operation waits this long first.
    #[arg(long, value_parser = parse_duration)]
    fault_delay: Option<Duration>,
}

/// Parses `250ms`, `2s`, `1m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse()?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("unknown duration unit in {s:?} (use ms, s or m)"),
    })
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scenefin-host: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(up()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scenefin-host: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn up() -> Result<()> {
    let Command::Up(up) = Cli::parse().command;
    if up.max_instance_reuse_count == 0 || up.max_instance_concurrent_reuse_count == 0 {
        bail!("instance reuse counts must be at least 1");
    }
    let mut config = HostConfig::new(&up.manifest);
    config.listen = up.listen;
    config.components = up.components;
    config.kv = match up.kv {
        KvArg::Sqlite => KvKind::Sqlite,
        KvArg::Memory => KvKind::Memory(CasMode::SpinUpsert),
    };
    if let Some(file) = &up.runtime_config_file
        && let Some(store) = scenefin_host::runtime_config::load(file)?
    {
        config.kv = store.into();
    }
    if up.fault_fail_op.is_some() || up.fault_trap_after_write.is_some() || up.fault_delay.is_some() {
        config.faults = Some(FaultPlan {
            fail_op: up.fault_fail_op,
            trap_after_write: up.fault_trap_after_write,
            delay: up.fault_delay.unwrap_or_default(),
        });
    }
    if let Some(dir) = up.state_dir {
        config.state_dir = dir;
    }
    config.limits.request_timeout = up.request_timeout;
    config.limits.memory_bytes = up.memory_limit_mib << 20;
    config.limits.max_instance_reuse_count = up.max_instance_reuse_count;
    config.limits.max_instance_concurrent_reuse_count = up.max_instance_concurrent_reuse_count;
    config.limits.idle_instance_timeout = up.idle_instance_timeout;
    config.max_body_bytes = up.max_body_bytes;
    config.module_cache = !up.no_cache;
    config.access_log = !up.quiet;
    config.spin_quirks = !up.no_spin_quirks;

    let host = scenefin_host::start(config).await?;
    eprintln!(
        "scenefin-host: serving {} component(s) on http://{} (store: {}, ready in {} ms)",
        host.components.len(),
        host.addr,
        host.kv.describe(),
        host.startup.as_millis()
    );
    for id in &host.components {
        eprintln!("  {id}");
    }
    if !host.kv.spin_quirks() {
        eprintln!(
            "scenefin-host: SPIN QUIRKS OFF: key-value calls succeed here that fail or crash on Spin 4; for experiments only"
        );
    }
    if let Some(faults) = &host.faults {
        eprintln!("scenefin-host: FAULT INJECTION ON ({}): for tests only", faults.plan().describe());
    }
    let stop = host.stop_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("scenefin-host: shutting down");
        let _ = stop.send(true);
    });
    host.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
