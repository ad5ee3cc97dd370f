//! What a Knative Service's pod holds besides the image and plain env values: env from secret
//! and config map keys (`valueFrom`), `envFrom`, and secret, config map, projected and emptyDir
//! volumes with their mounts. Read from Kubernetes YAML (a Deployment's container and pod spec,
//! or one file of the same fields), rebuilt field by field in the shapes Knative Serving
//! admits, and checked as its webhook checks them. What has no place in Knative is reported,
//! naming the feature flag that would admit it; what is malformed (a mount over the function's
//! code, a relative or `..` path, a volume name that is not a DNS label, a mount of a volume
//! that does not exist) is refused. Nothing Knative would reject is ever written.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::function_image::{CODE_DIR, SERVER_DIR};

/// Env names Knative sets in every revision itself.
const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
/// Mount paths Knative refuses.
const RESERVED_MOUNTS: [&str; 3] = ["/", "/dev", "/dev/log"];
/// Volume sources Knative admits only behind a feature flag that is off by default.
const FLAGGED_VOLUMES: [(&str, &str); 5] = [
    (
        "persistentVolumeClaim",
        "kubernetes.podspec-persistent-volume-claim (and kubernetes.podspec-persistent-volume-write to write)",
    ),
    ("hostPath", "kubernetes.podspec-volumes-hostpath"),
    ("csi", "kubernetes.podspec-volumes-csi"),
    ("ephemeral", "kubernetes.podspec-volumes-ephemeral"),
    ("image", "kubernetes.podspec-volumes-image"),
];
/// The largest file mode Kubernetes accepts (0777).
const MAX_MODE: u64 = 0o777;

/// The pod fields of a Service that come from secrets, config maps and volumes, as Knative
/// admits them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodAdditions {
    env: Vec<Value>,
    env_from: Vec<Value>,
    volume_mounts: Vec<Value>,
    volumes: Vec<Value>,
}

/// What [`PodAdditions::read`] found.
#[derive(Debug, Default)]
pub struct ReadPod {
    /// Env with plain values, in their order.
    pub env: Vec<(String, String)>,
    pub additions: PodAdditions,
    /// What has no place in Knative Serving, in words for the user.
    pub not_carried: Vec<String>,
}

/// Adds what Kubeless's `--secrets NAME` adds to a function's pod: the secret NAME in the
/// volume `NAME-vol`, mounted at `/NAME`. `fields` holds `volumes` and `volumeMounts`, as a
/// file read by [`PodAdditions::read`] does.
pub fn add_kubeless_secret(fields: &mut Value, secret: &str) {
    let volume = format!("{secret}-vol");
    if !fields.is_object() {
        *fields = json!({});
    }
    for (key, item) in [
        (
            "volumes",
            json!({ "name": volume, "secret": { "secretName": secret } }),
        ),
        (
            "volumeMounts",
            json!({ "name": volume, "mountPath": format!("/{secret}"), "readOnly": true }),
        ),
    ] {
        match fields.get_mut(key).and_then(Value::as_array_mut) {
            Some(list) => list.push(item),
            None => fields[key] = json!([item]),
        }
    }
}

/// The fields a `--knative-pod` file may hold: those [`PodAdditions::read`] reads.
const POD_FILE_FIELDS: [&str; 4] = ["env", "envFrom", "volumeMounts", "volumes"];

impl ReadPod {
    /// What `fnbuild build` gives the Service's pod: the fields of the YAML file `file`
    /// (`--knative-pod`, as `fnbuild convert` writes it), plus each of `secrets` as Kubeless's
    /// `--secrets` mounted it.
    pub fn from_file_and_secrets(file: Option<&Path>, secrets: &[String]) -> Result<ReadPod> {
        let mut fields = match file {
            Some(path) => read_pod_file(path)?,
            None => Value::Null,
        };
        for secret in secrets {
            add_kubeless_secret(&mut fields, secret);
        }
        let what = match (file, secrets.is_empty()) {
            (Some(path), true) => format!("--knative-pod {}", path.display()),
            (Some(path), false) => format!("--knative-pod {} with --secrets", path.display()),
            (None, _) => "--secrets".to_string(),
        };
        PodAdditions::read(&fields, &fields, &what)
    }
}

