//! docs/cli.md is the CLI reference, generated from `fnbuild --help`; this test fails when it
//! is stale. Regenerate it with `FNBUILD_UPDATE_DOCS=1 cargo test --test cli_reference`.

mod common;

const COMMANDS: &[&str] = &["", "build", "base", "run", "push", "mirror", "runtimes"];

fn reference() -> String {
    let mut doc = String::from(
        "# fnbuild command-line reference\n\n\
         Generated from `fnbuild --help` by `FNBUILD_UPDATE_DOCS=1 cargo test --test cli_reference`; \
         do not edit by hand.\n",
    );
    for command in COMMANDS {
        let mut cmd = common::fnbuild();
        if !command.is_empty() {
            cmd.arg(command);
        }
        let out = cmd.arg("--help").env("COLUMNS", "100").output().unwrap();
        assert!(out.status.success());
        let title = if command.is_empty() {
            "fnbuild".to_string()
        } else {
            format!("fnbuild {command}")
        };
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
