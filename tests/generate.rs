//! `dispatchd generate`: the manual pages and shell completions come from the
//! command line's definition and name every command and `ctl` verb.

use std::process::Command;

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

fn run(args: &[&str]) -> String {
    let out = Command::new(DISPATCHD).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "dispatchd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `--help` lists under "Commands:", as clap prints them (not
/// a copy kept here: one added later is checked too).
fn commands(args: &[&str]) -> Vec<String> {
    let help = run(&[args, &["--help"]].concat());
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "no commands in:\n{help}");
    names
}

#[test]
fn the_command_lists_are_what_the_tests_below_expect() {
    let top = commands(&[]);
    for name in ["run", "check-config", "generate", "ctl"] {
        assert!(top.iter().any(|c| c == name), "{name} in {top:?}");
    }
    let verbs = commands(&["ctl"]);
    for name in ["stats", "conns", "backends", "drain", "undrain"] {
        assert!(verbs.iter().any(|c| c == name), "{name} in {verbs:?}");
    }
}

#[test]
fn the_manual_page_names_every_command() {
    let page = run(&["generate", "man"]);
    assert!(page.contains(".TH dispatchd 1"), "{page}");
    for name in commands(&[]) {
        assert!(
            page.contains(&format!("dispatchd\\-{}(1)", name.replace('-', "\\-"))),
            "{name}: {page}"
        );
    }
}

#[test]
fn a_manual_page_per_command_and_verb_is_written_to_a_directory() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("generate_man");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = run(&["generate", "man", dir.to_str().unwrap()]);
    assert!(out.contains(dir.to_str().unwrap()), "{out}");
    let mut pages = vec!["dispatchd.1".to_owned()];
    pages.extend(commands(&[]).iter().map(|c| format!("dispatchd-{c}.1")));
    pages.extend(
        commands(&["ctl"])
            .iter()
            .map(|v| format!("dispatchd-ctl-{v}.1")),
    );
    for page in pages {
        let text =
            std::fs::read_to_string(dir.join(&page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page}");
    }
    let run_page = std::fs::read_to_string(dir.join("dispatchd-run.1")).unwrap();
    assert!(run_page.contains("\\-\\-front"), "options documented");

    let missing = Command::new(DISPATCHD)
        .args(["generate", "man", "/nonexistent/dir"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8(missing.stderr).unwrap();
    assert!(
        err.starts_with("dispatchd: writing manual pages to /nonexistent/dir: ")
            && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn completions_for_every_shell_name_every_command_and_verb() {
    let mut names = commands(&[]);
    names.extend(commands(&["ctl"]));
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = run(&["generate", "completions", shell]);
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell}: {name}");
        }
        // fish writes long options without their dashes (`-l front`).
        assert!(
            script.contains("--front") || script.contains("-l front"),
            "{shell}: run's flags"
        );
    }
    let bad = Command::new(DISPATCHD)
        .args(["generate", "completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
