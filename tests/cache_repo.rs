//! The deps cache shared through a registry (`--cache-repo`, `--cache-ttl`) and `fnbuild gc`:
//! two builds with separate local cache directories (two build pods) share one deps layer
//! through a real registry; the second installs nothing, downloads nothing and uploads
//! nothing; expired entries are rebuilt, listed by `gc --dry-run` and deleted by `gc`.

mod common;

use std::path::Path;

use common::functions::*;
use common::Registry;

const SIX: &str =
    "import six\n\ndef handler(event, context):\n    return 'six ' + six.__version__\n";

fn cache_repo(registry: &Registry) -> String {
    format!("{}/fnbuild/cache", registry.host())
}

/// Builds the six function into `repo` with its own cache directory and the cache repository.
fn build(
    registry: &Registry,
    src: &Path,
    cache_dir: &Path,
    repo: &str,
    extra: &[&str],
) -> (String, String) {
    let image = format!("{}/{repo}:v1", registry.host());
    let out = success(
        build_cmd(
            registry,
            cache_dir,
            &[
                "--source",
                src.to_str().unwrap(),
                "--runtime",
                PYTHON,
                "--handler",
                "fn.handler",
                "--image",
                &image,
                "--cache-repo",
                &cache_repo(registry),
            ],
        )
        .args(extra),
    );
    (
        printed_ref(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn layers(registry: &Registry, repo: &str) -> Vec<String> {
    registry
        .get(
            &format!("/v2/{repo}/manifests/v1"),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .json()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn cache_tags(registry: &Registry) -> Vec<String> {
    let response = registry.get("/v2/fnbuild/cache/tags/list", None);
    if response.status == 404 {
        return Vec::new();
    }
    response.json()["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn gc(registry: &Registry, ttl: &str, dry_run: bool) -> String {
    let mut cmd = common::fnbuild();
    cmd.args([
        "gc",
        "--cache-repo",
        &cache_repo(registry),
        "--cache-ttl",
        ttl,
    ]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    String::from_utf8_lossy(&success(&mut cmd).stdout).into_owned()
}

#[test]
fn a_second_build_pod_reuses_the_deps_layer_through_the_registry_and_gc_removes_stale_entries() {
    let registry = registry_with_bases(&[PYTHON]);
    let src = function_dir(&[("fn.py", SIX), ("requirements.txt", "six==1.16.0\n")]);

    // Pod one: installs, and stores the layer in the cache repository.
    let pod_one = tempfile::tempdir().unwrap();
    let (_, log) = build(&registry, src.path(), pod_one.path(), "team-a/six", &[]);
    assert!(
        log.contains("deps layer not in the cache repository"),
        "{log}"
    );
    assert!(log.contains("installing dependencies"), "{log}");
    assert!(
        log.contains("stored the deps layer in the cache repository"),
        "{log}"
    );
    assert!(
        log.contains("from=fnbuild/cache"),
        "the destination mounts the layer the cache repository just got: {log}"
    );
    let tags = cache_tags(&registry);
    assert_eq!(tags.len(), 1, "one entry per deps key: {tags:?}");
    assert!(tags[0].starts_with("deps-"), "{tags:?}");
    let entry = registry
        .get(
            &format!("/v2/fnbuild/cache/manifests/{}", tags[0]),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .json();
    assert!(
        entry["annotations"]["dev.fnbuild.deps.packages"]
            .as_str()
            .unwrap()
            .contains("\"six\""),
        "the entry lists what is installed: {entry}"
    );

    // Pod two: an empty cache directory, another repository. Nothing is installed, the
    // layer is mounted from the cache repository, not uploaded.
    let pod_two = tempfile::tempdir().unwrap();
    let (image, log) = build(&registry, src.path(), pod_two.path(), "team-b/six", &[]);
    assert!(
        log.contains("deps layer cache hit in the cache repository"),
        "{log}"
    );
    assert!(!log.contains("installing dependencies"), "{log}");
    assert!(log.contains("mounted blob"), "{log}");
    let deps_layer = &layers(&registry, "team-a/six")[layers(&registry, "team-a/six").len() - 2];
    let team_b = layers(&registry, "team-b/six");
    assert_eq!(&team_b[team_b.len() - 2], deps_layer, "the same deps layer");
    assert!(
        !pod_two
            .path()
            .join("blobs/sha256")
            .join(deps_layer.trim_start_matches("sha256:"))
            .exists(),
        "a hit through the registry downloads nothing"
    );
    let function = RunningFunction::start(&image, pod_two.path(), &[]);
    let (status, _, body) = call("GET", &function.url("/"), &[], b"");
    assert_eq!((status, body.as_slice()), (200, &b"six 1.16.0"[..]));
    drop(function);

    // An entry older than the TTL is a miss: installed again and replaced.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pod_three = tempfile::tempdir().unwrap();
    let (_, log) = build(
        &registry,
        src.path(),
        pod_three.path(),
        "team-c/six",
        &["--cache-ttl", "1s"],
    );
    assert!(log.contains("older than --cache-ttl"), "{log}");
    assert!(log.contains("installing dependencies"), "{log}");

    // gc: a long TTL keeps it; --dry-run lists and keeps; gc deletes.
    assert_eq!(gc(&registry, "14days", false), "");
    assert_eq!(cache_tags(&registry), tags);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let listed = gc(&registry, "1s", true);
    assert!(
        listed.starts_with("would delete ") && listed.contains(&tags[0]),
        "{listed}"
    );
    assert_eq!(cache_tags(&registry), tags, "--dry-run deletes nothing");
    let deleted = gc(&registry, "1s", false);
    assert!(deleted.contains(&tags[0]), "{deleted}");
    assert_eq!(cache_tags(&registry), Vec::<String>::new());
}

#[test]
fn bad_cache_flags_are_refused_with_what_is_accepted() {
    let registry = Registry::start(Default::default());
    let src = function_dir(&[("fn.py", SIX)]);
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = build_cmd(
        &registry,
        cache.path(),
        &[
            "--source",
            src.path().to_str().unwrap(),
            "--runtime",
            PYTHON,
            "--handler",
            "fn.handler",
            "--image",
            &format!("{}/f:v1", registry.host()),
            "--cache-repo",
            &cache_repo(&registry),
            "--cache-ttl",
            "a fortnight",
        ],
    );
    let (code, stderr) = failure(&mut cmd);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--cache-ttl a fortnight") && stderr.contains("336h"),
        "{stderr}"
    );

    let (code, stderr) = failure(common::fnbuild().args([
        "gc",
        "--cache-repo",
        &format!("{}/fnbuild/cache:latest", registry.host()),
    ]));
    assert_eq!(code, 2);
    assert!(stderr.contains("without a tag"), "{stderr}");

    let (code, stderr) = failure(
        common::fnbuild()
            .args(["gc"])
            .env_remove("FNBUILD_CACHE_REPO"),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("needs --cache-repo"), "{stderr}");
}
