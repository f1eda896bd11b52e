//! Every command and subcommand describes every one of its flags in `--help`, and every command
//! shows examples.

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
        if !help.contains("\nExamples:\n  strata ") {
            missing.push(format!("{c}: no examples"));
        }
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

#[test]
fn completions_and_man_pages_cover_every_command() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    let commands = commands(&top);
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ok(&["completions", shell]);
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
    }
    let bash = env.path("strata.bash");
    std::fs::write(&bash, env.ok(&["completions", "bash"])).unwrap();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    let page = env.ok(&["man"]);
    assert!(page.contains(".TH strata 1"), "{page}");
    let dir = env.path("man1");
    env.ok(&["man", "--dir", dir.to_str().unwrap()]);
    for c in &commands {
        assert!(
            dir.join(format!("strata-{c}.1")).exists(),
            "no page for {c}"
        );
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for i in 0..3000 {
        write(&src.join(format!("d{}/f{i}", i % 30)), b"x");
    }
    env.backup(&[&src]);
    for cmd in [
        "completions bash",
        "man",
        "ls -r latest",
        "show latest",
        "find 'f*'",
    ] {
        let line = format!("\"$0\" {cmd} | head -c 10 >/dev/null; exit ${{PIPESTATUS[0]}}");
        let r = std::process::Command::new("bash")
            .arg("-c")
            .arg(&line)
            .arg(bin())
            .env("STRATA_REPO", &env.repo)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(0), "{cmd}: {err}");
        assert!(err.is_empty(), "{cmd}: {err}");
    }
}