/// A `--knative-pod` file's fields, refused when it holds anything else.
fn read_pod_file(path: &Path) -> Result<Value> {
    let refuse =
        |problem: String| Error::Usage(format!("--knative-pod {}: {problem}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let fields: Value =
        serde_norway::from_str(&text).map_err(|e| refuse(format!("not valid YAML: {e}")))?;
    let unknown = match &fields {
        Value::Object(map) => other_keys(map, &POD_FILE_FIELDS),
        Value::Null => Vec::new(),
        _ => vec!["(not a mapping)"],
    };
    if !unknown.is_empty() {
        return Err(refuse(format!(
            "{} is not a field it takes (accepted: {})",
            unknown.join(", "),
            POD_FILE_FIELDS.join(", ")
        )));
    }
    Ok(fields)
}

impl PodAdditions {
    /// Reads `container`'s `env`, `envFrom` and `volumeMounts` and `pod`'s `volumes` (the same
    /// object for a file of those fields). `what` names them in errors and notes, e.g.
    /// `functions.yaml: Function 'hello'`.
    pub fn read(container: &Value, pod: &Value, what: &str) -> Result<ReadPod> {
        let mut reader = Reader {
            what,
            read: ReadPod::default(),
        };
        reader.env(container)?;
        reader.env_from(container)?;
        let volumes = reader.volumes(pod)?;
        reader.mounts(container, volumes)?;
        Ok(reader.read)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The names of the env it sets.
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.env.iter().filter_map(|e| e["name"].as_str())
    }

    /// As the fields [`PodAdditions::read`] reads: `env`, `envFrom`, `volumeMounts`, `volumes`.
    pub fn to_value(&self) -> Value {
        let mut fields = Map::new();
        for (key, list) in self.lists() {
            if !list.is_empty() {
                fields.insert(key.into(), Value::Array(list.to_vec()));
            }
        }
        Value::Object(fields)
    }

    /// Puts the fields into a Service's container and pod spec, after the env already there.
    pub(super) fn apply(&self, container: &mut Map<String, Value>, spec: &mut Map<String, Value>) {
        for (key, list) in self.lists() {
            if list.is_empty() {
                continue;
            }
            let target = if key == "volumes" {
                &mut *spec
            } else {
                &mut *container
            };
            match target.get_mut(key).and_then(Value::as_array_mut) {
                Some(existing) => existing.extend(list.iter().cloned()),
                None => {
                    target.insert(key.into(), Value::Array(list.to_vec()));
                }
            }
        }
    }

    fn lists(&self) -> [(&'static str, &[Value]); 4] {
        [
            ("env", &self.env),
            ("envFrom", &self.env_from),
            ("volumeMounts", &self.volume_mounts),
            ("volumes", &self.volumes),
        ]
    }
}

/// A volume of the pod: what the Service gets of it, or why it gets nothing.
struct Volume {
    name: String,
    kind: String,
    carried: std::result::Result<Value, String>,
    mounted: bool,
}

struct Reader<'a> {
    what: &'a str,
    read: ReadPod,
}

impl Reader<'_> {
    fn refuse(&self, field: &str, problem: impl std::fmt::Display) -> Error {
        Error::Usage(format!("{}: {field} {problem}", self.what))
    }

    fn note(&mut self, note: String) {
        self.read.not_carried.push(note);
    }

    /// Notes the fields of `object` other than `known`, which the Service does not get.
    fn note_unknown(&mut self, object: &Map<String, Value>, known: &[&str], field: &str) {
        let unknown = other_keys(object, known);
        if !unknown.is_empty() {
            self.note(format!(
                "{field}: {} left out: Knative Serving takes only {} there",
                unknown.join(", "),
                known.join(", ")
            ));
        }
    }

    fn object<'v>(&self, value: &'v Value, field: &str) -> Result<&'v Map<String, Value>> {
        value
            .as_object()
            .ok_or_else(|| self.refuse(field, "is not a mapping"))
    }

    /// The list at `value` (none when absent).
    fn list<'v>(&self, value: Option<&'v Value>, field: &str) -> Result<&'v [Value]> {
        match value {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(self.refuse(field, "is not a list")),
        }
    }

    fn string<'v>(
        &self,
        object: &'v Map<String, Value>,
        key: &str,
        field: &str,
    ) -> Result<&'v str> {
        match object.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            _ => Err(self.refuse(field, format!("has no {key}"))),
        }
    }

    /// A secret's or config map's name: a DNS-1123 subdomain.
    fn object_name<'v>(
        &self,
        object: &'v Map<String, Value>,
        key: &str,
        field: &str,
    ) -> Result<&'v str> {
        let name = self.string(object, key, field)?;
        if is_dns_subdomain(name) {
            Ok(name)
        } else {
            Err(self.refuse(
                field,
                format!(
                    "names '{}', which is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253)",
                    name.escape_debug()
                ),
            ))
        }
    }

    fn optional_bool(
        &self,
        from: &Map<String, Value>,
        key: &str,
        to: &mut Map<String, Value>,
        field: &str,
    ) -> Result<()> {
        match from.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Bool(b)) => {
                to.insert(key.into(), json!(b));
                Ok(())
            }
            Some(_) => Err(self.refuse(field, format!("has {key} that is not true or false"))),
        }
    }

    fn mode(
        &self,
        from: &Map<String, Value>,
        key: &str,
        to: &mut Map<String, Value>,
        field: &str,
    ) -> Result<()> {
        match from.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(mode) => match mode.as_u64().filter(|m| *m <= MAX_MODE) {
                Some(m) => {
                    to.insert(key.into(), json!(m));
                    Ok(())
                }
                None => Err(self.refuse(
                    field,
                    format!("has {key} {mode}: expected a file mode from 0 to 0777 (511)"),
                )),
            },
        }
    }

    /// A path inside a volume: relative, without `..`.
    fn relative_path<'v>(&self, path: &'v str, field: &str) -> Result<&'v str> {
        if path.is_empty()
            || path.starts_with('/')
            || path.split('/').any(|p| p == "..")
            || path.chars().any(char::is_control)
        {
            return Err(self.refuse(
                field,
                format!(
                    "has path '{}': expected a relative path inside the volume, without '..'",
                    path.escape_debug()
                ),
            ));
        }
        Ok(path)
    }

    fn env(&mut self, container: &Value) -> Result<()> {
        let mut seen = BTreeSet::new();
        for (i, entry) in self.list(container.get("env"), "env")?.iter().enumerate() {
            let field = format!("env[{i}]");
            let entry = self.object(entry, &field)?;
            let name = self.string(entry, "name", &field)?;
            if name.contains('=') || name.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(self.refuse(
                    &field,
                    format!(
                        "has name '{}': expected printable ASCII without '=' or spaces",
                        name.escape_debug()
                    ),
                ));
            }
            if !seen.insert(name) {
                return Err(self.refuse(&field, format!("sets {name} a second time")));
            }
            if RESERVED_ENV.contains(&name) {
                self.note(format!(
                    "env {name}: Knative sets {name} in every revision itself"
                ));
                continue;
            }
            match entry.get("valueFrom") {
                None | Some(Value::Null) => self.read.env.push((
                    name.to_string(),
                    entry
                        .get("value")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                )),
                Some(from) => {
                    if let Some(from) = self.value_from(from, name, &field)? {
                        self.read
                            .additions
                            .env
                            .push(json!({ "name": name, "valueFrom": from }));
                    }
                }
            }
        }
        Ok(())
    }

    fn value_from(&mut self, from: &Value, name: &str, field: &str) -> Result<Option<Value>> {
        let field = format!("{field}.valueFrom");
        let from = self.object(from, &field)?;
        let mut sources = from.iter();
        let (Some((kind, reference)), None) = (sources.next(), sources.next()) else {
            return Err(self.refuse(
                &field,
                "must name exactly one of secretKeyRef, configMapKeyRef",
            ));
        };
        match kind.as_str() {
            "secretKeyRef" | "configMapKeyRef" => {
                let field = format!("{field}.{kind}");
                let reference = self.object(reference, &field)?;
                let mut out = Map::new();
                out.insert(
                    "name".into(),
                    json!(self.object_name(reference, "name", &field)?),
                );
                let key = self.string(reference, "key", &field)?;
                if !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                {
                    return Err(self.refuse(
                        &field,
                        format!(
                            "has key '{}': expected letters, digits, '-', '_' and '.'",
                            key.escape_debug()
                        ),
                    ));
                }
                out.insert("key".into(), json!(key));
                self.optional_bool(reference, "optional", &mut out, &field)?;
                self.note_unknown(reference, &["name", "key", "optional"], &field);
                Ok(Some(json!({ kind: out })))
            }
            "fieldRef" | "resourceFieldRef" => {
                self.note(format!(
                    "env {name} comes from the pod's {kind}: Knative admits it only with the feature flag \
                     kubernetes.podspec-fieldref enabled (config-features)"
                ));
                Ok(None)
            }
            other => {
                self.note(format!(
                    "env {name} comes from {other}: Knative Serving takes env from secretKeyRef and configMapKeyRef"
                ));
                Ok(None)
            }
        }
    }

    fn env_from(&mut self, container: &Value) -> Result<()> {
        for (i, entry) in self
            .list(container.get("envFrom"), "envFrom")?
            .iter()
            .enumerate()
        {
            let field = format!("envFrom[{i}]");
            let entry = self.object(entry, &field)?;
            let kinds: Vec<&str> = ["secretRef", "configMapRef"]
                .into_iter()
                .filter(|k| entry.get(*k).is_some_and(|v| !v.is_null()))
                .collect();
            let [kind] = kinds[..] else {
                return Err(self.refuse(&field, "must name exactly one of secretRef, configMapRef"));
            };
            let ref_field = format!("{field}.{kind}");
            let reference = self.object(&entry[kind], &ref_field)?;
            let mut out_ref = Map::new();
            out_ref.insert(
                "name".into(),
                json!(self.object_name(reference, "name", &ref_field)?),
            );
            self.optional_bool(reference, "optional", &mut out_ref, &ref_field)?;
            self.note_unknown(reference, &["name", "optional"], &ref_field);
            let mut out = Map::new();
            out.insert(kind.into(), Value::Object(out_ref));
            match entry.get("prefix") {
                None | Some(Value::Null) => {}
                Some(Value::String(p))
                    if !p.contains('=') && p.chars().all(|c| c.is_ascii_graphic()) =>
                {
                    out.insert("prefix".into(), json!(p));
                }
                Some(p) => {
                    return Err(self.refuse(
                        &field,
                        format!("has prefix {p}: expected printable ASCII without '=' or spaces"),
                    ))
                }
            }
            self.note_unknown(entry, &["secretRef", "configMapRef", "prefix"], &field);
            self.read.additions.env_from.push(Value::Object(out));
        }
        Ok(())
    }

    fn volumes(&mut self, pod: &Value) -> Result<Vec<Volume>> {
        let mut volumes: Vec<Volume> = Vec::new();
        for (i, volume) in self.list(pod.get("volumes"), "volumes")?.iter().enumerate() {
            let field = format!("volumes[{i}]");
            let volume = self.object(volume, &field)?;
            let name = self.string(volume, "name", &field)?;
            if !super::is_dns_label(name) {
                return Err(self.refuse(
                    &field,
                    format!(
                        "has name '{}': expected a DNS label (lowercase letters, digits and '-', at most 63)",
                        name.escape_debug()
                    ),
                ));
            }
            if volumes.iter().any(|v| v.name == name) {
                return Err(self.refuse(&field, format!("names volume '{name}' a second time")));
            }
            let sources: Vec<(&String, &Value)> =
                volume.iter().filter(|(k, _)| *k != "name").collect();
            let [(kind, source)] = sources[..] else {
                let kinds: Vec<&str> = sources.iter().map(|(k, _)| k.as_str()).collect();
                return Err(self.refuse(
                    &field,
                    format!(
                        "(volume '{name}') must have exactly one source such as secret, configMap or projected, not [{}]",
                        kinds.join(", ")
                    ),
                ));
            };
            let field = format!("{field}.{kind}");
            let carried = match kind.as_str() {
                "secret" | "configMap" => self.secret_or_config_map(kind, source, &field).map(Ok)?,
                "projected" => self.projected(source, &field).map(Ok)?,
                "emptyDir" => self.empty_dir(source, &field).map(Ok)?,
                other => Err(match FLAGGED_VOLUMES.iter().find(|(k, _)| *k == other) {
                    Some((_, flag)) => format!(
                        "Knative admits {other} volumes only with the feature flag {flag} enabled (config-features)"
                    ),
                    None => format!(
                        "Knative Serving has no place for {other} volumes (it takes secret, configMap, projected and emptyDir)"
                    ),
                }),
            };
            volumes.push(Volume {
                name: name.to_string(),
                kind: kind.clone(),
                carried: carried.map(|source| json!({ "name": name, kind.as_str(): source })),
                mounted: false,
            });
        }
        Ok(volumes)
    }

    fn secret_or_config_map(&mut self, kind: &str, source: &Value, field: &str) -> Result<Value> {
        let name_key = if kind == "secret" {
            "secretName"
        } else {
            "name"
        };
        let source = self.object(source, field)?;
        let mut out = Map::new();
        out.insert(
            name_key.into(),
            json!(self.object_name(source, name_key, field)?),
        );
        self.items(source, &mut out, field)?;
        self.mode(source, "defaultMode", &mut out, field)?;
        self.optional_bool(source, "optional", &mut out, field)?;
        self.note_unknown(
            source,
            &[name_key, "items", "defaultMode", "optional"],
            field,
        );
        Ok(Value::Object(out))
    }

    /// `items`: the keys to project, each at a path inside the volume.
    fn items(
        &mut self,
        source: &Map<String, Value>,
        out: &mut Map<String, Value>,
        field: &str,
    ) -> Result<()> {
        if source.get("items").is_none_or(Value::is_null) {
            return Ok(());
        }
        let mut kept = Vec::new();
        for (i, item) in self
            .list(source.get("items"), &format!("{field}.items"))?
            .iter()
            .enumerate()
        {
            let field = format!("{field}.items[{i}]");
            let item = self.object(item, &field)?;
            let mut entry = Map::new();
            entry.insert("key".into(), json!(self.string(item, "key", &field)?));
            let path = self.string(item, "path", &field)?;
            entry.insert("path".into(), json!(self.relative_path(path, &field)?));
            self.mode(item, "mode", &mut entry, &field)?;
            self.note_unknown(item, &["key", "path", "mode"], &field);
            kept.push(Value::Object(entry));
        }
        out.insert("items".into(), Value::Array(kept));
        Ok(())
    }

    fn projected(&mut self, source: &Value, field: &str) -> Result<Value> {
        let source = self.object(source, field)?;
        let mut sources = Vec::new();
        for (i, projection) in self
            .list(source.get("sources"), &format!("{field}.sources"))?
            .iter()
            .enumerate()
        {
            let field = format!("{field}.sources[{i}]");
            let projection = self.object(projection, &field)?;
            let mut kinds = projection.iter();
            let (Some((kind, inner)), None) = (kinds.next(), kinds.next()) else {
                return Err(self.refuse(
                    &field,
                    "must have exactly one of secret, configMap, serviceAccountToken, downwardAPI",
                ));
            };
            let inner_field = format!("{field}.{kind}");
            let inner = self.object(inner, &inner_field)?;
            let mut out = Map::new();
            match kind.as_str() {
                "secret" | "configMap" => {
                    out.insert(
                        "name".into(),
                        json!(self.object_name(inner, "name", &inner_field)?),
                    );
                    self.items(inner, &mut out, &inner_field)?;
                    self.optional_bool(inner, "optional", &mut out, &inner_field)?;
                    self.note_unknown(inner, &["name", "items", "optional"], &inner_field);
                }
                "serviceAccountToken" => {
                    let path = self.string(inner, "path", &inner_field)?;
                    out.insert("path".into(), json!(self.relative_path(path, &inner_field)?));
                    if let Some(audience) = inner.get("audience").and_then(Value::as_str) {
                        out.insert("audience".into(), json!(audience));
                    }
                    if let Some(seconds) = inner.get("expirationSeconds").and_then(Value::as_u64) {
                        out.insert("expirationSeconds".into(), json!(seconds));
                    }
                    self.note_unknown(inner, &["path", "audience", "expirationSeconds"], &inner_field);
                }
                "downwardAPI" => {
                    out.insert("items".into(), Value::Array(self.downward_items(inner, &inner_field)?));
                }
                other => {
                    return Err(self.refuse(
                        &field,
                        format!("has {other}: expected one of secret, configMap, serviceAccountToken, downwardAPI"),
                    ))
                }
            }
            sources.push(json!({ kind.as_str(): out }));
        }
        let mut out = Map::new();
        out.insert("sources".into(), Value::Array(sources));
        self.mode(source, "defaultMode", &mut out, field)?;
        self.note_unknown(source, &["sources", "defaultMode"], field);
        Ok(Value::Object(out))
    }

    fn downward_items(&mut self, inner: &Map<String, Value>, field: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        for (i, item) in self
            .list(inner.get("items"), &format!("{field}.items"))?
            .iter()
            .enumerate()
        {
            let field = format!("{field}.items[{i}]");
            let item = self.object(item, &field)?;
            let mut out = Map::new();
            let path = self.string(item, "path", &field)?;
            out.insert("path".into(), json!(self.relative_path(path, &field)?));
            let refs: Vec<&str> = ["fieldRef", "resourceFieldRef"]
                .into_iter()
                .filter(|k| item.get(*k).is_some_and(Value::is_object))
                .collect();
            let [reference] = refs[..] else {
                return Err(self.refuse(
                    &field,
                    "must have exactly one of fieldRef, resourceFieldRef",
                ));
            };
            out.insert(reference.into(), item[reference].clone());
            self.mode(item, "mode", &mut out, &field)?;
            self.note_unknown(
                item,
                &["path", "fieldRef", "resourceFieldRef", "mode"],
                &field,
            );
            items.push(Value::Object(out));
        }
        Ok(items)
    }

    fn empty_dir(&mut self, source: &Value, field: &str) -> Result<Value> {
        let empty = Map::new();
        let source = match source {
            Value::Null => &empty,
            other => self.object(other, field)?,
        };
        let mut out = Map::new();
        match source.get("medium").and_then(Value::as_str) {
            None | Some("") => {}
            Some("Memory") => {
                out.insert("medium".into(), json!("Memory"));
            }
            Some(other) => {
                return Err(self.refuse(
                    field,
                    format!(
                        "has medium '{}': expected Memory or none",
                        other.escape_debug()
                    ),
                ))
            }
        }
        if let Some(limit) = source
            .get("sizeLimit")
            .filter(|v| v.is_string() || v.is_number())
        {
            out.insert("sizeLimit".into(), limit.clone());
        }
        self.note_unknown(source, &["medium", "sizeLimit"], field);
        Ok(Value::Object(out))
    }

    fn mounts(&mut self, container: &Value, mut volumes: Vec<Volume>) -> Result<()> {
        let mut paths = BTreeSet::new();
        for (i, mount) in self
            .list(container.get("volumeMounts"), "volumeMounts")?
            .iter()
            .enumerate()
        {
            let field = format!("volumeMounts[{i}]");
            let mount = self.object(mount, &field)?;
            let name = self.string(mount, "name", &field)?;
            let Some(volume) = volumes.iter_mut().find(|v| v.name == name) else {
                return Err(self.refuse(
                    &field,
                    format!(
                        "mounts volume '{}', which the pod's volumes do not define",
                        name.escape_debug()
                    ),
                ));
            };
            volume.mounted = true;
            let raw = self.string(mount, "mountPath", &field)?;
            let path = mount_path(raw).map_err(|problem| self.refuse(&field, problem))?;
            if !paths.insert(path.clone()) {
                return Err(self.refuse(&field, format!("mounts a second volume at {path}")));
            }
            let kind = volume.kind.clone();
            let dropped = volume.carried.as_ref().err().cloned();
            if let Some(reason) = &dropped {
                self.note(format!("volume '{name}' ({kind}) at {path}: {reason}"));
            }
            let mut out = Map::new();
            out.insert("name".into(), json!(name));
            out.insert("mountPath".into(), json!(path));
            // Knative admits secret, config map and projected volumes only read-only, as
            // Kubernetes mounts them anyway; an emptyDir is written to unless it says otherwise.
            let read_only = kind != "emptyDir" || mount.get("readOnly") == Some(&Value::Bool(true));
            if read_only {
                out.insert("readOnly".into(), json!(true));
            }
            if let Some(sub_path) = mount
                .get("subPath")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                out.insert(
                    "subPath".into(),
                    json!(self.relative_path(sub_path, &field)?),
                );
            }
            if mount.get("mountPropagation").is_some() {
                self.note(format!(
                    "{field}: mountPropagation of volume '{name}': Knative admits it only with the feature flag \
                     kubernetes.podspec-volumes-mount-propagation enabled (config-features)"
                ));
            }
            self.note_unknown(
                mount,
                &[
                    "name",
                    "mountPath",
                    "readOnly",
                    "subPath",
                    "mountPropagation",
                ],
                &field,
            );
            if dropped.is_none() {
                self.read.additions.volume_mounts.push(Value::Object(out));
            }
        }
        for volume in volumes {
            match volume.carried {
                Ok(value) if volume.mounted => self.read.additions.volumes.push(value),
                Ok(_) => self.note(format!(
                    "volume '{}' ({}): the function's container does not mount it, and Knative refuses volumes no container mounts",
                    volume.name, volume.kind
                )),
                Err(reason) if !volume.mounted => {
                    self.note(format!("volume '{}' ({}): {reason}", volume.name, volume.kind))
                }
                Err(_) => {}
            }
        }
        Ok(())
    }
}

