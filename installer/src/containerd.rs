// SPDX-License-Identifier: Apache-2.0
//! Registering vmpod as a runtime handler of containerd's CRI plugin, edited
//! as TOML so that the file keeps its comments and layout.
//!
//! - `version = 2` (containerd 1.6 and 1.7): the runtime's table is added to
//!   (or brought up to date in) the main `config.toml`.
//! - `version = 3` (containerd 2.x): the table goes into a drop-in file of
//!   vmpod's own, which the main config's `imports` lists.
//! - No config file, or one without any setting: a `version = 2` config
//!   with the table, which containerd 2.x also reads (it migrates version 2
//!   configs when it loads them).
//!
//! Any other version, or a config without `version` that has settings (a
//! version 1 config), is refused rather than guessed at.
//!
//! A config's `runtimes` table replaces containerd's default one (runc)
//! rather than adding to it, so where the config leaves runc to the
//! default, runc's table is written beside vmpod's.

use toml_edit::{Array, DocumentMut, Item, Table, Value};

use vmpod_shim::sizing::POD_ANNOTATIONS;

/// containerd's main config file on the node.
pub const CONFIG_PATH: &str = "/etc/containerd/config.toml";
/// vmpod's drop-in for containerd 2.x, imported by the main config.
pub const DROP_IN_PATH: &str = "/etc/containerd/conf.d/vmpod.toml";
/// The CRI runtime handler name: a RuntimeClass's `handler`.
pub const HANDLER: &str = "vmpod";
/// The shim's runtime name; containerd runs `containerd-shim-vmpod-v2`.
pub const RUNTIME_TYPE: &str = "io.containerd.vmpod.v2";

/// The CRI plugin's runtimes, by config version.
const V2_RUNTIMES: [&str; 5] = [
    "plugins",
    "io.containerd.grpc.v1.cri",
    "containerd",
    "runtimes",
    HANDLER,
];
const V3_RUNTIMES: [&str; 5] = [
    "plugins",
    "io.containerd.cri.v1.runtime",
    "containerd",
    "runtimes",
    HANDLER,
];

/// A containerd config vmpod cannot register with.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdConfigError {
    /// Not valid TOML.
    #[error("containerd config {path} line {line}: {message}")]
    Parse {
        /// The file (as the node sees it).
        path: String,
        /// Where (1-based).
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A `version` other than 2 or 3.
    #[error("containerd config {path}: version {version} is not supported (2: containerd 1.6/1.7, 3: containerd 2.x)")]
    Version {
        /// The file.
        path: String,
        /// The value as written.
        version: String,
    },
    /// Settings but no `version`: version 1, which vmpod does not edit.
    #[error("containerd config {path} has no `version` (a version 1 config): convert it to version 2 first")]
    NoVersion {
        /// The file.
        path: String,
    },
    /// A key vmpod must add beneath is not a table, or `imports` is not an
    /// array of strings.
    #[error("containerd config {path}: {key} is not {expected}")]
    Shape {
        /// The file.
        path: String,
        /// The dotted key.
        key: String,
        /// What it should be.
        expected: &'static str,
    },
}

/// A config's format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// containerd 1.6 and 1.7.
    V2,
    /// containerd 2.x.
    V3,
}

/// What registering vmpod makes of containerd's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The config's version.
    pub version: Version,
    /// The main config's new text.
    pub config: String,
    /// The drop-in's text (version 3 only).
    pub drop_in: Option<String>,
}

/// The header of a config file written from nothing.
const NEW_CONFIG_HEADER: &str = "\
# containerd's config, written by `vmpod install` where there was none:
# containerd's defaults and vmpod's runtime. `vmpod uninstall` removes it.
";
/// The header of the drop-in.
const DROP_IN_HEADER: &str = "\
# vmpod's runtime for containerd's CRI plugin, written by `vmpod install`
# and imported by /etc/containerd/config.toml; `vmpod uninstall` removes it.
";

