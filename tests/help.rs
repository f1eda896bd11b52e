//! Every command and subcommand describes every one of its flags in `--help`.

mod common;
use common::*;

/// The names listed under "Commands:" in a help text.
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Option lines with no description: `  -x, --flag <VALUE>` and nothing after.
fn undescribed(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| {
            let t = l.trim();
            (t.starts_with("--") || t.starts_with('-')) && l.starts_with("  ") && !t.contains("  ")
        })
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn every_flag_of_every_command_is_described() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    let mut checked = 0;
    let mut missing = Vec::new();
    for c in commands(&top) {
        let help = env.ok(&[&c, "--help"]);
        let mut helps = vec![(c.clone(), help.clone())];
        for sub in commands(&help) {
            helps.push((format!("{c} {sub}"), env.ok(&[&c, &sub, "--help"])));
        }
        for (name, h) in helps {
            checked += 1;
            for flag in undescribed(&h) {
                missing.push(format!("{name}: {flag}"));
            }
        }
    }
    assert!(checked >= 20, "only {checked} commands found in:\n{top}");
    assert!(
        missing.is_empty(),
        "flags without a description:\n{}",
        missing.join("\n")
    );
}