/// A mount path made canonical (`.` and repeated `/` removed), or why it cannot be one:
/// relative, holding `..`, `:` or control characters, one Knative reserves, or one that
/// would cover or sit inside the function's code or the runtime server.
fn mount_path(path: &str) -> std::result::Result<String, String> {
    let shown = path.escape_debug();
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if !path.starts_with('/')
        || parts.contains(&"..")
        || path.contains(':')
        || path.chars().any(char::is_control)
    {
        return Err(format!(
            "has mountPath '{shown}': expected an absolute path such as /etc/config, without '..', ':' or control characters"
        ));
    }
    let clean = format!("/{}", parts.join("/"));
    if RESERVED_MOUNTS.contains(&clean.as_str()) {
        return Err(format!(
            "has mountPath '{shown}', which Knative reserves ({})",
            RESERVED_MOUNTS.join(", ")
        ));
    }
    for (dir, what) in [
        (CODE_DIR, "the function's code and dependencies live"),
        (SERVER_DIR, "the runtime server lives"),
    ] {
        let covers =
            |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
        if covers(&clean, dir) || covers(dir, &clean) {
            return Err(format!(
                "has mountPath '{shown}', which would cover or sit inside {dir}, where {what}: mount it elsewhere, e.g. /etc/NAME"
            ));
        }
    }
    Ok(clean)
}

