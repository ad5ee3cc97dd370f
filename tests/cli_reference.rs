//! docs/cli.md is the CLI reference: the `--help` of `fnbuild` and of every subcommand clap
//! knows that is not hidden, at any depth, so a new command is in it as soon as it exists.
//! This test fails when the file is stale. Regenerate it with
//! `FNBUILD_UPDATE_DOCS=1 cargo test --test cli_reference`.

mod common;

/// The path of every command that is not hidden, from `fnbuild` itself (the empty path)
/// down, in the order clap lists them.
fn command_paths(command: &clap::Command, path: Vec<String>, paths: &mut Vec<Vec<String>>) {
    paths.push(path.clone());
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let mut sub_path = path.clone();
        sub_path.push(sub.get_name().to_string());
        command_paths(sub, sub_path, paths);
    }
}

fn reference() -> String {
    let mut doc = String::from(
        "# fnbuild command-line reference\n\n\
         Generated from `fnbuild --help` by `FNBUILD_UPDATE_DOCS=1 cargo test --test cli_reference`; \
         do not edit by hand.\n",
    );
    let mut paths = Vec::new();
    command_paths(&fnbuild::cli::command(), Vec::new(), &mut paths);
    for path in paths {
        let out = common::fnbuild()
            .args(&path)
            .arg("--help")
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "fnbuild {path:?} --help failed");
        let title = ["fnbuild".to_string()]
            .into_iter()
            .chain(path)
            .collect::<Vec<_>>()
            .join(" ");
        doc.push_str(&format!(
            "\n## {title}\n\n```text\n{}```\n",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    doc
}

#[test]
fn docs_cli_md_matches_the_help_output() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    let expected = reference();
    if std::env::var_os("FNBUILD_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/cli.md is stale: regenerate it with FNBUILD_UPDATE_DOCS=1 cargo test --test cli_reference"
    );
}

#[test]
fn every_visible_command_is_in_the_reference() {
    let doc = reference();
    for name in fnbuild::cli::command()
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(|sub| sub.get_name())
    {
        assert!(
            doc.contains(&format!("\n## fnbuild {name}\n")),
            "fnbuild {name} is missing from the reference"
        );
    }
    assert!(
        !doc.contains("__sandbox"),
        "a hidden command is in the reference"
    );
}
