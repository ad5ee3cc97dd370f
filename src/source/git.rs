//! Fetching a function's source from a Git repository with libgit2: `git+https://`,
//! `git+http://`, `git+ssh://`, `git://` and `git+file://` URLs, a revision that is a branch,
//! a tag or a commit SHA (default: the remote's HEAD), a shallow fetch of just that revision
//! where the server allows it, submodules when asked. The resolved commit SHA is returned so
//! that the image records it.
//!
//! libgit2 blocks, so this runs on a thread of its own under the fetch's deadlines
//! ([`super::deadline`]): what libgit2 reports (pack bytes, server messages, files checked
//! out) counts as progress, its callbacks cancel the fetch once a deadline has passed, its
//! socket timeouts end a connection that stops answering, and no attempt is retried after a
//! deadline. Listing the remote's references reports nothing until it is done, so that step
//! counts as a single wait for data.

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use git2::{
    CertificateCheckStatus, Cred, CredentialType, ErrorClass, FetchOptions, RemoteCallbacks,
    Repository,
};

use super::archive::Limits;
use super::deadline::{self, CONNECT_TIMEOUT};
use super::git_credentials::{GitCredentials, HostKeyStatus};
use crate::error::{Error, Result};
use crate::net::{RedactedUrl, RetryPolicy, Transience};

/// A Git source: the URL libgit2 fetches from, and what to check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub revision: Option<String>,
    pub submodules: bool,
}

impl GitSource {
    /// Recognises `git+SCHEME://...` and `git://...`, with an optional `#REVISION`.
    pub fn parse(spec: &str) -> Option<GitSource> {
        let url = if let Some(rest) = spec.strip_prefix("git+") {
            rest
        } else if spec.starts_with("git://") {
            spec
        } else {
            return None;
        };
        let (url, revision) = match url.split_once('#') {
            Some((u, r)) if !r.is_empty() => (u, Some(r.to_string())),
            Some((u, _)) => (u, None),
            None => (url, None),
        };
        Some(GitSource {
            url: url.to_string(),
            revision,
            submodules: false,
        })
    }

    /// The URL as it may be shown and recorded: without user info or query.
    pub fn display_url(&self) -> String {
        RedactedUrl::new(&self.url).to_string()
    }
}

/// How to fetch: credentials and host-key policy.
#[derive(Debug, Clone, Default)]
pub struct GitOptions {
    pub credentials: GitCredentials,
    pub skip_host_key_check: bool,
}

/// Fetches the source's revision and checks it out into `dest`; returns the commit SHA.
pub fn fetch(
    source: &GitSource,
    dest: &Path,
    git_dir: &Path,
    options: &GitOptions,
    limits: Limits,
    progress: &deadline::Progress,
) -> Result<String> {
    let shown = source.display_url();
    set_server_timeouts(progress.deadlines().idle)?;
    if options.skip_host_key_check {
        tracing::warn!(url = %shown, "SSH host key checking is off (--git-insecure-skip-host-key-check): the server is not verified");
    }
    let repo = git2::Repository::init_opts(
        git_dir,
        git2::RepositoryInitOptions::new()
            .workdir_path(dest)
            .no_dotgit_dir(true)
            .mkpath(true),
    )
    .map_err(|e| {
        Error::Source(format!(
            "cannot prepare a repository for {shown}: {}",
            e.message()
        ))
    })?;
    let fetcher = Fetcher {
        host_key_failure: Default::default(),
        repo: &repo,
        source,
        options,
        shown: &shown,
        progress,
    };

    let heads = fetcher.with_retries("list the references of", || fetcher.list_heads())?;
    let target = resolve(source, &heads, &shown)?;
    tracing::info!(url = %shown, revision = %target.describe(), "fetching");
    fetcher.with_retries("fetch", || fetcher.fetch(&target))?;
    let commit = match &target {
        Target::Ref { .. } => repo
            .find_reference(FETCHED_REF)
            .and_then(|r| r.peel_to_commit()),
        Target::Commit(oid) => match repo.find_commit(*oid) {
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(Error::Source(format!(
                    "revision '{}' not found in {shown}{}",
                    source.revision.as_deref().unwrap_or_default(),
                    suggestions(source.revision.as_deref().unwrap_or_default(), &heads)
                )))
            }
            other => other,
        },
    }
    .map_err(|e| {
        Error::Source(format!(
            "{shown}: the fetched revision is not a commit: {}",
            e.message()
        ))
    })?;
    check_limits(
        &repo,
        &commit.tree().map_err(git_error(&shown))?,
        &limits,
        &shown,
    )?;
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.force().progress(|_, _, _| progress.advance(0));
    repo.checkout_tree(commit.as_object(), Some(&mut checkout))
        .map_err(|e| {
            Error::Source(format!(
                "cannot check out {} of {shown}: {}",
                commit.id(),
                e.message()
            ))
        })?;
    repo.set_head_detached(commit.id())
        .map_err(git_error(&shown))?;
    if source.submodules {
        fetcher.update_submodules()?;
    }
    Ok(commit.id().to_string())
}