/// A DNS-1123 subdomain: what Kubernetes accepts as a secret or config map name.
/// The keys of `object` that are not in `known`, in their order.
pub(crate) fn other_keys<'o>(object: &'o Map<String, Value>, known: &[&str]) -> Vec<&'o str> {
    object
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect()
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(super::is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<ReadPod> {
        let fields: Value = serde_norway::from_str(yaml).unwrap();
        PodAdditions::read(&fields, &fields, "f.yaml")
    }

    #[test]
    fn secrets_config_maps_and_volumes_become_what_knative_admits() {
        let read = read(
            r#"
env:
- {name: STAGE, value: prod}
- name: TOKEN
  valueFrom: {secretKeyRef: {name: api, key: token}}
- name: LEVEL
  valueFrom: {configMapKeyRef: {name: settings, key: log.level, optional: true}}
envFrom:
- secretRef: {name: db}
- {configMapRef: {name: common}, prefix: COMMON_}
volumeMounts:
- {name: api-vol, mountPath: /api}
- {name: settings, mountPath: /etc/settings/, readOnly: false}
- {name: bundle, mountPath: /var/run/bundle}
- {name: scratch, mountPath: /scratch}
volumes:
- {name: api-vol, secret: {secretName: api}}
- name: settings
  configMap: {name: settings, defaultMode: 0o440, items: [{key: app.json, path: conf/app.json}]}
- name: bundle
  projected:
    sources:
    - secret: {name: tls, items: [{key: tls.crt, path: tls.crt}]}
    - configMap: {name: ca}
    - serviceAccountToken: {path: token, audience: api, expirationSeconds: 3600}
- {name: scratch, emptyDir: {medium: Memory}}
"#,
        )
        .unwrap();
        assert_eq!(read.env, vec![("STAGE".to_string(), "prod".to_string())]);
        assert_eq!(read.not_carried, Vec::<String>::new());
        let expected: Value = serde_norway::from_str(
            r#"
env:
- name: TOKEN
  valueFrom: {secretKeyRef: {name: api, key: token}}
- name: LEVEL
  valueFrom: {configMapKeyRef: {name: settings, key: log.level, optional: true}}
envFrom:
- secretRef: {name: db}
- {configMapRef: {name: common}, prefix: COMMON_}
volumeMounts:
- {name: api-vol, mountPath: /api, readOnly: true}
- {name: settings, mountPath: /etc/settings, readOnly: true}
- {name: bundle, mountPath: /var/run/bundle, readOnly: true}
- {name: scratch, mountPath: /scratch}
volumes:
- {name: api-vol, secret: {secretName: api}}
- name: settings
  configMap: {name: settings, defaultMode: 288, items: [{key: app.json, path: conf/app.json}]}
- name: bundle
  projected:
    sources:
    - secret: {name: tls, items: [{key: tls.crt, path: tls.crt}]}
    - configMap: {name: ca}
    - serviceAccountToken: {path: token, audience: api, expirationSeconds: 3600}
- {name: scratch, emptyDir: {medium: Memory}}
"#,
        )
        .unwrap();
        assert_eq!(read.additions.to_value(), expected);
    }

    #[test]
    fn kubeless_secrets_are_mounted_at_their_name_read_only() {
        let mut fields = Value::Null;
        add_kubeless_secret(&mut fields, "api");
        add_kubeless_secret(&mut fields, "db-creds");
        let read = PodAdditions::read(&fields, &fields, "--secrets").unwrap();
        assert_eq!(
            read.additions.to_value(),
            json!({
                "volumeMounts": [
                    {"name": "api-vol", "mountPath": "/api", "readOnly": true},
                    {"name": "db-creds-vol", "mountPath": "/db-creds", "readOnly": true},
                ],
                "volumes": [
                    {"name": "api-vol", "secret": {"secretName": "api"}},
                    {"name": "db-creds-vol", "secret": {"secretName": "db-creds"}},
                ],
            })
        );
        let mut fields = Value::Null;
        add_kubeless_secret(&mut fields, "kubeless");
        let err = PodAdditions::read(&fields, &fields, "--secrets")
            .unwrap_err()
            .to_string();
        assert!(err.contains("would cover or sit inside /kubeless"), "{err}");
    }

    #[test]
    fn what_has_no_place_is_left_out_naming_the_feature_flag() {
        let read = read(
            r#"
env:
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- {name: PORT, value: "9000"}
volumeMounts:
- {name: host, mountPath: /host}
- {name: data, mountPath: /data, mountPropagation: HostToContainer}
- {name: nfs, mountPath: /nfs}
- {name: cache, mountPath: /cache, subPathExpr: $(POD)}
volumes:
- {name: host, hostPath: {path: /var/lib}}
- {name: data, persistentVolumeClaim: {claimName: data}}
- {name: nfs, nfs: {server: nfs.local, path: /}}
- {name: cache, emptyDir: {}}
- {name: unused, secret: {secretName: unused}}
"#,
        )
        .unwrap();
        assert_eq!(
            read.not_carried,
            [
                "env POD_IP comes from the pod's fieldRef: Knative admits it only with the feature flag \
                 kubernetes.podspec-fieldref enabled (config-features)",
                "env PORT: Knative sets PORT in every revision itself",
                "volume 'host' (hostPath) at /host: Knative admits hostPath volumes only with the feature \
                 flag kubernetes.podspec-volumes-hostpath enabled (config-features)",
                "volume 'data' (persistentVolumeClaim) at /data: Knative admits persistentVolumeClaim volumes \
                 only with the feature flag kubernetes.podspec-persistent-volume-claim (and \
                 kubernetes.podspec-persistent-volume-write to write) enabled (config-features)",
                "volumeMounts[1]: mountPropagation of volume 'data': Knative admits it only with the feature \
                 flag kubernetes.podspec-volumes-mount-propagation enabled (config-features)",
                "volume 'nfs' (nfs) at /nfs: Knative Serving has no place for nfs volumes (it takes secret, \
                 configMap, projected and emptyDir)",
                "volumeMounts[3]: subPathExpr left out: Knative Serving takes only name, mountPath, readOnly, \
                 subPath, mountPropagation there",
                "volume 'unused' (secret): the function's container does not mount it, and Knative refuses \
                 volumes no container mounts",
            ]
        );
        assert_eq!(
            read.additions.to_value(),
            json!({
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                "volumes": [{"name": "cache", "emptyDir": {}}],
            })
        );
    }

    #[test]
    fn malformed_names_and_paths_are_refused_saying_what_is_accepted() {
        let secret = "volumes: [{name: s, secret: {secretName: s}}]\n";
        for (yaml, expected) in [
            (format!("volumeMounts: [{{name: s, mountPath: etc/s}}]\n{secret}"), "expected an absolute path"),
            (format!("volumeMounts: [{{name: s, mountPath: /etc/../kubeless}}]\n{secret}"), "without '..'"),
            (format!("volumeMounts: [{{name: s, mountPath: '/a:b'}}]\n{secret}"), "without '..', ':'"),
            (format!("volumeMounts: [{{name: s, mountPath: /kubeless}}]\n{secret}"), "cover or sit inside /kubeless"),
            (format!("volumeMounts: [{{name: s, mountPath: /kubeless/node_modules}}]\n{secret}"), "cover or sit inside /kubeless"),
            (format!("volumeMounts: [{{name: s, mountPath: /opt}}]\n{secret}"), "cover or sit inside /opt/fnbuild/runtime"),
            (format!("volumeMounts: [{{name: s, mountPath: //./}}]\n{secret}"), "which Knative reserves (/, /dev, /dev/log)"),
            (format!("volumeMounts: [{{name: s, mountPath: /dev/log/}}]\n{secret}"), "which Knative reserves"),
            (
                format!("volumeMounts: [{{name: s, mountPath: /s}}, {{name: s, mountPath: /s/}}]\n{secret}"),
                "volumeMounts[1] mounts a second volume at /s",
            ),
            (format!("volumeMounts: [{{name: t, mountPath: /t}}]\n{secret}"), "mounts volume 't', which the pod's volumes do not define"),
            (format!("volumeMounts: [{{name: s, mountPath: /s, subPath: ../x}}]\n{secret}"), "expected a relative path inside the volume"),
            ("volumes: [{name: Bad_Name, secret: {secretName: s}}]".into(), "has name 'Bad_Name': expected a DNS label"),
            ("volumes: [{name: s, secret: {secretName: s}}, {name: s, configMap: {name: c}}]".into(), "names volume 's' a second time"),
            ("volumes: [{name: s, secret: {secretName: s}, configMap: {name: c}}]".into(), "must have exactly one source"),
            ("volumes: [{name: s, secret: {secretName: ../s}}]".into(), "is not a Kubernetes object name"),
            ("volumes: [{name: s, secret: {secretName: s, items: [{key: k, path: ../../etc/passwd}]}}]".into(), "volumes[0].secret.items[0] has path '../../etc/passwd'"),
            ("volumes: [{name: s, configMap: {name: c, defaultMode: 4095}}]".into(), "expected a file mode from 0 to 0777"),
            ("env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}, configMapKeyRef: {name: c, key: k}}}]".into(), "exactly one of secretKeyRef, configMapKeyRef"),
            ("env: [{name: A, valueFrom: {secretKeyRef: {name: s}}}]".into(), "env[0].valueFrom.secretKeyRef has no key"),
            ("env: [{name: A, value: x}, {name: A, value: y}]".into(), "env[1] sets A a second time"),
            ("env: [{name: 'A=B', value: x}]".into(), "without '='"),
            ("envFrom: [{prefix: X_}]".into(), "envFrom[0] must name exactly one of secretRef, configMapRef"),
        ] {
            let err = read(&yaml).unwrap_err();
            assert!(err.is_usage(), "{err}");
            let err = err.to_string();
            assert!(err.starts_with("f.yaml: "), "{err}");
            assert!(err.contains(expected), "{yaml}: expected '{expected}' in: {err}");
        }
    }
}
