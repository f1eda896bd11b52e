//! `strata key`: the passphrases of an encrypted repository.

use super::output::print_json;
use super::{RepoPath, open};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use strata::crypto::KeyFile;
use strata::repo::key_files;

#[derive(Args)]
#[command(after_help = "Examples:\n  strata key list\n  strata key add\n  strata key passwd")]
pub struct KeyArgs {
    #[command(subcommand)]
    what: KeyCommand,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// List the key files (one per passphrase)
    List {
        /// Print the result as JSON on standard output (for scripts)
        #[arg(long)]
        json: bool,
    },
    /// Add a passphrase (the new one from STRATA_NEW_PASSWORD, STRATA_NEW_PASSWORD_FILE or a
    /// prompt)
    Add,
    /// Remove a passphrase's key file (not the last one, nor the one in use)
    Remove {
        /// Key id, as `key list` shows it
        id: String,
    },
    /// Change the passphrase in use: add a key file for the new one, then remove the old one
    Passwd,
}

/// The new passphrase for `key add` and `key passwd`.
fn new_passphrase() -> Result<String> {
    if let Ok(p) = std::env::var("STRATA_NEW_PASSWORD") {
        return Ok(p);
    }
    if let Some(file) = std::env::var_os("STRATA_NEW_PASSWORD_FILE") {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", std::path::Path::new(&file).display()))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_string());
    }
    prompt_twice("new passphrase: ")
}

/// Asks on the terminal twice and insists on the same answer.
pub fn prompt_twice(prompt: &str) -> Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            "no passphrase given: set STRATA_NEW_PASSWORD or STRATA_NEW_PASSWORD_FILE, or run on \
             a terminal"
        );
    }
    let first = rpassword::prompt_password(prompt)?;
    let again = rpassword::prompt_password("again: ")?;
    if first != again {
        bail!("the passphrases do not match");
    }
    Ok(first)
}

pub fn key(rp: &RepoPath, args: KeyArgs) -> Result<ExitCode> {
    let writes = !matches!(args.what, KeyCommand::List { .. });
    let repo = open(rp, writes, "key")?;
    let Some(keys) = repo.keys() else {
        bail!(
            "{} is not encrypted; keys exist only in repositories made with `init --encrypt`",
            rp.path.display()
        );
    };
    let current = repo.key_id().unwrap_or_default().to_string();
    let add = |pass: &str| -> Result<KeyFile> {
        let key = KeyFile::create(
            keys.master(),
            pass,
            &repo.config.id,
            super::environment::kdf_memory_kib(),
        )?;
        repo.backend.put(&key.object_name(), &key.encode()?)?;
        Ok(key)
    };
    match args.what {
        KeyCommand::List { json } => {
            let files = key_files(repo.backend.as_ref())?;
            if json {
                #[derive(serde::Serialize)]
                struct K<'a> {
                    id: &'a str,
                    created: &'a str,
                    host: &'a str,
                    current: bool,
                }
                print_json(
                    &files
                        .iter()
                        .map(|k| K {
                            id: &k.id,
                            created: &k.created,
                            host: &k.host,
                            current: k.id == current,
                        })
                        .collect::<Vec<_>>(),
                )?;
            } else {
                for k in &files {
                    println!(
                        "{} {}  created {} on {}",
                        if k.id == current { "*" } else { " " },
                        k.id,
                        k.created,
                        k.host
                    );
                }
            }
        }
        KeyCommand::Add => {
            let key = add(&new_passphrase()?)?;
            println!("added key {}", key.id);
        }
        KeyCommand::Remove { id } => {
            let files = key_files(repo.backend.as_ref())?;
            let Some(k) = files.iter().find(|k| k.id == id) else {
                bail!("no key {id} in this repository (see `strata key list`)");
            };
            if files.len() == 1 {
                bail!("key {id} is the only one; removing it would lock everyone out");
            }
            if k.id == current {
                bail!(
                    "key {id} is the one in use; open the repository with another passphrase to \
                     remove it, or use `strata key passwd`"
                );
            }
            repo.backend.delete(&k.object_name())?;
            println!("removed key {id}");
        }
        KeyCommand::Passwd => {
            let key = add(&new_passphrase()?)?;
            // The new key file is durable before the old one goes.
            repo.backend
                .delete(&format!("{}/{current}.key", strata::crypto::KEYS_DIR))?;
            println!("passphrase changed: key {} replaces {current}", key.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