/// libgit2's socket timeouts, so that a server that stops answering fails the call in this
/// thread too, instead of leaving it to be abandoned: connecting may take [`CONNECT_TIMEOUT`],
/// a read or a write the idle deadline and a second more (a little longer, so that the
/// deadline, whose error names its flag, is what fails the fetch).
#[allow(unsafe_code)] // libgit2's options are set through its global, unsynchronised state.
fn set_server_timeouts(idle: Duration) -> Result<()> {
    let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: nothing else uses libgit2 while its globals are written: fnbuild fetches one Git
    // source at a time, from the thread running this, and a fetch abandoned at its deadline
    // fails the build, which ends the process.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(millis(CONNECT_TIMEOUT)).and_then(
            |()| {
                git2::opts::set_server_timeout_in_milliseconds(millis(
                    idle + Duration::from_secs(1),
                ))
            },
        )
    }
    .map_err(|e| Error::Source(format!("cannot set libgit2's timeouts: {}", e.message())))
}

/// The URL a submodule is fetched from: `raw` as `.gitmodules` gives it, resolved against
/// the superproject's URL when relative (`../lib.git`), as git does. A repository fetched over
/// the network may only name submodules over the network, as git's `protocol.file.allow=user`
/// has it: a hostile `.gitmodules` naming `/var/lib/private.git`, `file:///...` or enough
/// `../` would otherwise copy a repository of the build machine into the image.
fn submodule_url(parent: &str, raw: &str) -> std::result::Result<String, String> {
    let resolved = if raw.starts_with("./") || raw.starts_with("../") {
        let mut base = parent.trim_end_matches('/').to_string();
        let mut rest = raw;
        loop {
            if let Some(r) = rest.strip_prefix("./") {
                rest = r;
            } else if let Some(r) = rest.strip_prefix("../") {
                rest = r;
                let cut = base.rfind('/').filter(|&i| !base[..i].ends_with('/'));
                match cut {
                    Some(i) => base.truncate(i),
                    None => return Err(format!("its URL '{raw}' climbs above {parent}")),
                }
            } else {
                break;
            }
        }
        format!("{base}/{rest}")
    } else {
        raw.to_string()
    };
    if is_local_url(&resolved) && !is_local_url(parent) {
        return Err(format!("its URL '{raw}' names a path of the build machine"));
    }
    Ok(resolved)
}

/// Whether a Git URL names a repository on this machine (a path or `file://`), rather than
/// one reached over the network (`scheme://` or scp-like `host:path`).
fn is_local_url(url: &str) -> bool {
    match url.split_once("://") {
        Some((scheme, _)) => scheme.eq_ignore_ascii_case("file"),
        None => !url
            .split_once(':')
            .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/')),
    }
}

/// Where fetched refs land in the scratch repository.
const FETCHED_REF: &str = "refs/fnbuild/fetched";

/// What to fetch.
#[derive(Debug)]
enum Target {
    /// A branch or tag (or the remote's HEAD branch): fetched by name, shallow.
    Ref { name: String },
    /// A commit named by its SHA.
    Commit(git2::Oid),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Ref { name } => name.clone(),
            Target::Commit(oid) => oid.to_string(),
        }
    }
}

/// The remote's references, with the name of its HEAD branch.
struct Heads {
    refs: Vec<(String, git2::Oid)>,
    default_branch: Option<String>,
}

