//! The embedded queue from the command line, black box: `host push` of N
//! tasks into a fresh disk store, then `host run --exit-when-drained` with
//! the no-op testkit plugin; each timed from outside, as a user sees it.
//!
//! `cargo bench -p taskhost --bench cli_drain -- [--tasks N] [--runs K]`

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

mod common;

fn main() -> ExitCode {
    common::main(cli_drain)
}

/// Options of the command-line drain bench.
#[derive(Debug, Args)]
struct CliDrainArgs {
    /// Tasks pushed, then drained.
    #[arg(long, default_value_t = 300_000)]
    tasks: usize,
    /// Payload bytes per task.
    #[arg(long, default_value_t = 100)]
    bytes: usize,
    /// Push-then-drain rounds, each on a fresh store.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The no-op plugin (testkit, built by `cargo test`: target/wasm).
    #[arg(long, default_value = "target/wasm/wasm32-wasip2/plugin/testkit.wasm")]
    plugin: PathBuf,
    /// Extra options for `host run` (e.g. `--max-workers 2`), space-separated.
    #[arg(long, default_value = "")]
    run_args: String,
}

/// Runs `cmd`, failing with its stderr; answers the seconds it took.
fn timed(what: &str, cmd: &mut Command) -> Result<f64> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(secs)
}

async fn cli_drain(a: CliDrainArgs) -> Result<()> {
    let host = env!("CARGO_BIN_EXE_host");
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let file = tmp.path().join("payloads.txt");
    let mut text = String::with_capacity(a.tasks * (a.bytes + 1));
    for i in 0..a.tasks {
        let head = format!("task-{i}-");
        text.push_str(&head);
        text.push_str(&"x".repeat(a.bytes.saturating_sub(head.len())));
        text.push('\n');
    }
    std::fs::write(&file, text).context("writing the payload file")?;
    println!(
        "taskhost bench cli_drain: {} tasks of {} bytes, disk store (sync = full), {}",
        a.tasks,
        a.bytes,
        a.plugin.display()
    );
    println!(
        "{:>4} {:>14} {:>14}",
        "run", "push tasks/s", "drain tasks/s"
    );
    for run in 1..=a.runs {
        let data = tmp.path().join(format!("data-{run}"));
        let push = timed(
            "host push",
            Command::new(host)
                .args(["--log", "error", "push", "default", "--file"])
                .arg(&file)
                .arg("--data-dir")
                .arg(&data),
        )?;
        let drain = timed(
            "host run",
            Command::new(host)
                .args(["--log", "error", "run", "--plugin"])
                .arg(&a.plugin)
                .args(["--set", "mode=noop", "--exit-when-drained", "--data-dir"])
                .arg(&data)
                .args(a.run_args.split_whitespace()),
        )?;
        println!(
            "{run:>4} {:>14.0} {:>14.0}",
            a.tasks as f64 / push,
            a.tasks as f64 / drain
        );
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    Ok(())
}
