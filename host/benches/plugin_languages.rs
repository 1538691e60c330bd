//! The `archive` plugin in each language: component size, load times, time
//! per batch, and tasks/s on the memory backend.
//!
//! `cargo bench -p taskhost --bench plugin_languages -- [OPTIONS]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use taskhost::clock::{self, Clock};
use taskhost::plugin::{DirGrant, Limits, Plugin, PluginSpec, Runtime};
use taskhost::queue::QueueStore;
use taskhost::queue::memory::{MemoryOptions, MemoryStore};

mod common;
use common::{PoolShape, synthetic_batch, tempdir, throughput};

fn main() -> ExitCode {
    common::main(bench_langs)
}

/// Options of the plugin-languages bench.
#[derive(Debug, Args)]
struct BenchLangsArgs {
    /// Rust archiver (cargo build --profile plugin --target wasm32-wasip2 --target-dir target/wasm -p archive).
    #[arg(long, default_value = "target/wasm/wasm32-wasip2/plugin/archive.wasm")]
    rust: PathBuf,
    /// Python archiver (built by `cargo test -p taskhost --test all languages::`).
    #[arg(long, default_value = "target/langs/archive-py.wasm")]
    python: PathBuf,
    /// JavaScript archiver (built by `cargo test -p taskhost --test all languages::`).
    #[arg(long, default_value = "target/langs/archive-js.wasm")]
    js: PathBuf,
    /// C archiver (built by `cargo test -p taskhost --test all languages::`).
    #[arg(long, default_value = "target/langs/archive-c.wasm")]
    c: PathBuf,
    /// Go archiver (built by `cargo test -p taskhost --test all languages::`).
    #[arg(long, default_value = "target/langs/archive-go.wasm")]
    go: PathBuf,
    /// Tasks per throughput run.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Tasks per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Workers in the pool.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Calls timed for the per-batch figure (the median is printed).
    #[arg(long, default_value_t = 50)]
    calls: usize,
    /// Where the archive files go [default: a temporary directory]; a tmpfs
    /// such as /dev/shm takes the disk's fsync out of the figures.
    #[arg(long)]
    archive_dir: Option<PathBuf>,
}

fn spec(path: &Path, archive: &Path) -> PluginSpec {
    PluginSpec {
        name: path.display().to_string(),
        path: path.to_owned(),
        config: [("dir".to_owned(), "/archive".to_owned())].into(),
        dir: Some(DirGrant {
            host: archive.to_owned(),
            guest: "/archive".into(),
        }),
        limits: Limits::default(),
        allowed_hosts: Vec::new(),
        enqueue_to: None,
    }
}

/// Loads `path` in a fresh runtime using the compiled-code cache in
/// `cache`; answers the plugin and the load time.
fn timed_load(
    path: &Path,
    archive: &Path,
    cache: &Path,
    store: Arc<dyn QueueStore>,
) -> Result<(Runtime, Plugin, Duration)> {
    let runtime = Runtime::with_options(taskhost::plugin::RuntimeOptions {
        cache_dir: Some(cache.to_owned()),
        ..Default::default()
    })?;
    let t = Instant::now();
    let plugin = runtime
        .load(spec(path, archive), store)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((runtime, plugin, t.elapsed()))
}

/// Prints one row per language.
async fn bench_langs(a: BenchLangsArgs) -> Result<()> {
    let clock: Arc<dyn Clock> = clock::system();
    let tmp = match &a.archive_dir {
        Some(d) => d.join(format!("taskhost-bench-langs-{}", std::process::id())),
        None => tempdir()?,
    };
    println!(
        "taskhost bench plugin_languages: archive plugin, batch {}, {} workers, {} tasks of 100 bytes, memory backend, archive files in {}",
        a.batch_size,
        a.workers,
        a.tasks,
        tmp.display()
    );
    println!(
        "{:<8} {:>10} {:>12} {:>12} {:>14} {:>12}",
        "language", "size", "first load", "cached load", "call/batch", "tasks/s"
    );
    for (lang, path) in [
        ("rust", &a.rust),
        ("python", &a.python),
        ("js", &a.js),
        ("c", &a.c),
        ("go", &a.go),
    ] {
        let size = std::fs::metadata(path)
            .with_context(|| format!("{lang} component {}", path.display()))?
            .len();
        let dir = tmp.join(lang);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let store: Arc<dyn QueueStore> = Arc::new(MemoryStore::new(
            MemoryOptions {
                capacity: a.tasks.max(1),
                ..MemoryOptions::default()
            },
            clock.clone(),
        ));
        // A cache of its own, empty at first: the first load compiles, the
        // second (a fresh runtime, as after a restart) reads compiled code.
        let cache = tmp.join(format!("{lang}-cache"));
        let _ = std::fs::remove_dir_all(&cache);
        let (first_rt, first, first_load) = timed_load(path, &dir, &cache, store.clone())?;
        drop(first);
        first_rt.shutdown();
        let (runtime, plugin, second_load) = timed_load(path, &dir, &cache, store.clone())?;

        let batch = synthetic_batch(a.batch_size);
        let mut times = Vec::with_capacity(a.calls);
        for _ in 0..a.calls.max(1) {
            let t = Instant::now();
            plugin.call(&batch).await.map_err(anyhow::Error::msg)?;
            times.push(t.elapsed());
        }
        times.sort();
        let call = times[times.len() / 2];

        let shape = PoolShape {
            batch_size: a.batch_size,
            workers: a.workers,
        };
        let (e2e, _) = throughput(shape, store, Arc::new(plugin), a.tasks, clock.clone()).await?;
        runtime.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "{lang:<8} {:>10} {:>12} {:>12} {:>14} {:>12.0}",
            if size < 1_000_000 {
                format!("{:.0} KB", size as f64 / 1e3)
            } else {
                format!("{:.1} MB", size as f64 / 1e6)
            },
            format!("{first_load:.2?}"),
            format!("{second_load:.2?}"),
            format!("{call:.2?}"),
            e2e
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