/// Picks what to fetch for the requested revision, or says which revisions exist.
fn resolve(source: &GitSource, heads: &Heads, shown: &str) -> Result<Target> {
    let Some(revision) = source.revision.as_deref() else {
        return match &heads.default_branch {
            Some(name) => Ok(Target::Ref { name: name.clone() }),
            None => Err(Error::Source(format!(
                "{shown} has no HEAD branch; name a revision with --git-revision"
            ))),
        };
    };
    for name in [
        revision.to_string(),
        format!("refs/heads/{revision}"),
        format!("refs/tags/{revision}"),
    ] {
        if heads.refs.iter().any(|(n, _)| *n == name) {
            return Ok(Target::Ref { name });
        }
    }
    if revision.len() >= 7
        && revision.len() <= 40
        && revision.chars().all(|c| c.is_ascii_hexdigit())
    {
        // A commit: advertised tips resolve short SHAs; a full SHA may name any commit.
        if let Some((name, _)) = heads
            .refs
            .iter()
            .filter(|(n, _)| n != "HEAD")
            .find(|(_, oid)| oid.to_string().starts_with(&revision.to_lowercase()))
        {
            return Ok(Target::Ref {
                name: name.trim_end_matches("^{}").to_string(),
            });
        }
        if revision.len() == 40 {
            let oid = git2::Oid::from_str(revision)
                .map_err(|e| Error::Source(e.message().to_string()))?;
            return Ok(Target::Commit(oid));
        }
    }
    Err(Error::Source(format!(
        "revision '{revision}' not found in {shown}{}",
        suggestions(revision, heads)
    )))
}

