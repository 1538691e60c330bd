//! `host componentize`: a WASI preview1 core module (C, Go, ...) made into a
//! plugin component, with no external tool.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use taskhost::plugin::componentize::componentize as encode;

/// Options of `host componentize`.
#[derive(Debug, Args)]
pub struct ComponentizeArgs {
    /// The core module (built as a reactor: clang -mexec-model=reactor, go build -buildmode=c-shared).
    core: PathBuf,
    /// Where to write the component.
    #[arg(long, short)]
    out: PathBuf,
    /// World to build for when the module carries no bindings metadata:
    /// handler-plugin (default), bulk-handler-plugin or source-plugin.
    #[arg(long)]
    world: Option<String>,
}

/// Reads, componentizes and writes; the error names the input file.
pub fn componentize(a: ComponentizeArgs) -> Result<()> {
    let module = std::fs::read(&a.core).with_context(|| format!("reading {}", a.core.display()))?;
    let done = encode(&module, a.world.as_deref())
        .with_context(|| format!("cannot componentize {}", a.core.display()))?;
    // Written beside and renamed, so a host watching `--out` never loads half a file.
    let tmp = a.out.with_extension("wasm.tmp");
    std::fs::write(&tmp, &done.component).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
    outln!(
        "wrote {} ({} bytes, world {}{})",
        a.out.display(),
        done.component.len(),
        done.world,
        if done.embedded_wit {
            ", plugin WIT embedded"
        } else {
            ""
        }
    );
    Ok(())
}
