// SPDX-License-Identifier: Apache-2.0
//! The container's root file system: a directory bound (`bind`) or an
//! overlay, mounted at the container's root directory in the agent.

use std::ffi::CString;
use std::path::Path;

use vmpod_agent_api::messages::Mount;

use super::mount_options::MountOptions;
use super::ContainerError;

/// Mounts the container's root file system at `target`.
pub(super) fn mount(rootfs: &Mount, target: &Path) -> Result<(), ContainerError> {
    let bad = |message: String| ContainerError::Rootfs(message);
    let options = MountOptions::parse(&rootfs.options);
    let (source, fstype, flags) = match rootfs.fstype.as_str() {
        "bind" | "" => {
            let source = Path::new(&rootfs.source);
            if !source.is_absolute() {
                return Err(bad(format!(
                    "source {:?} is not an absolute path",
                    rootfs.source
                )));
            }
            if !source.is_dir() {
                return Err(bad(format!(
                    "source {} is not a directory",
                    source.display()
                )));
            }
            (rootfs.source.as_str(), "", libc::MS_BIND | libc::MS_REC)
        }
        "overlay" => ("overlay", "overlay", options.flags),
        other => {
            return Err(bad(format!(
                "type {other:?} is not supported (bind or overlay)"
            )))
        }
    };
    let c = |field: &str, value: &str| {
        CString::new(value).map_err(|_| bad(format!("{field} contains a NUL byte")))
    };
    let source_c = c("source", source)?;
    let fstype_c = c("type", fstype)?;
    let data_c = c("options", &options.data)?;
    let target_c = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("target contains a NUL byte".into()))?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(bad(format!(
            "mounting {} {}: {}",
            rootfs.fstype,
            rootfs.source,
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
