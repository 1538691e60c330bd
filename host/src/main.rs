//! The `host` command: run plugins over queues, push tasks, show status.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

use cli::{
    bindgen, check, componentize, hosts, init, new_plugin, ops, peek, push, reload, run, serve,
    status, wit,
};

/// A task-processing host whose handlers are WebAssembly components.
#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    about,
    long_about = None,
    after_help = "Plugins are hot-swapped: `host run` watches each plugin file and, once a change has \
settled, compiles the new file beside the running one; if it is a valid component of the \
handler world, new batches go to it while running batches finish on the old version, \
otherwise the old version keeps serving and the error is logged. Source plugins ([[sources]]) \
are swapped the same way. `host reload` (or SIGHUP) asks for the same at once."
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `taskhost=debug`.
    #[arg(long, global = true, env = "TASKHOST_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve queues with plugins until SIGINT/SIGTERM (or until drained).
    Run(run::RunArgs),
    /// Push tasks to a queue (works whether or not a host is running).
    Push(push::PushArgs),
    /// Show pending, delayed, leased and dead-lettered counts, and running hosts.
    Status(status::StatusArgs),
    /// Ask every running host to reload its plugins (SIGHUP on disk, a message over Redis).
    Reload(reload::ReloadArgs),
    /// List the hosts serving the backend's queues (every machine's, over Redis).
    Hosts(hosts::HostsArgs),
    /// Serve the HTTP API and /metrics over the queues, without plugins.
    Serve(serve::ServeArgs),
    /// Write a ready-to-build plugin skeleton (rust, python, js, c or go).
    NewPlugin(new_plugin::NewPluginArgs),
    /// Check that the queue store is sound (SQLite's integrity check on disk).
    Check(check::CheckArgs),
    /// Create the disk queue store; `--force` starts a new one in place of a lost one.
    Init(init::InitArgs),
    /// Print (or write with --out) the plugin interface, for bindings generators.
    Wit(wit::WitArgs),
    /// Write C or Go bindings of a plugin world (no generator to install).
    Bindgen(bindgen::BindgenArgs),
    /// Make a plugin component of a WASI preview1 core module (C, Go, ...).
    Componentize(componentize::ComponentizeArgs),
    /// List a queue's tasks in one state without taking them.
    Peek(peek::PeekArgs),
    /// Retry or purge dead letters.
    Dead(ops::DeadArgs),
    /// Stop every host on the backend leasing from a queue (durable).
    Pause(ops::QueueArgs),
    /// Let hosts lease from a paused queue again.
    Resume(ops::QueueArgs),
    /// Delete a pending or delayed task (or `--run-now` a delayed one).
    Cancel(ops::CancelArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::log::init(&cli.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            cli::log::stderr(format_args!("error: cannot start the async runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            cli::log::stderr(format_args!("error: {}", cli::log::render(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run(a) => run::run(a).await,
        Cmd::Push(a) => push::push(a).await,
        Cmd::Status(a) => status::status(a).await,
        Cmd::Reload(a) => reload::reload(a).await,
        Cmd::Hosts(a) => hosts::hosts(a).await,
        Cmd::Serve(a) => serve::serve(a).await,
        Cmd::NewPlugin(a) => new_plugin::new_plugin(a),
        Cmd::Check(a) => check::check(a).await,
        Cmd::Init(a) => init::init(a).await,
        Cmd::Wit(a) => wit::wit(a),
        Cmd::Bindgen(a) => bindgen::bindgen(a),
        Cmd::Componentize(a) => componentize::componentize(a),
        Cmd::Peek(a) => peek::peek(a).await,
        Cmd::Dead(a) => ops::dead(a).await,
        Cmd::Pause(a) => ops::pause(a, true).await,
        Cmd::Resume(a) => ops::pause(a, false).await,
        Cmd::Cancel(a) => ops::cancel(a).await,
    }
}