/// "; did you mean ...; branches: ...; tags: ..." for a revision that does not exist.
fn suggestions(revision: &str, heads: &Heads) -> String {
    let short = |prefix: &str| -> Vec<String> {
        heads
            .refs
            .iter()
            .filter_map(|(n, _)| n.strip_prefix(prefix))
            .filter(|n| !n.ends_with("^{}"))
            .map(str::to_string)
            .collect()
    };
    let (branches, tags) = (short("refs/heads/"), short("refs/tags/"));
    let mut near: Vec<&String> = branches
        .iter()
        .chain(&tags)
        .filter(|n| edit_distance(n, revision) <= 2 || n.contains(revision))
        .collect();
    near.truncate(5);
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_string()
        } else {
            names
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = String::new();
    if !near.is_empty() {
        out.push_str(&format!(
            "; did you mean {}?",
            near.iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    out.push_str(&format!(
        " (branches: {}; tags: {}; or a commit SHA)",
        list(&branches),
        list(&tags)
    ));
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

/// Fails when the checked-out tree would exceed the source limits.
fn check_limits(repo: &Repository, tree: &git2::Tree, limits: &Limits, shown: &str) -> Result<()> {
    let odb = repo.odb().map_err(git_error(shown))?;
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut failure = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
        files += 1;
        if entry.kind() == Some(git2::ObjectType::Blob) {
            bytes += odb.read_header(entry.id()).map(|(size, _)| size as u64).unwrap_or(0);
        }
        if files > limits.max_entries {
            failure = Some(format!("{shown} has more than {} files at this revision (the limit; raise it with --max-source-files)", limits.max_entries));
            return git2::TreeWalkResult::Abort;
        }
        if bytes > limits.max_bytes {
            failure = Some(format!("{shown} holds more than {} bytes at this revision (the limit; raise it with --max-source-size)", limits.max_bytes));
            return git2::TreeWalkResult::Abort;
        }
        git2::TreeWalkResult::Ok
    })
    .ok();
    failure.map_or(Ok(()), |f| Err(Error::Source(f)))
}

struct Fetcher<'a> {
    host_key_failure: std::cell::RefCell<Option<String>>,
    repo: &'a Repository,
    source: &'a GitSource,
    options: &'a GitOptions,
    shown: &'a str,
    progress: &'a deadline::Progress,
}

impl Fetcher<'_> {
    fn list_heads(&self) -> Result<Heads, git2::Error> {
        let mut remote = self.repo.remote_anonymous(&self.source.url)?;
        let callbacks = self.callbacks();
        let connection = remote.connect_auth(git2::Direction::Fetch, Some(callbacks), None)?;
        self.progress.advance(0);
        let refs = connection
            .list()?
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        let default_branch = connection
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().ok().map(str::to_string));
        Ok(Heads {
            refs,
            default_branch,
        })
    }

    fn fetch(&self, target: &Target) -> Result<(), git2::Error> {
        let refspec = match target {
            Target::Ref { name } => format!("+{name}:{FETCHED_REF}"),
            Target::Commit(oid) => oid.to_string(),
        };
        let everything = || -> Result<(), git2::Error> {
            let mut remote = self.repo.remote_anonymous(&self.source.url)?;
            let mut options = FetchOptions::new();
            options
                .remote_callbacks(self.callbacks())
                .download_tags(git2::AutotagOption::None);
            remote.fetch(
                &[
                    "+refs/heads/*:refs/fnbuild/heads/*",
                    "+refs/tags/*:refs/fnbuild/tags/*",
                ],
                Some(&mut options),
                None,
            )
        };
        let attempt = |depth: Option<i32>| -> Result<(), git2::Error> {
            let mut remote = self.repo.remote_anonymous(&self.source.url)?;
            let mut options = FetchOptions::new();
            options
                .remote_callbacks(self.callbacks())
                .download_tags(git2::AutotagOption::None);
            if let Some(depth) = depth {
                options.depth(depth);
            }
            remote.fetch(&[refspec.as_str()], Some(&mut options), None)
        };
        let result = match attempt(Some(1)) {
            // Some transports (the local one) and servers cannot fetch shallow: fetch it all.
            Err(e) if e.message().contains("shallow") => {
                tracing::info!(url = %self.shown, "the server cannot fetch shallow; fetching the whole history");
                attempt(None)
            }
            other => other,
        };
        match (result, target) {
            (Err(e), Target::Commit(_)) if e.message().contains("specific object") => {
                tracing::info!(url = %self.shown, "the server does not serve commits by SHA; fetching its branches and tags");
                everything()
            }
            (other, _) => other,
        }
    }

    fn update_submodules(&self) -> Result<()> {
        let submodules = self.repo.submodules().map_err(git_error(self.shown))?;
        for mut submodule in submodules {
            let name = submodule.name().unwrap_or("?").to_string();
            let url = submodule_url(
                &self.source.url,
                submodule.url().ok().flatten().unwrap_or(""),
            )
            .map_err(|why| {
                Error::Source(format!(
                    "submodule '{name}' of {}: {why}; submodules of a remote repository \
                         must be remote too (https://, ssh://, git://, or relative to it)",
                    self.shown
                ))
            })?;
            // The URL as resolved here, in the scratch repository's own configuration (never
            // the source's .gitmodules): libgit2 would resolve a relative one against the
            // working directory, on this machine.
            submodule.init(true).map_err(git_error(self.shown))?;
            let mut config = self.repo.config().map_err(git_error(self.shown))?;
            config
                .set_str(&format!("submodule.{name}.url"), &url)
                .map_err(git_error(self.shown))?;
            submodule.reload(true).map_err(git_error(self.shown))?;
            let mut fetch = FetchOptions::new();
            fetch.remote_callbacks(self.callbacks());
            let mut update = git2::SubmoduleUpdateOptions::new();
            update.fetch(fetch);
            submodule.update(false, Some(&mut update)).map_err(|e| {
                Error::Source(format!(
                    "cannot fetch submodule '{name}' of {}: {}",
                    self.shown,
                    self.describe(&e)
                ))
            })?;
        }
        Ok(())
    }

    /// Credentials and host-key checks, each credential tried once; progress reported, and
    /// the transfer cancelled once a deadline has passed.
    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        let progress = self.progress;
        // Counts per transfer: each fetch's bytes count from 0.
        let received = Cell::new(0usize);
        callbacks.transfer_progress(move |stats| {
            let now = stats.received_bytes();
            progress.advance(now.saturating_sub(received.replace(now)) as u64);
            progress.expired().is_none()
        });
        callbacks.sideband_progress(move |_| {
            progress.advance(0);
            progress.expired().is_none()
        });
        let credentials = &self.options.credentials;
        let userpass_tried = Cell::new(false);
        let keys_tried = Cell::new(0usize);
        callbacks.credentials(move |url, username, allowed| {
            if allowed.contains(CredentialType::SSH_KEY) {
                let index = keys_tried.get();
                keys_tried.set(index + 1);
                return match credentials.ssh_keys.get(index) {
                    Some(key) => Cred::ssh_key(username.unwrap_or("git"), None, key, None),
                    None => Err(git2::Error::from_str(if credentials.ssh_keys.is_empty() {
                        "no SSH key: pass --git-ssh-key FILE or put id_* keys in ~/.ssh"
                    } else {
                        "the server accepted none of the SSH keys"
                    })),
                };
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && !userpass_tried.replace(true)
            {
                if let Some(found) = credentials.for_url(url) {
                    return Cred::userpass_plaintext(&found.username, &found.password);
                }
            }
            Err(git2::Error::from_str("authentication required"))
        });
        let skip = self.options.skip_host_key_check;
        callbacks.certificate_check(move |cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            if skip {
                return Ok(CertificateCheckStatus::CertificateOk);
            }
            let key = hostkey.hostkey().unwrap_or_default();
            let (name, port) = split_host_port(host);
            let port = port.or(url_port(&self.source.url));
            let failure = |m: String| { *self.host_key_failure.borrow_mut() = Some(m.clone()); Err(git2::Error::from_str(&m)) };
            match credentials.host_key_status(name, port, key) {
                HostKeyStatus::Matches => Ok(CertificateCheckStatus::CertificateOk),
                HostKeyStatus::Unknown => failure(format!(
                    "host key unknown: {host} is not in known_hosts{}; add its key (ssh-keyscan), pass --git-known-hosts FILE, or --git-insecure-skip-host-key-check",
                    credentials.known_hosts_from.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default()
                )),
                HostKeyStatus::Mismatch => failure(format!(
                    "host key mismatch: {host} presented a key that known_hosts does not list for it; the server may be impersonated"
                )),
            }
        });
        callbacks
    }

    /// Runs a network operation under the network layer's retry policy; what is transient is
    /// [`Fetcher::transience`]'s to say.
    fn with_retries<T>(
        &self,
        what: &str,
        operation: impl FnMut() -> Result<T, git2::Error>,
    ) -> Result<T> {
        RetryPolicy::SOURCE
            .run_blocking(
                operation,
                |e| self.transience(e),
                |e, attempt, wait| {
                    tracing::warn!(url = %self.shown, attempt, "{}; retrying in {wait:?}", self.describe(e));
                },
            )
            .map_err(|e| {
                Error::Source(format!(
                    "cannot {what} {}: {}",
                    self.shown,
                    self.describe(&e)
                ))
            })
    }

    /// libgit2 reports no more than a class and a message: a network or OS failure is
    /// transient unless its message says authentication, not found or host key; a 5xx or a
    /// timeout always is. Nothing is once a deadline has passed.
    fn transience(&self, e: &git2::Error) -> Transience {
        let lower = e.message().to_ascii_lowercase();
        let transient = matches!(e.class(), ErrorClass::Net | ErrorClass::Os)
            && !lower.contains("authentication")
            && !lower.contains("not found")
            && !lower.contains("host key")
            || lower.contains("status code: 5")
            || lower.contains("timed out");
        if transient
            && !self.describe(e).starts_with("repository not found")
            && self.progress.expired().is_none()
        {
            Transience::TRANSIENT
        } else {
            Transience::Permanent
        }
    }

    /// libgit2's message, classified, with credentials masked.
    fn describe(&self, e: &git2::Error) -> String {
        if let Some(reason) = self.host_key_failure.borrow().clone() {
            return reason;
        }
        let message = self.redact(e.message());
        let lower = message.to_ascii_lowercase();
        let credentials = &self.options.credentials;
        if lower.contains("host key") || lower.contains("no ssh key") || lower.contains("ssh keys")
        {
            message
        } else if e.code() == git2::ErrorCode::Auth
            || lower.contains("authentication")
            || lower.contains("401")
            || lower.contains("403")
        {
            let url_has_password = self
                .source
                .url
                .split_once("://")
                .and_then(|(_, rest)| rest.split('/').next())
                .and_then(|authority| authority.rsplit_once('@'))
                .is_some_and(|(userinfo, _)| userinfo.contains(':'));
            let from = match credentials.for_url(&self.source.url) {
                _ if url_has_password => "the user and password in the URL".to_string(),
                Some(c) if c.prefix.is_empty() => {
                    format!("the token in {}", super::git_credentials::TOKEN_ENV)
                }
                Some(c) => format!(
                    "the credentials of user '{}' from {}",
                    c.username,
                    credentials
                        .stored_from
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                None if self.source.url.starts_with("ssh://") => format!(
                    "the SSH key(s) {}",
                    credentials
                        .ssh_keys
                        .iter()
                        .map(|k| k.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!(
                    "no credentials (put them in ~/.git-credentials, or a token in {})",
                    super::git_credentials::TOKEN_ENV
                ),
            };
            format!("authentication failed, with {from} ({message})")
        } else if lower.contains("404")
            || lower.contains("not found")
            || lower.contains("not appear to be a git repository")
            || lower.contains("could not find repository")
            || lower.contains("failed to resolve path")
            || lower.contains("no such repository")
        {
            format!("repository not found ({message})")
        } else {
            message
        }
    }

    fn redact(&self, message: &str) -> String {
        let mut out = message.replace(&self.source.url, self.shown);
        let credentials = &self.options.credentials;
        for secret in credentials
            .stored
            .iter()
            .chain(&credentials.token)
            .map(|c| c.password.as_str())
            .filter(|s| s.len() >= 3)
        {
            out = out.replace(secret, "****");
        }
        out
    }
}

fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.rsplit_once(':')?.1.parse().ok()
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((name, port)) => (
            name.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok(),
        ),
        None => (host, None),
    }
}

