// SPDX-License-Identifier: Apache-2.0
//! The config edits on their own: what each kind of config becomes.

use super::*;

const V2: &str = r#"# containerd 1.6's config, as an admin left it.
version = 2

[plugins]
  # CNI as Debian ships it.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"#;

const V3: &str = r#"# containerd 2.x
version = 3
imports = ["/etc/containerd/other.toml"]

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
"#;

fn err(existing: &str) -> String {
    vmpod_sys::error::chain(&register("/etc/containerd/config.toml", Some(existing)).unwrap_err())
}

#[test]
fn test_a_version_2_config_gains_the_runtime_and_keeps_its_text() {
    let reg = register("c", Some(V2)).unwrap();
    assert_eq!(reg.version, Version::V2);
    assert_eq!(reg.drop_in, None);
    assert!(reg.config.starts_with(V2), "{}", reg.config);
    let added = &reg.config[V2.len()..];
    assert!(
        added.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vmpod]"),
        "{added}"
    );
    assert!(
        added.contains("runtime_type = \"io.containerd.vmpod.v2\""),
        "{added}"
    );
    assert!(
        added.contains(r#"pod_annotations = ["io.vmpod.vm.vcpus", "io.vmpod.vm.memory"]"#),
        "{added}"
    );
    assert!(
        added.contains("privileged_without_host_devices = true"),
        "{added}"
    );
    // Parsed back, the runtime is there and runc is untouched.
    assert_eq!(registered("c", &reg.config).unwrap(), (Version::V2, true));
    let value: toml::Table = toml::from_str(&reg.config).unwrap();
    let runtimes = &value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        runtimes["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    // Again: the same text.
    assert_eq!(register("c", Some(&reg.config)).unwrap(), reg);
}

#[test]
fn test_an_outdated_vmpod_table_is_brought_up_to_date_keeping_other_keys() {
    let old = format!(
        "{V2}  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vmpod]\n    runtime_type = \"io.containerd.old.v1\"\n    snapshotter = \"overlayfs\"\n"
    );
    let reg = register("c", Some(&old)).unwrap();
    let value: toml::Table = toml::from_str(&reg.config).unwrap();
    let vmpod = &value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["vmpod"];
    assert_eq!(vmpod["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert_eq!(vmpod["snapshotter"].as_str(), Some("overlayfs"));
    assert_eq!(
        reg.config.matches("runtimes.vmpod]").count(),
        1,
        "{}",
        reg.config
    );
}

#[test]
fn test_a_version_3_config_imports_a_drop_in() {
    let reg = register("c", Some(V3)).unwrap();
    assert_eq!(reg.version, Version::V3);
    assert_eq!(
        reg.config,
        V3.replace(
            r#"imports = ["/etc/containerd/other.toml"]"#,
            r#"imports = ["/etc/containerd/other.toml", "/etc/containerd/conf.d/vmpod.toml"]"#
        )
    );
    let drop_in = reg.drop_in.clone().unwrap();
    assert!(drop_in_registers(&drop_in), "{drop_in}");
    let value: toml::Table = toml::from_str(&drop_in).unwrap();
    assert_eq!(value["version"].as_integer(), Some(3));
    assert_eq!(registered("c", &reg.config).unwrap(), (Version::V3, true));
    assert_eq!(registered("c", V3).unwrap(), (Version::V3, false));
    assert_eq!(register("c", Some(&reg.config)).unwrap(), reg);
    // Without imports, the key is added before the first table.
    let reg = register("c", Some("version = 3\n[plugins.x]\n  a = 1\n")).unwrap();
    assert_eq!(
        reg.config,
        "version = 3\nimports = [\"/etc/containerd/conf.d/vmpod.toml\"]\n[plugins.x]\n  a = 1\n"
    );
}

#[test]
fn test_no_config_and_a_config_of_comments_become_version_2() {
    for existing in [None, Some("# nothing set here\n")] {
        let reg = register("c", existing).unwrap();
        assert_eq!(reg.version, Version::V2);
        assert!(reg.config.starts_with('#'), "{}", reg.config);
        assert!(reg.config.contains("version = 2\n"), "{}", reg.config);
        assert_eq!(registered("c", &reg.config).unwrap(), (Version::V2, true));
    }
}

#[test]
fn test_configs_vmpod_cannot_register_with_fail_in_one_line() {
    let cases = [
        ("version = 4\n", "version 4 is not supported"),
        ("version = \"2\"\n", "version \"2\" is not supported"),
        (
            "disabled_plugins = [\"cri\"]\n",
            "has no `version` (a version 1 config)",
        ),
        ("version = 2\n[plugins\n", "line 2:"),
        ("version = 2\nplugins = 1\n", "plugins is not a table"),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\ncontainerd = \"x\"\n",
            "plugins.io.containerd.grpc.v1.cri.containerd is not a table",
        ),
        (
            "version = 3\nimports = \"x\"\n",
            "imports is not an array of strings",
        ),
        (
            "version = 3\nimports = [1]\n",
            "imports is not an array of strings",
        ),
    ];
    for (text, expected) in cases {
        let message = err(text);
        assert!(
            message.starts_with("containerd config /etc/containerd/config.toml"),
            "{message}"
        );
        assert!(message.contains(expected), "{text:?}: {message}");
        assert!(!message.contains('\n'), "{text:?}: {message}");
    }
}

#[test]
fn test_unregistering_a_changed_config_keeps_the_other_changes() {
    let reg = register("c", Some(V2)).unwrap();
    let changed = format!("{}  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.other]\n    runtime_type = \"io.containerd.other.v2\"\n", reg.config);
    let text = unregister("c", &changed).unwrap();
    assert_eq!(registered("c", &text).unwrap(), (Version::V2, false));
    assert!(text.contains("runtimes.other]"), "{text}");
    assert!(text.contains("runtimes.runc]"), "{text}");
    assert_eq!(unregister("c", V2).unwrap(), V2);
    let reg = register("c", Some(V3)).unwrap();
    assert_eq!(unregister("c", &reg.config).unwrap(), V3);
}

/// containerd's runtimes table replaces its default (runc) instead of
/// adding to it: runc's table comes with vmpod's where the config had none.
#[test]
fn test_runc_stays_the_default_runtime() {
    let runc = |text: &str, keys: &[&str]| -> Option<String> {
        let value: toml::Table = toml::from_str(text).unwrap();
        let mut item = toml::Value::Table(value);
        for key in keys {
            item = item.get(key)?.clone();
        }
        item.get("runc")?
            .get("runtime_type")?
            .as_str()
            .map(str::to_owned)
    };
    let v2 = [
        "plugins",
        "io.containerd.grpc.v1.cri",
        "containerd",
        "runtimes",
    ];
    let v3 = [
        "plugins",
        "io.containerd.cri.v1.runtime",
        "containerd",
        "runtimes",
    ];
    let fresh = register("c", None).unwrap();
    assert_eq!(
        runc(&fresh.config, &v2).as_deref(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(register("c", Some(&fresh.config)).unwrap(), fresh);
    let reg = register("c", Some(V3)).unwrap();
    assert_eq!(
        runc(&reg.drop_in.unwrap(), &v3).as_deref(),
        Some("io.containerd.runc.v2")
    );
    // The admin's runc is left alone, and so is another default runtime.
    let reg = register("c", Some(V2)).unwrap();
    assert_eq!(
        reg.config.matches("runtimes.runc]").count(),
        1,
        "{}",
        reg.config
    );
    let crun = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndefault_runtime_name = \"crun\"\n";
    let reg = register("c", Some(crun)).unwrap();
    assert_eq!(runc(&reg.config, &v2), None, "{}", reg.config);
}