/// Registers vmpod in the config `existing` (`None`: there is no file);
/// `path` names the file in errors. Registering an already registered
/// config gives the same text back.
///
/// # Errors
/// The config is not TOML, has an unsupported version, or a key in the way.
pub fn register(path: &str, existing: Option<&str>) -> Result<Registration, ContainerdConfigError> {
    let mut doc = match existing {
        Some(text) => parse(path, text)?,
        None => NEW_CONFIG_HEADER.parse().expect("the header is TOML"),
    };
    let version = version_of(path, &mut doc)?;
    match version {
        Version::V2 => {
            if lacks_default_runc(doc.as_table(), &V2_RUNTIMES) {
                add_runc(path, doc.as_table_mut(), &V2_RUNTIMES)?;
            }
            add_runtime(path, doc.as_table_mut(), &V2_RUNTIMES)?;
            Ok(Registration {
                version,
                config: doc.to_string(),
                drop_in: None,
            })
        }
        Version::V3 => {
            add_import(path, doc.as_table_mut())?;
            let mut drop_in: DocumentMut = DROP_IN_HEADER.parse().expect("the header is TOML");
            insert_version(&mut drop_in, 3);
            if lacks_default_runc(doc.as_table(), &V3_RUNTIMES) {
                add_runc(DROP_IN_PATH, drop_in.as_table_mut(), &V3_RUNTIMES)?;
            }
            add_runtime(DROP_IN_PATH, drop_in.as_table_mut(), &V3_RUNTIMES)?;
            Ok(Registration {
                version,
                config: doc.to_string(),
                drop_in: Some(drop_in.to_string()),
            })
        }
    }
}

/// The config `text` without vmpod's registration: for uninstalling from a
/// config that changed after install, keeping the other changes. A config
/// without it comes back as it was.
///
/// # Errors
/// As [`register`].
pub fn unregister(path: &str, text: &str) -> Result<String, ContainerdConfigError> {
    let mut doc = parse(path, text)?;
    match version_of(path, &mut doc)? {
        Version::V2 => {
            let mut table = Some(doc.as_table_mut() as &mut dyn toml_edit::TableLike);
            for key in &V2_RUNTIMES[..V2_RUNTIMES.len() - 1] {
                table = table
                    .and_then(|t| t.get_mut(key))
                    .and_then(Item::as_table_like_mut);
            }
            if let Some(runtimes) = table {
                runtimes.remove(HANDLER);
            }
        }
        Version::V3 => {
            if let Some(imports) = doc.get_mut("imports").and_then(Item::as_array_mut) {
                imports.retain(|import| import.as_str() != Some(DROP_IN_PATH));
            }
        }
    }
    Ok(doc.to_string())
}

/// Whether vmpod is registered in the config `text` (for version 3, in the
/// main config's `imports`; the drop-in is checked as a file).
///
/// # Errors
/// As [`register`].
pub fn registered(path: &str, text: &str) -> Result<(Version, bool), ContainerdConfigError> {
    let mut doc = parse(path, text)?;
    let version = version_of(path, &mut doc)?;
    let found = match version {
        Version::V2 => runtime_type(doc.as_table(), &V2_RUNTIMES) == Some(RUNTIME_TYPE),
        Version::V3 => doc
            .get("imports")
            .and_then(Item::as_array)
            .is_some_and(|imports| imports.iter().any(|i| i.as_str() == Some(DROP_IN_PATH))),
    };
    Ok((version, found))
}

/// Whether the drop-in `text` registers vmpod.
pub fn drop_in_registers(text: &str) -> bool {
    text.parse::<DocumentMut>()
        .is_ok_and(|doc| runtime_type(doc.as_table(), &V3_RUNTIMES) == Some(RUNTIME_TYPE))
}

fn runtime_type<'a>(root: &'a Table, keys: &[&str]) -> Option<&'a str> {
    let mut item = root.get(keys[0])?;
    for key in &keys[1..] {
        item = item.as_table_like()?.get(key)?;
    }
    item.as_table_like()?.get("runtime_type")?.as_str()
}

fn parse(path: &str, text: &str) -> Result<DocumentMut, ContainerdConfigError> {
    text.parse().map_err(|err: toml_edit::TomlError| {
        let offset = err.span().map_or(0, |span| span.start);
        ContainerdConfigError::Parse {
            path: path.to_owned(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            message: err.message().replace('\n', " "),
        }
    })
}

/// The config's version; a config with no setting at all becomes version 2.
fn version_of(path: &str, doc: &mut DocumentMut) -> Result<Version, ContainerdConfigError> {
    match doc.get("version") {
        None if doc.as_table().is_empty() => {
            insert_version(doc, 2);
            Ok(Version::V2)
        }
        None => Err(ContainerdConfigError::NoVersion {
            path: path.to_owned(),
        }),
        Some(item) => match item.as_integer() {
            Some(2) => Ok(Version::V2),
            Some(3) => Ok(Version::V3),
            _ => Err(ContainerdConfigError::Version {
                path: path.to_owned(),
                version: item.to_string().trim().to_owned(),
            }),
        },
    }
}

/// Sets `version` in a document with no setting, below its comments
/// (which its parser keeps as trailing text).
fn insert_version(doc: &mut DocumentMut, version: i64) {
    let comments = doc.trailing().as_str().unwrap_or("").to_owned();
    doc.set_trailing("");
    doc.insert("version", toml_edit::value(version));
    if let Some(mut key) = doc.as_table_mut().key_mut("version") {
        key.leaf_decor_mut().set_prefix(comments);
    }
}

/// The table at `keys` beneath `root`, made (as implicit tables, without a
/// header of their own) where missing.
fn table_at<'t>(
    path: &str,
    root: &'t mut Table,
    keys: &[&str],
) -> Result<&'t mut Table, ContainerdConfigError> {
    let mut table = root;
    for (depth, key) in keys.iter().enumerate() {
        let item = table.entry(key).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        table = item
            .as_table_mut()
            .ok_or_else(|| ContainerdConfigError::Shape {
                path: path.to_owned(),
                key: keys[..=depth].join("."),
                expected: "a table",
            })?;
    }
    Ok(table)
}