fn git_error(shown: &str) -> impl Fn(git2::Error) -> Error + '_ {
    move |e| Error::Source(format!("{shown}: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_parse_with_revisions() {
        let s = GitSource::parse("git+https://u:p@git.local/fn.git#v1.2").unwrap();
        assert_eq!(s.url, "https://u:p@git.local/fn.git");
        assert_eq!(s.revision.as_deref(), Some("v1.2"));
        assert_eq!(s.display_url(), "https://git.local/fn.git");
        assert_eq!(
            GitSource::parse("git://git.local/fn.git").unwrap().url,
            "git://git.local/fn.git"
        );
        assert_eq!(
            GitSource::parse("git+file:///srv/fn.git").unwrap().url,
            "file:///srv/fn.git"
        );
        assert!(GitSource::parse("https://git.local/fn.git").is_none());
    }

    #[test]
    fn unknown_revisions_suggest_near_names() {
        let oid = git2::Oid::ZERO_SHA1;
        let heads = Heads {
            refs: vec![
                ("refs/heads/main".into(), oid),
                ("refs/heads/develop".into(), oid),
                ("refs/tags/v1.0".into(), oid),
            ],
            default_branch: Some("refs/heads/main".into()),
        };
        let source = |rev: &str| GitSource {
            url: "x".into(),
            revision: Some(rev.into()),
            submodules: false,
        };
        let err = resolve(&source("mian"), &heads, "repo")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("revision 'mian' not found") && err.contains("did you mean 'main'"),
            "{err}"
        );
        assert!(err.contains("tags: v1.0"), "{err}");
        assert!(
            matches!(resolve(&source("v1.0"), &heads, "repo").unwrap(), Target::Ref { name } if name == "refs/tags/v1.0")
        );
        assert!(
            matches!(resolve(&GitSource { revision: None, ..source("") }, &heads, "repo").unwrap(), Target::Ref { name } if name == "refs/heads/main")
        );
    }

    #[test]
    fn submodules_of_remote_repositories_stay_remote() {
        let parent = "https://git.local/team/fn.git";
        assert_eq!(
            submodule_url(parent, "../lib.git").unwrap(),
            "https://git.local/team/lib.git"
        );
        assert_eq!(
            submodule_url(parent, "./sub/lib.git").unwrap(),
            "https://git.local/team/fn.git/sub/lib.git"
        );
        assert_eq!(
            submodule_url(parent, "git@git.local:team/lib.git").unwrap(),
            "git@git.local:team/lib.git"
        );
        for hostile in [
            "/var/lib/private.git",
            "file:///var/lib/private.git",
            "../../../../../var/lib/private.git",
            "private",
        ] {
            assert!(submodule_url(parent, hostile).is_err(), "{hostile}");
        }
        // A local superproject may name local submodules.
        assert_eq!(
            submodule_url("file:///srv/fn.git", "file:///srv/lib.git").unwrap(),
            "file:///srv/lib.git"
        );
    }
}
