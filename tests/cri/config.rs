// SPDX-License-Identifier: Apache-2.0
//! What the CRI harness configures: containerd's CRI plugin (the runtime
//! handlers, the pause image, CNI) and the CNI network (a bridge with
//! host-local addresses from a documentation prefix).

use std::path::Path;

use serde_json::json;

use super::{BRIDGE, CNI_BIN_DIR, NETWORK_NAME, POD_GATEWAY, POD_SUBNET};
use crate::containerd::{CRI_PLUGIN, RUNTIME};

/// The TOML tables of containerd 1.6's CRI plugin: handler `vmpod` (this
/// build's shim) and `runc` (containerd's own, for comparison, and the
/// default), `sandbox_image` = `pause_image`, CNI from Debian's plugins
/// with its configuration in `cni_conf_dir`; the streaming server on the
/// loopback of containerd's network namespace. `restrict_oom_score_adj`:
/// containers get no lower an OOM score than containerd's own (the
/// sandbox's -998 needs CAP_SYS_RESOURCE, which a host in a container may
/// lack).
pub fn plugin_toml(pause_image: &str, cni_conf_dir: &Path) -> Result<String, String> {
    let conf_dir = cni_conf_dir
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", cni_conf_dir.display()))?;
    let cri = format!("plugins.\"{CRI_PLUGIN}\"");
    Ok(format!(
        "[{cri}]\n\
         \x20 sandbox_image = {pause_image:?}\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"10010\"\n\
         \x20 enable_selinux = false\n\
         \x20 disable_apparmor = true\n\
         \x20 restrict_oom_score_adj = true\n\
         \n\
         [{cri}.containerd]\n\
         \x20 snapshotter = \"overlayfs\"\n\
         \x20 default_runtime_name = \"runc\"\n\
         \n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [{cri}.containerd.runtimes.vmpod]\n\
         \x20 runtime_type = {RUNTIME:?}\n\
         \n\
         [{cri}.cni]\n\
         \x20 bin_dir = {CNI_BIN_DIR:?}\n\
         \x20 conf_dir = {conf_dir:?}\n\
         \x20 max_conf_num = 1\n"
    ))
}

/// The CNI network list: a bridge that is the pods' gateway, addresses
/// from [`POD_SUBNET`] by host-local (its leases in `ipam_dir`, not the
/// host's `/var/lib/cni`), no masquerading (nothing leaves the machine).
pub fn cni_conflist(ipam_dir: &Path) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            }
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_plugin_toml_names_both_handlers_and_the_pause_image() {
        let toml = plugin_toml("docker.io/x/pause:1", Path::new("/tmp/cni")).unwrap();
        assert!(toml.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vmpod]"));
        assert!(toml.contains("runtime_type = \"io.containerd.vmpod.v2\""));
        assert!(toml.contains("runtime_type = \"io.containerd.runc.v2\""));
        assert!(toml.contains("sandbox_image = \"docker.io/x/pause:1\""));
        assert!(toml.contains("conf_dir = \"/tmp/cni\""));
    }

    #[test]
    fn test_cni_conflist_keeps_leases_in_the_given_directory() {
        let list: serde_json::Value =
            serde_json::from_str(&cni_conflist(Path::new("/tmp/ipam"))).unwrap();
        let ipam = &list["plugins"][0]["ipam"];
        assert_eq!(ipam["dataDir"], "/tmp/ipam");
        assert_eq!(ipam["ranges"][0][0]["subnet"], POD_SUBNET);
    }
}
