//! Compiling a Python handler's module at build time with the runtime's own interpreter, so
//! that a syntax error (or syntax newer than the runtime's Python) fails the build with the
//! line it is on, instead of the function when it starts. The module's text is given on
//! stdin and only compiled, never run; the interpreter is the base image's, inside its root
//! filesystem (see `sandbox`), or this machine's `python3` when it is the same version (a
//! build step running in the runtime's own image). A base image whose `python3` is another
//! version than the runtime's fails the build: its dependencies would be installed where that
//! interpreter never looks.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handler_check::Module;
use crate::runtime::Handler;
use crate::sandbox::{SandboxSpec, SETUP_FAILED, UNPRIVILEGED};

/// How long a compile may take before it is stopped.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The exit code the script uses for code that does not compile.
const DOES_NOT_COMPILE: i32 = 3;
/// The exit code the script uses when the interpreter is not the runtime's version.
const OTHER_VERSION: i32 = 4;
/// The most of the interpreter's output kept for a message.
const MAX_OUTPUT_BYTES: u64 = 16 * 1024;

/// Compiles the text on stdin as the file named by the first argument; on failure prints
/// where and why, and exits with [`DOES_NOT_COMPILE`]. An interpreter that is not the
/// version of the second argument prints its own and exits with [`OTHER_VERSION`].
const SCRIPT: &str = r#"import sys
version = "%d.%d" % sys.version_info[:2]
if version != sys.argv[2]:
    print(version)
    sys.exit(4)
source = sys.stdin.buffer.read()
try:
    compile(source, sys.argv[1], "exec", dont_inherit=True)
except SyntaxError as e:
    print("line %s: %s" % (e.lineno, e.msg))
    text = (e.text or "").rstrip()
    if text and len(text) <= 200:
        print("    " + text)
        if e.offset:
            print("    " + " " * (e.offset - 1) + "^")
    sys.exit(3)
except (ValueError, RecursionError, MemoryError) as e:
    print("%s: %s" % (type(e).__name__, e))
    sys.exit(3)
"#;

/// Where the runtime's interpreter is.
#[derive(Debug, Clone)]
pub enum Interpreter {
    /// This machine's `python3`, which is the runtime's version.
    Host,
    /// `python3` inside the base image's root filesystem at this path.
    Image(PathBuf),
}

/// What came of compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiled {
    /// The module compiles.
    Yes,
    /// The base image's interpreter cannot run here (no namespaces in this container): why.
    Unavailable(String),
}

/// Whether this machine's `python3` is Python `version` (`3.13`).
pub fn host_python_is(version: &str) -> bool {
    Command::new("python3")
        .args([
            "-I",
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == version
        })
}

/// Compiles the handler's module with `interpreter`, the runtime `python{version}`; an error
/// when it does not compile.
pub fn python(
    module: &Module,
    handler: &Handler,
    interpreter: &Interpreter,
    version: &str,
) -> Result<Compiled> {
    let args = ["python3", "-I", "-S", "-c", SCRIPT, &module.path, version].map(String::from);
    let command = match interpreter {
        Interpreter::Host => {
            let mut command = Command::new(&args[0]);
            command.args(&args[1..]).env_clear().env("LANG", "C.UTF-8");
            command
        }
        Interpreter::Image(root) => SandboxSpec {
            root: root.clone(),
            binds: Vec::new(),
            workdir: "/".into(),
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            args: args.to_vec(),
            user: UNPRIVILEGED,
        }
        .command()?,
    };
    let (code, output) = run(command, module.text.as_bytes(), version)?;
    match code {
        Some(0) => {
            tracing::info!(module = %module.path, "the handler compiles with the runtime's python{version}");
            Ok(Compiled::Yes)
        }
        Some(code)
            if code == i32::from(SETUP_FAILED) && matches!(interpreter, Interpreter::Image(_)) =>
        {
            Ok(Compiled::Unavailable(
                output.trim().trim_start_matches("error: ").to_string(),
            ))
        }
        Some(OTHER_VERSION) => Err(Error::Image(format!(
            "the base image's python3 is Python {}, not the runtime's Python {version}: a base \
             image of runtime python{version} must hold Python {version}",
            output.trim()
        ))),
        Some(DOES_NOT_COMPILE) => Err(Error::Function(format!(
            "handler '{handler}': {} does not compile with the runtime's Python {version}: {}",
            module.path,
            output.trim_end()
        ))),
        other => Err(Error::Function(format!(
            "handler '{handler}': cannot compile {} with the runtime's Python {version} ({}): {}",
            module.path,
            other.map_or("stopped".to_string(), |c| format!("exit code {c}")),
            output.trim_end()
        ))),
    }
}

/// Runs the compile with `input` on stdin; returns its exit code (none when it was stopped)
/// and the start of its output.
fn run(mut command: Command, input: &[u8], version: &str) -> Result<(Option<i32>, String)> {
    let cannot = |e: std::io::Error| {
        Error::Function(format!("cannot start the runtime's Python {version}: {e}"))
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    // Written on a thread of its own: a large module must not block on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut stream = stream;
            let _ = (&mut stream).take(MAX_OUTPUT_BYTES).read_to_end(&mut text);
            // The rest is read and dropped: a closed pipe would change how Python exits.
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
            text
        })
    })
    .collect();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(cannot)? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let output: Vec<u8> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap_or_default())
        .collect();
    let output = String::from_utf8_lossy(&output).into_owned();
    match status {
        Some(status) => Ok((status.code(), output)),
        None => Err(Error::Function(format!(
            "compiling the handler with the runtime's Python {version} took more than {}s",
            TIMEOUT.as_secs()
        ))),
    }
}
