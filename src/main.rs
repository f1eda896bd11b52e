//! The `strata` command line: a thin front over the library (see `src/cli/`).

use std::process::ExitCode;

fn main() -> ExitCode {
    strata_cli::main()
}

#[path = "cli/mod.rs"]
mod strata_cli;
