// SPDX-License-Identifier: Apache-2.0
//! OCI mount options (`ro`, `nosuid`, `rbind`, `rprivate`, `size=64m`, ...)
//! split into mount(2) flags, propagation and file-system data, the way
//! runc reads them.

/// What one option list asks of mount(2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself (`MS_RDONLY`, `MS_NOSUID`, ...).
    pub flags: libc::c_ulong,
    /// A bind mount (`bind`, or `rbind` with `MS_REC`).
    pub bind: bool,
    /// Propagation applied after the mount (`MS_PRIVATE`, `MS_SLAVE`, ...,
    /// with `MS_REC` for the `r` forms); 0 for none.
    pub propagation: libc::c_ulong,
    /// Everything else, comma-joined, for the file system (`size=64m`).
    pub data: String,
}

/// Options that set a flag.
const SET: [(&str, libc::c_ulong); 14] = [
    ("ro", libc::MS_RDONLY),
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC),
    ("sync", libc::MS_SYNCHRONOUS),
    ("dirsync", libc::MS_DIRSYNC),
    ("remount", libc::MS_REMOUNT),
    ("mand", libc::MS_MANDLOCK),
    ("noatime", libc::MS_NOATIME),
    ("nodiratime", libc::MS_NODIRATIME),
    ("relatime", libc::MS_RELATIME),
    ("strictatime", libc::MS_STRICTATIME),
    ("silent", libc::MS_SILENT),
    ("lazytime", libc::MS_LAZYTIME),
];

/// Options that clear a flag (or only restate the default).
const CLEAR: [(&str, libc::c_ulong); 12] = [
    ("rw", libc::MS_RDONLY),
    ("suid", libc::MS_NOSUID),
    ("dev", libc::MS_NODEV),
    ("exec", libc::MS_NOEXEC),
    ("async", libc::MS_SYNCHRONOUS),
    ("nomand", libc::MS_MANDLOCK),
    ("atime", libc::MS_NOATIME),
    ("diratime", libc::MS_NODIRATIME),
    ("norelatime", libc::MS_RELATIME),
    ("nostrictatime", libc::MS_STRICTATIME),
    ("loud", libc::MS_SILENT),
    ("defaults", 0),
];

const PROPAGATION: [(&str, libc::c_ulong); 8] = [
    ("private", libc::MS_PRIVATE),
    ("rprivate", libc::MS_PRIVATE | libc::MS_REC),
    ("shared", libc::MS_SHARED),
    ("rshared", libc::MS_SHARED | libc::MS_REC),
    ("slave", libc::MS_SLAVE),
    ("rslave", libc::MS_SLAVE | libc::MS_REC),
    ("unbindable", libc::MS_UNBINDABLE),
    ("runbindable", libc::MS_UNBINDABLE | libc::MS_REC),
];

impl MountOptions {
    /// Reads an OCI option list.
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Self {
        let mut parsed = MountOptions::default();
        let mut data = Vec::new();
        for option in options {
            let option = option.as_ref();
            if option == "bind" {
                parsed.bind = true;
            } else if option == "rbind" {
                parsed.bind = true;
                parsed.flags |= libc::MS_REC;
            } else if let Some(&(_, flag)) = SET.iter().find(|(name, _)| *name == option) {
                parsed.flags |= flag;
            } else if let Some(&(_, flag)) = CLEAR.iter().find(|(name, _)| *name == option) {
                parsed.flags &= !flag;
            } else if let Some(&(_, flag)) = PROPAGATION.iter().find(|(name, _)| *name == option) {
                parsed.propagation = flag;
            } else if !option.is_empty() {
                data.push(option);
            }
        }
        parsed.data = data.join(",");
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_flags_data_and_propagation() {
        let parsed = MountOptions::parse(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(parsed.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(parsed.data, "mode=755,size=65536k");
        assert!(!parsed.bind);
        let parsed = MountOptions::parse(&["rbind", "ro", "rprivate"]);
        assert!(parsed.bind);
        assert_eq!(parsed.flags, libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(parsed.propagation, libc::MS_PRIVATE | libc::MS_REC);
    }

    #[test]
    fn test_later_options_win() {
        assert_eq!(MountOptions::parse(&["ro", "rw"]).flags, 0);
        assert_eq!(MountOptions::parse(&["rw", "ro"]).flags, libc::MS_RDONLY);
    }
}
