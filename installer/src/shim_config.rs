// SPDX-License-Identifier: Apache-2.0
//! The shim's config file (`/etc/vmpod/config.toml`): written pointing at
//! the installed kernel, initrd and binaries, or — where an admin already
//! has one — edited as TOML so that only those four keys change and every
//! other setting and comment stays.

use toml_edit::DocumentMut;

use crate::containerd::set_if_changed;

use crate::layout;

/// The shim's config file on the node: where the shim reads it unless
/// `VMPOD_CONFIG` says otherwise.
pub const CONFIG_PATH: &str = vmpod_shim::config::DEFAULT_CONFIG_PATH;

/// The file written where there was none.
const HEADER: &str = "\
# vmpod's shim config (docs/shim.md, \"Configuration\"), written by
# `vmpod install`: the installed guest kernel, agent initrd, VMM and jailer.
# Other keys keep their defaults; `vmpod uninstall` removes this file.
";

/// The existing config is not TOML.
#[derive(Debug, thiserror::Error)]
#[error("vmpod config {path} line {line}: {message}")]
pub struct ShimConfigError {
    /// The file (as the node sees it).
    pub path: String,
    /// Where (1-based).
    pub line: usize,
    /// What the parser said.
    pub message: String,
}

/// The config's new text: `existing` (`None`: there is none) with `kernel`,
/// `initrd`, `vmm` and `jailer` pointing at the installed files. The same
/// text comes back when they already do.
///
/// # Errors
/// `existing` is not TOML.
pub fn configure(existing: Option<&str>) -> Result<String, ShimConfigError> {
    let text = existing.unwrap_or("");
    let mut doc: DocumentMut = text.parse().map_err(|err: toml_edit::TomlError| {
        let offset = err.span().map_or(0, |span| span.start);
        ShimConfigError {
            path: CONFIG_PATH.to_owned(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            message: err.message().replace('\n', " "),
        }
    })?;
    let keys = [
        ("kernel", layout::kernel()),
        ("initrd", layout::initrd()),
        ("vmm", layout::binary("vmpod-vm")),
        ("jailer", layout::binary("vmpod-jailer")),
    ];
    for (key, path) in keys {
        set_if_changed(doc.as_table_mut(), key, path.display().to_string().into());
    }
    Ok(match existing {
        Some(_) => doc.to_string(),
        None => format!("{HEADER}{doc}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_new_config_points_at_the_installed_files() {
        let text = configure(None).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        let value: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            value["kernel"].as_str(),
            Some("/usr/local/share/vmpod/vmlinux")
        );
        assert_eq!(
            value["initrd"].as_str(),
            Some("/usr/local/share/vmpod/vmpod-agent-initrd.cpio")
        );
        assert_eq!(value["vmm"].as_str(), Some("/usr/local/bin/vmpod-vm"));
        assert_eq!(
            value["jailer"].as_str(),
            Some("/usr/local/bin/vmpod-jailer")
        );
        assert_eq!(value.len(), 4);
        assert_eq!(configure(Some(&text)).unwrap(), text);
    }

    #[test]
    fn test_an_admins_config_keeps_its_other_keys() {
        let admin =
            "# ours\nkernel = \"/old/vmlinux\"\nmemory = 512 # more\nstate-dir = \"/run/v\"\n";
        let text = configure(Some(admin)).unwrap();
        assert!(text.starts_with("# ours\n"), "{text}");
        assert!(text.contains("memory = 512 # more\n"), "{text}");
        let value: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            value["kernel"].as_str(),
            Some("/usr/local/share/vmpod/vmlinux")
        );
        assert_eq!(value["state-dir"].as_str(), Some("/run/v"));
        let err = configure(Some("kernel = \n")).unwrap_err().to_string();
        assert!(
            err.starts_with("vmpod config /etc/vmpod/config.toml line 1:"),
            "{err}"
        );
    }
}
