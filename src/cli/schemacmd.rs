//! `zolog schema`: write or check the generated JSON Schemas.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::out;
use crate::error::{Error, Result};
use crate::schema;

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Directory to write the schemas into (e.g. `schemas`). Without it, print the envelope schema.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Do not write: exit non-zero if the files in --out differ from what would be written.
    #[arg(long, requires = "out")]
    pub check: bool,
}

pub fn schema(a: SchemaArgs) -> Result<ExitCode> {
    let files = schema::generate();
    let mut stdout = io::stdout().lock();
    let Some(dir) = a.out else {
        out(&mut stdout, format_args!("{}", files[0].1))?;
        return Ok(ExitCode::SUCCESS);
    };
    let mut stale = Vec::new();
    for (rel, contents) in &files {
        let path = dir.join(rel);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(contents.as_str()) {
            continue;
        }
        if a.check {
            stale.push(path.display().to_string());
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create directory", parent, e))?;
        }
        std::fs::write(&path, contents).map_err(|e| Error::io("write", &path, e))?;
        out(&mut stdout, format_args!("wrote {}\n", path.display()))?;
    }
    if !stale.is_empty() {
        out(
            &mut stdout,
            format_args!(
                "out of date: {}\nregenerate with: {}\n",
                stale.join(", "),
                schema::REGENERATE
            ),
        )?;
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
