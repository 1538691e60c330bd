//! `host push`: push tasks to a queue, whether or not a host is running.
//!
//! Input formats (`--format`):
//! - `lines` (default): one task per `\n`-terminated line, any bytes
//!   (UTF-8 not required). Empty lines are skipped and counted in the
//!   summary, as queue CLIs do (an empty job is almost always a stray blank
//!   line). A `\r` before the `\n` is kept in the payload, never stripped:
//!   the summary warns how many lines end in `\r` (convert CRLF files first,
//!   or use `ndjson`, where JSON ignores it).
//! - `ndjson`: one task record per line (`{"payload": ...}` or
//!   `{"payload_base64": ...}`, optional `unique_key`, `delay_ms`), the shape
//!   the HTTP producer API takes (`taskhost::api::record`).
//! - `raw0`: records separated by NUL bytes (`find -print0`, `xargs -0`
//!   style); every record is one task, empty ones included, and a final NUL
//!   ends the last record rather than starting an empty one.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use taskhost::api::record;
use taskhost::clock;
use taskhost::queue::{NewTask, Pushed};
use taskhost::run::open_queues;

use super::{StoreArgs, persistent};

/// Tasks per backend call: each call is all-or-nothing.
const CHUNK: usize = 1_000;

/// Options of `host push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Queue to push to.
    queue: String,
    /// Payloads; with none, reads tasks from --file, --payload-file or stdin.
    payloads: Vec<String>,
    /// File of tasks in --format (`-` for stdin).
    #[arg(long, short, conflicts_with = "payload_file")]
    file: Option<PathBuf>,
    /// One task whose payload is this file's bytes (any bytes).
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// How --file/stdin holds tasks: lines, ndjson (task records) or raw0 (NUL-separated bytes).
    #[arg(long, value_enum, default_value_t = Format::Lines)]
    format: Format,
    /// Unique key of the (single) payload: a pending task with it makes this a no-op.
    #[arg(long)]
    unique_key: Option<String>,
    /// Lines are KEY<TAB>PAYLOAD: each line's key is its unique key.
    #[arg(long)]
    keyed: bool,
    /// Hold the tasks back this long, e.g. 10s (an NDJSON record's delay_ms wins).
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
}

/// The values of `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One task per line, raw bytes; empty lines skipped, `\r` kept.
    Lines,
    /// One JSON task record per line.
    Ndjson,
    /// NUL-separated raw bytes.
    Raw0,
}

/// What reading the input found besides the tasks.
#[derive(Debug, Default)]
struct Notes {
    empty_lines: usize,
    cr_lines: usize,
}

/// Pushes the payloads and prints how many were created and skipped.
pub async fn push(a: PushArgs) -> Result<()> {
    let cfg = a.store.load()?;
    persistent(&cfg, "push")?;
    let single = a.payload_file.is_some() || a.payloads.len() == 1;
    if a.unique_key.is_some() && !single {
        bail!("--unique-key goes with exactly one payload argument or --payload-file");
    }
    if a.payload_file.is_some() && !a.payloads.is_empty() {
        bail!("--payload-file pushes one task: give no payload arguments with it");
    }
    let mut notes = Notes::default();
    let mut tasks = if let Some(p) = &a.payload_file {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        vec![NewTask::new(bytes)]
    } else if !a.payloads.is_empty() {
        a.payloads
            .iter()
            .map(|p| NewTask::new(p.as_bytes()))
            .collect()
    } else {
        let input = read_input(a.file.as_deref())?;
        parse(&input, a.format, a.keyed, &mut notes).context("nothing was pushed")?
    };
    for t in &mut tasks {
        if t.unique_key.is_none() {
            t.unique_key.clone_from(&a.unique_key);
        }
        if t.delay.is_none() {
            t.delay = a.delay;
        }
    }
    let queues = open_queues(&cfg, clock::system())?;
    let queue = queues.queue(&a.queue)?;
    let (mut created, mut dups) = (0usize, 0usize);
    let mut failed = None;
    for (i, chunk) in tasks.chunks(CHUNK).enumerate() {
        match queue.push_batch(chunk.to_vec()).await {
            Ok(out) => {
                for p in out {
                    match p {
                        Pushed::Created(_) => created += 1,
                        Pushed::Duplicate(_) => dups += 1,
                    }
                }
            }
            Err(e) => {
                failed = Some((i * CHUNK, chunk.len(), e));
                break;
            }
        }
    }
    queues.close().await;
    if let Some((first, len, e)) = failed {
        bail!(
            "pushing to queue {:?}: records {}-{} failed, none of them committed: {e}; \
             {} tasks were committed before them (records 1-{first}: {created} created, {dups} duplicates)",
            a.queue,
            first + 1,
            first + len,
            created + dups,
        );
    }
    outln!(
        "pushed {created} tasks to {:?}; {dups} duplicates of pending tasks skipped",
        a.queue
    );
    if notes.empty_lines > 0 {
        super::log::stderr(format_args!(
            "note: skipped {} empty lines (use --format raw0 or ndjson to push empty payloads)",
            notes.empty_lines
        ));
    }
    if notes.cr_lines > 0 {
        super::log::stderr(format_args!(
            "warning: {} lines end in \\r (CRLF input); the \\r is part of their payloads",
            notes.cr_lines
        ));
    }
    Ok(())
}

fn read_input(file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).with_context(|| format!("reading tasks from {}", p.display()))
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("reading tasks from stdin")?;
            Ok(buf)
        }
    }
}

/// Splits the input into tasks; errors name the line or record.
fn parse(input: &[u8], format: Format, keyed: bool, notes: &mut Notes) -> Result<Vec<NewTask>> {
    match format {
        Format::Ndjson => {
            if keyed {
                bail!("--keyed goes with --format lines or raw0; NDJSON records carry unique_key");
            }
            Ok(record::parse_ndjson(input)?)
        }
        Format::Lines | Format::Raw0 => {
            let (sep, unit) = if format == Format::Lines {
                (b'\n', "line")
            } else {
                (0u8, "record")
            };
            let mut tasks = Vec::new();
            if input.is_empty() {
                return Ok(tasks);
            }
            // A final separator ends the last record; it does not open another.
            let body = input.strip_suffix(&[sep]).unwrap_or(input);
            for (n, rec) in body.split(|&b| b == sep).enumerate() {
                if format == Format::Lines {
                    if rec.is_empty() {
                        notes.empty_lines += 1;
                        continue;
                    }
                    if rec.ends_with(b"\r") {
                        notes.cr_lines += 1;
                    }
                }
                let (key, payload) = if keyed {
                    let Some(tab) = rec.iter().position(|&b| b == b'\t') else {
                        bail!("{unit} {}: --keyed expects KEY<TAB>PAYLOAD", n + 1);
                    };
                    let key = std::str::from_utf8(&rec[..tab]).map_err(|_| {
                        anyhow::anyhow!("{unit} {}: the unique key is not UTF-8", n + 1)
                    })?;
                    (Some(key.to_owned()), &rec[tab + 1..])
                } else {
                    (None, rec)
                };
                tasks.push(NewTask {
                    payload: payload.to_vec(),
                    unique_key: key,
                    delay: None,
                });
            }
            Ok(tasks)
        }
    }
}
