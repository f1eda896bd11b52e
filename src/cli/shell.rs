//! `strata completions SHELL` and `strata man`: the command line described for shells and for
//! man(1), generated from the same definitions as `--help`.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata completions bash > /etc/bash_completion.d/strata\n  \
                        strata completions zsh > \"${fpath[1]}/_strata\"\n  \
                        strata completions fish > ~/.config/fish/completions/strata.fish"
)]
pub struct CompletionsArgs {
    /// The shell to complete commands for
    shell: clap_complete::Shell,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  strata man | man -l -\n  \
                        strata man --dir /usr/local/share/man/man1")]
pub struct ManArgs {
    /// Write strata.1 and one page per command (strata-backup.1...) into this directory instead
    /// of strata.1 to standard output
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = super::Cli::command();
    // Made whole first: a write error (a closed pipe) is then an error, not a panic inside.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "strata", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script).and_then(|()| out.flush())?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs) -> Result<ExitCode> {
    let cmd = super::Cli::command();
    match args.dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            println!("man pages written into {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
