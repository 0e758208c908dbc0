//! `warden audit verify`: check an audit log's hash chain.

use std::path::PathBuf;
use std::process::ExitCode;

/// `warden audit` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Report the first broken, edited or missing record, or OK.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
    },
}

/// Runs a `warden audit` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Verify { file } = cmd;
    let text =
        std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    match warden_core::audit::verify(&text) {
        Ok(v) => {
            println!("OK: {} records in {} chain(s)", v.records, v.chains);
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            eprintln!("{}: {broken}", file.display());
            Ok(ExitCode::from(1))
        }
    }
}
