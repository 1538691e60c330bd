//! `host wit`: the plugin interface (WIT) this host serves, for any
//! bindings generator, without a checkout of this repository.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

pub use taskhost::plugin::componentize::WIT;

/// Options of `host wit`.
#[derive(Debug, Args)]
pub struct WitArgs {
    /// Write `plugin.wit` into this directory (created if missing) instead
    /// of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Prints the WIT, or writes it into `--out`.
pub fn wit(a: WitArgs) -> Result<()> {
    let Some(dir) = a.out else {
        outln!("{}", WIT.trim_end());
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("plugin.wit");
    std::fs::write(&path, WIT).with_context(|| format!("writing {}", path.display()))?;
    outln!("wrote {}", path.display());
    Ok(())
}