/// Adds (or brings up to date) vmpod's runtime table at `keys`.
fn add_runtime(path: &str, root: &mut Table, keys: &[&str]) -> Result<(), ContainerdConfigError> {
    let table = table_at(path, root, keys)?;
    table.set_implicit(false);
    set_if_changed(table, "runtime_type", RUNTIME_TYPE.into());
    set_if_changed(
        table,
        "pod_annotations",
        Array::from_iter(POD_ANNOTATIONS).into(),
    );
    // A privileged pod's spec lists the host's devices, which do not exist
    // in the guest: leave them out, as Kata does.
    set_if_changed(table, "privileged_without_host_devices", true.into());
    Ok(())
}

/// Whether the config `config` leaves the default runtime, runc, to
/// containerd's defaults. A config's `runtimes` table replaces the default
/// one instead of adding to it, so once vmpod's table is there runc would
/// be gone and the CRI plugin would refuse to start (`no corresponding
/// runtime configured in containerd.runtimes for default_runtime_name`).
fn lacks_default_runc(config: &Table, keys: &[&str]) -> bool {
    let lookup = |keys: &[&str]| -> Option<&dyn toml_edit::TableLike> {
        let mut table: &dyn toml_edit::TableLike = config;
        for key in keys {
            table = table.get(key)?.as_table_like()?;
        }
        Some(table)
    };
    let default = lookup(&keys[..3])
        .and_then(|containerd| containerd.get("default_runtime_name"))
        .and_then(Item::as_str)
        .unwrap_or("runc");
    default == "runc" && lookup(&keys[..4]).is_none_or(|runtimes| runtimes.get("runc").is_none())
}

/// Adds runc's table as containerd's default has it, beside `keys`.
fn add_runc(path: &str, root: &mut Table, keys: &[&str]) -> Result<(), ContainerdConfigError> {
    let mut runc_keys = keys[..4].to_vec();
    runc_keys.push("runc");
    let table = table_at(path, root, &runc_keys)?;
    table.set_implicit(false);
    set_if_changed(table, "runtime_type", "io.containerd.runc.v2".into());
    Ok(())
}

/// Sets `key` unless it already holds `value` (so that a re-install leaves
/// the text as it was), keeping the key's comments and spacing.
pub(crate) fn set_if_changed(table: &mut Table, key: &str, mut value: Value) {
    match table.get_mut(key) {
        Some(Item::Value(current)) if same(current, &value) => {}
        Some(item) => {
            if let Some(current) = item.as_value() {
                *value.decor_mut() = current.decor().clone();
            }
            *item = Item::Value(value);
        }
        None => {
            table.insert(key, Item::Value(value));
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Boolean(a), Value::Boolean(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(a, b)| same(a, b))
        }
        _ => false,
    }
}

/// Adds the drop-in to the main config's `imports` unless it is listed.
fn add_import(path: &str, root: &mut Table) -> Result<(), ContainerdConfigError> {
    let shape = || ContainerdConfigError::Shape {
        path: path.to_owned(),
        key: "imports".to_owned(),
        expected: "an array of strings",
    };
    let imports = root
        .entry("imports")
        .or_insert_with(|| toml_edit::value(Array::new()))
        .as_array_mut()
        .ok_or_else(shape)?;
    if imports.iter().any(|import| import.as_str().is_none()) {
        return Err(shape());
    }
    if !imports
        .iter()
        .any(|import| import.as_str() == Some(DROP_IN_PATH))
    {
        imports.push(DROP_IN_PATH);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
