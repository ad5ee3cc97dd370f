//! The progress display of a push: on a terminal (a pseudo-terminal made by `script`), one bar
//! per destination that ends as a summary line naming the destination, its layer counts and
//! the bytes sent, with log lines printed whole around it; without a terminal, plain log lines
//! and no control sequences at all.

mod common;

use std::path::Path;
use std::process::Command;

use common::functions::{build_cmd, printed_ref, registry_with_bases, success, PYTHON};
use common::Registry;

/// A function with a few MiB of incompressible data, so its code layer takes a visible
/// number of bytes to send.
fn function_with_data(dir: &Path) {
    std::fs::write(
        dir.join("hello.py"),
        "def handler(event, context):\n    return 'hello'\n",
    )
    .unwrap();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(3 << 20);
    while data.len() < 3 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(dir.join("data.bin"), data).unwrap();
}

/// Two destinations in the same registry: their repositories (results name them by digest),
/// and the build's arguments pushing to both, tagged `v1`.
fn build_args(registry: &Registry, source: &Path) -> (Vec<String>, [String; 2]) {
    let repos = [
        format!("{}/functions/progress-a", registry.host()),
        format!("{}/functions/progress-b", registry.host()),
    ];
    let mut args: Vec<String> = [
        "--source",
        source.to_str().unwrap(),
        "--runtime",
        PYTHON,
        "--handler",
        "hello.handler",
    ]
    .map(String::from)
    .to_vec();
    for repo in &repos {
        args.push("--image".into());
        args.push(format!("{repo}:v1"));
    }
    (args, repos)
}

/// `'...'` for sh.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The text of terminal output: CSI sequences (`ESC [ ... final byte`) and carriage
/// returns removed. Bars are padded to the terminal's width rather than ended by a newline, so
/// a bar and what follows it may share a line here.
fn terminal_text(raw: &str) -> String {
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        } else if c != '\r' {
            text.push(c);
        }
    }
    text
}

#[test]
fn a_terminal_shows_progress_per_destination() {
    let registry = registry_with_bases(&[PYTHON]);
    let source = tempfile::tempdir().unwrap();
    function_with_data(source.path());
    let cache = tempfile::tempdir().unwrap();
    let (args, repos) = build_args(&registry, source.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let build = build_cmd(&registry, cache.path(), &args);

    // The same command, run by `script` on a pseudo-terminal of 120 columns.
    let mut line = String::from("stty cols 120 rows 40 && exec");
    line.push(' ');
    line.push_str(&shell_quote(build.get_program().to_str().unwrap()));
    for arg in build.get_args() {
        line.push(' ');
        line.push_str(&shell_quote(arg.to_str().unwrap()));
    }
    let mut script = Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm");
    for (key, value) in build.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    script.env_remove("NO_COLOR");
    let out = success(script.stdin(std::process::Stdio::null()));
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        raw.contains("\x1b["),
        "no control sequence: bars were not drawn:\n{raw}"
    );
    let text = terminal_text(&raw);

    // A destination's line appears as soon as publishing to it starts (later states may be
    // skipped: bars are redrawn at most 10 times a second).
    assert!(
        text.contains(&format!(
            "{}:v1 layers 0/3: 0 uploaded, 0 mounted, 0 already there",
            repos[0]
        )),
        "no progress line for {}:\n{text}",
        repos[0]
    );
    for repo in &repos {
        // Each ends as a summary: the destination, done, the layers and how they got there,
        // the bytes sent (the config and the 3 MiB code layer; the base's layers are mounted).
        let summary =
            format!("{repo}:v1: done, layers 3/3: 1 uploaded, 2 mounted, 0 already there; ");
        let at = text
            .find(&summary)
            .unwrap_or_else(|| panic!("no summary {summary:?} in:\n{text}"));
        let rest = &text[at + summary.len()..];
        let sent = &rest[..rest.find(" sent in ").expect("the bytes sent")];
        assert!(sent.ends_with(" MiB"), "{sent:?} sent");
        // Log lines written while the bars were drawn come whole, not cut by a redraw.
        let published = format!(" INFO published image={repo}@sha256:");
        let at = text
            .find(&published)
            .unwrap_or_else(|| panic!("no 'published' log line for {repo} in:\n{text}"));
        let digest = &text[at + published.len()..];
        assert!(
            digest.len() > 64
                && digest[..64].chars().all(|c| c.is_ascii_hexdigit())
                && digest[64..].starts_with('\n'),
            "a cut 'published' log line for {repo} in:\n{text}"
        );
    }
    // The results come last, one per destination.
    let last: Vec<&str> = text.split_whitespace().rev().take(2).collect();
    assert!(
        last[1].starts_with(&format!("{}@sha256:", repos[0]))
            && last[0].starts_with(&format!("{}@sha256:", repos[1])),
        "the results are not last:\n{text}"
    );
}

#[test]
fn without_a_terminal_logs_are_plain_lines() {
    let registry = registry_with_bases(&[PYTHON]);
    let source = tempfile::tempdir().unwrap();
    function_with_data(source.path());
    let cache = tempfile::tempdir().unwrap();
    let (args, repos) = build_args(&registry, source.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = success(&mut build_cmd(&registry, cache.path(), &args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "control characters in plain output:\n{stderr:?}"
    );
    for repo in &repos {
        let to = format!("to={repo}:v1");
        for what in ["uploaded blob", "mounted blob"] {
            assert!(
                stderr.lines().any(|l| l.contains(what) && l.contains(&to)),
                "no '{what}' line for {repo}:\n{stderr}"
            );
        }
        assert!(
            stderr.lines().any(|l| l
                .contains("blobs in place: layers 3/3: 1 uploaded, 2 mounted, 0 already there")
                && l.contains(&to)),
            "no summary line for {repo}:\n{stderr}"
        );
    }
    // Results alone on stdout, one per destination.
    printed_ref(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<&str> = stdout.lines().collect();
    assert_eq!(results.len(), repos.len(), "{stdout}");
    for (result, repo) in results.iter().zip(&repos) {
        assert!(result.starts_with(&format!("{repo}@sha256:")), "{stdout:?}");
    }
}
