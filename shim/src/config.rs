// SPDX-License-Identifier: Apache-2.0
//! The shim's configuration file (`/etc/vmpod/config.toml`, or the file named
//! by `VMPOD_CONFIG`): what every pod VM is built from, and the limits pod
//! annotations may size a VM within. Every key is checked when the shim
//! starts, so a bad file fails the first request with one line naming the key.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vmpod_jailer::ids::IdRange;

use crate::share::layout::ShareLimits;
use crate::sizing::SizeLimits;

/// Where the configuration is read from unless `VMPOD_CONFIG` names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmpod/config.toml";
/// The environment variable naming another configuration file. containerd
/// passes its environment on to shims, so it is set where containerd starts.
pub const CONFIG_PATH_ENV: &str = "VMPOD_CONFIG";

/// The CPU templates `vmpod-vm --cpu-template` knows.
const CPU_TEMPLATES: [&str; 4] = ["auto", "host", "baseline", "emulated-supervisor"];
/// The template directory's name in the state directory unless
/// `template-dir` names another.
const DEFAULT_TEMPLATE_DIR: &str = ".templates";
/// How many templates are kept unless `template-max` says otherwise, and
/// how many it may say: each holds a pod VM's memory (~35 MiB at 256 MiB).
const TEMPLATE_MAX: (u32, std::ops::RangeInclusive<u32>) = (8, 1..=1024);
/// Less guest memory than this does not boot the agent.
const MIN_MEMORY_MIB: u32 = 64;
/// vmpod-vm's limit: the guest's RAM must fit below the 32-bit MMIO gap and above it
/// in 64-bit space; keep requests sane.
const MAX_MEMORY_MIB: u32 = 1 << 20;
/// The guest kernel is built for at most this many CPUs.
const MAX_VCPUS: u8 = 4;

/// A configuration error: one line naming the file and the key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {path}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path} line {line}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Where (1-based).
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A key holds a value that cannot work.
    #[error("config {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The key.
        key: &'static str,
        /// What is wrong with its value, and what it may be.
        message: String,
    },
}

/// The file's keys, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    kernel: PathBuf,
    initrd: PathBuf,
    vmm: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    vcpus: Option<u8>,
    max_vcpus: Option<u8>,
    memory: Option<u32>,
    max_memory: Option<u32>,
    cpu_template: Option<String>,
    log_level: Option<String>,
    agent_timeout: Option<u64>,
    share_size: Option<u32>,
    share_inodes: Option<u32>,
    // The jail (vmpod-jailer): docs/shim.md, "The jail".
    jailer: Option<PathBuf>,
    jail_ids: Option<String>,
    unconfined: Option<bool>,
    // Pod VM templates: docs/shim.md, "Templates".
    templates: Option<bool>,
    template_dir: Option<PathBuf>,
    template_max: Option<u32>,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// The agent initrd (vmpod-agent as `/init`).
    pub initrd: PathBuf,
    /// The `vmpod-vm` binary.
    pub vmm: PathBuf,
    /// Where pods keep their sockets, shared directories and logs.
    pub state_dir: PathBuf,
    /// vCPUs of a pod VM unless its annotations ask otherwise.
    pub vcpus: u8,
    /// The most vCPUs an annotation may ask for.
    pub max_vcpus: u8,
    /// Guest memory in MiB unless the pod's annotations ask otherwise.
    pub memory_mib: u32,
    /// The most memory (MiB) an annotation may ask for.
    pub max_memory_mib: u32,
    /// `vmpod-vm --cpu-template`.
    pub cpu_template: String,
    /// The shim's log level (tracing's names).
    pub log_level: String,
    /// How long a pod VM may take from launch until its agent serves.
    pub agent_timeout: Duration,
    /// The bounds of each pod's share tmpfs (`share-size` MiB,
    /// `share-inodes`).
    pub share_limits: ShareLimits,
    /// How `vmpod-vm` is confined; `None`: it runs unconfined, as the
    /// shim's root (`unconfined = true`).
    pub jail: Option<Jail>,
    /// Where pod VM templates are kept (`template-dir`, by default
    /// `<state-dir>/.templates`); `None`: templates are off (`templates =
    /// false`) and every pod VM boots cold.
    pub templates: Option<PathBuf>,
    /// How many templates are kept (`template-max`): once a new one is
    /// made, the least recently used beyond it are removed.
    pub template_max: usize,
}

/// The jail `vmpod-vm` runs in (keys `jailer` and `jail-ids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// The `vmpod-jailer` binary.
    pub jailer: PathBuf,
    /// The uids/gids pods' VMMs run as, one per live pod.
    pub ids: IdRange,
}

/// The ids `jail-ids` defaults to: far above host users and the usual
/// subordinate-id ranges of user namespaces.
const DEFAULT_JAIL_IDS: IdRange = IdRange {
    first: 2_000_000_000,
    last: 2_000_065_535,
};

impl Config {
    /// A valid configuration for unit tests with these files: unconfined,
    /// templates off, the smallest share.
    #[cfg(test)]
    pub(crate) fn for_tests(kernel: &Path, initrd: &Path, vmm: &Path, state_dir: &Path) -> Config {
        Config {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            vmm: vmm.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            vcpus: 1,
            max_vcpus: 2,
            memory_mib: 256,
            max_memory_mib: 512,
            cpu_template: "auto".into(),
            log_level: "info".into(),
            agent_timeout: Duration::from_secs(1),
            share_limits: ShareLimits {
                size_mib: 1,
                inodes: 256,
            },
            jail: None,
            templates: None,
            template_max: 8,
        }
    }

    /// Reads the file `VMPOD_CONFIG` names, or [`DEFAULT_CONFIG_PATH`].
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_default() -> Result<Self, ConfigError> {
        let path = std::env::var_os(CONFIG_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        Self::load(&path)
    }

    /// Reads and checks the file at `path`. A missing `vmm` is `vmpod-vm` in
    /// the shim's own directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the first key at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let beside_shim = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("vmpod-vm")))
            .unwrap_or_else(|| PathBuf::from("vmpod-vm"));
        Self::parse(&path.display().to_string(), &text, beside_shim)
    }

    /// Parses and checks `text`, which came from the file `path`; keys are
    /// checked in the file's documented order, and the first at fault is named.
    fn parse(path: &str, text: &str, default_vmm: PathBuf) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            line: err
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1)
                .unwrap_or(1),
            message: err.message().replace('\n', " "),
        })?;
        let check = Checker { path };
        check.file("kernel", &raw.kernel)?;
        check.file("initrd", &raw.initrd)?;
        let vmm = raw.vmm.unwrap_or(default_vmm);
        check.file("vmm", &vmm)?;
        let state_dir = raw.state_dir.unwrap_or_else(|| PathBuf::from("/run/vmpod"));
        if !state_dir.is_absolute() {
            return Err(check.invalid(
                "state-dir",
                format!("{} is not an absolute path", state_dir.display()),
            ));
        }
        let (vcpus, max_vcpus) = check.vcpus(raw.vcpus, raw.max_vcpus)?;
        let (memory_mib, max_memory_mib) = check.memory(raw.memory, raw.max_memory)?;
        let cpu_template =
            check.one_of("cpu-template", raw.cpu_template, "auto", &CPU_TEMPLATES)?;
        let log_level = check.one_of(
            "log-level",
            raw.log_level,
            "info",
            &vmpod_agent_api::LOG_LEVELS,
        )?;
        let agent_timeout = raw.agent_timeout.unwrap_or(300);
        if !(1..=3600).contains(&agent_timeout) {
            return Err(check.invalid(
                "agent-timeout",
                format!("{agent_timeout} s is not within 1..=3600"),
            ));
        }
        let share_limits = check.share_limits(raw.share_size, raw.share_inodes)?;
        let jail = check.jail(raw.jailer, raw.jail_ids, raw.unconfined, &vmm)?;
        let templates = check.templates(raw.templates, raw.template_dir, &state_dir)?;
        let template_max = raw.template_max.unwrap_or(TEMPLATE_MAX.0);
        if !TEMPLATE_MAX.1.contains(&template_max) {
            return Err(check.invalid(
                "template-max",
                format!("{template_max} is not within {:?}", TEMPLATE_MAX.1),
            ));
        }
        Ok(Config {
            kernel: raw.kernel,
            initrd: raw.initrd,
            vmm,
            state_dir,
            vcpus,
            max_vcpus,
            memory_mib,
            max_memory_mib,
            cpu_template,
            log_level,
            agent_timeout: Duration::from_secs(agent_timeout),
            share_limits,
            jail,
            templates,
            template_max: usize::try_from(template_max).unwrap_or(usize::MAX),
        })
    }

    /// The VM sizes this configuration allows (see [`crate::sizing`]).
    pub fn size_limits(&self) -> SizeLimits {
        SizeLimits {
            vcpus: self.vcpus,
            max_vcpus: self.max_vcpus,
            memory_mib: self.memory_mib,
            max_memory_mib: self.max_memory_mib,
            min_memory_mib: MIN_MEMORY_MIB,
        }
    }
}

/// `share-size` (MiB) and `share-inodes`: the default bounds of a pod's
/// share tmpfs, and what they may be. The shim alone writes there (mount
/// points); the bounds are a backstop, not the guest's disk.
const SHARE_SIZE_MIB: (u32, std::ops::RangeInclusive<u32>) = (1, 1..=1024);
const SHARE_INODES: (u32, std::ops::RangeInclusive<u32>) = (4096, 64..=1 << 20);

/// The checks of one file's values; errors name the file and the key.
struct Checker<'a> {
    path: &'a str,
}

impl Checker<'_> {
    fn invalid(&self, key: &'static str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key,
            message,
        }
    }

    /// `share-size` and `share-inodes`, within their ranges.
    fn share_limits(
        &self,
        size: Option<u32>,
        inodes: Option<u32>,
    ) -> Result<ShareLimits, ConfigError> {
        let size_mib = size.unwrap_or(SHARE_SIZE_MIB.0);
        if !SHARE_SIZE_MIB.1.contains(&size_mib) {
            return Err(self.invalid(
                "share-size",
                format!("{size_mib} MiB is not within {:?}", SHARE_SIZE_MIB.1),
            ));
        }
        let inodes = inodes.unwrap_or(SHARE_INODES.0);
        if !SHARE_INODES.1.contains(&inodes) {
            return Err(self.invalid(
                "share-inodes",
                format!("{inodes} is not within {:?}", SHARE_INODES.1),
            ));
        }
        Ok(ShareLimits { size_mib, inodes })
    }

    /// `value` must be a file.
    fn file(&self, key: &'static str, value: &Path) -> Result<(), ConfigError> {
        if value.is_file() {
            Ok(())
        } else {
            Err(self.invalid(key, format!("{} is not a file", value.display())))
        }
    }

    /// `jailer`, `jail-ids` and `unconfined`: the jail, or none. A missing
    /// `jailer` is `vmpod-jailer` beside `vmm`.
    fn jail(
        &self,
        jailer: Option<PathBuf>,
        ids: Option<String>,
        unconfined: Option<bool>,
        vmm: &Path,
    ) -> Result<Option<Jail>, ConfigError> {
        if unconfined == Some(true) {
            return Ok(None);
        }
        let jailer = jailer.unwrap_or_else(|| vmm.with_file_name("vmpod-jailer"));
        self.file("jailer", &jailer)?;
        let ids = match ids {
            Some(ids) => ids
                .parse::<IdRange>()
                .map_err(|message| self.invalid("jail-ids", message))?,
            None => DEFAULT_JAIL_IDS,
        };
        Ok(Some(Jail { jailer, ids }))
    }

    /// `templates` and `template-dir`: where templates are kept, or `None`
    /// when they are off. The default directory is `.templates` in the
    /// state directory: a containerd namespace (a pod directory's parent
    /// there) never starts with a dot. It must be on the state directory's
    /// file system for a template to be moved there from a pod's directory
    /// (docs/shim.md, "Templates").
    fn templates(
        &self,
        on: Option<bool>,
        dir: Option<PathBuf>,
        state_dir: &Path,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let dir = dir.unwrap_or_else(|| state_dir.join(DEFAULT_TEMPLATE_DIR));
        if !dir.is_absolute() {
            return Err(self.invalid(
                "template-dir",
                format!("{} is not an absolute path", dir.display()),
            ));
        }
        // In the state directory, only a name with a leading dot is never a
        // containerd namespace's (whose pods' directories are there).
        let in_state_dir = dir.strip_prefix(state_dir).ok().map(|below| {
            below
                .components()
                .next()
                .is_some_and(|first| first.as_os_str().as_bytes().starts_with(b"."))
        });
        if in_state_dir == Some(false) {
            return Err(self.invalid(
                "template-dir",
                format!(
                    "{} is in state-dir under a name a containerd namespace may have \
                     (start it with a dot)",
                    dir.display()
                ),
            ));
        }
        Ok(on.unwrap_or(true).then_some(dir))
    }

    /// `vcpus` and `max-vcpus`, defaulted and within their bounds.
    fn vcpus(&self, vcpus: Option<u8>, max_vcpus: Option<u8>) -> Result<(u8, u8), ConfigError> {
        let max_vcpus = max_vcpus.unwrap_or(MAX_VCPUS);
        if !(1..=MAX_VCPUS).contains(&max_vcpus) {
            return Err(self.invalid(
                "max-vcpus",
                format!("{max_vcpus} is not within 1..={MAX_VCPUS}"),
            ));
        }
        let vcpus = vcpus.unwrap_or(1);
        if !(1..=max_vcpus).contains(&vcpus) {
            return Err(self.invalid(
                "vcpus",
                format!("{vcpus} is not within 1..={max_vcpus} (max-vcpus)"),
            ));
        }
        Ok((vcpus, max_vcpus))
    }

    /// `memory` and `max-memory` (MiB), defaulted and within their bounds.
    fn memory(
        &self,
        memory: Option<u32>,
        max_memory: Option<u32>,
    ) -> Result<(u32, u32), ConfigError> {
        let max_memory_mib = max_memory.unwrap_or(2048);
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&max_memory_mib) {
            return Err(self.invalid(
                "max-memory",
                format!("{max_memory_mib} MiB is not within {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}"),
            ));
        }
        let memory_mib = memory.unwrap_or(256);
        if !(MIN_MEMORY_MIB..=max_memory_mib).contains(&memory_mib) {
            return Err(self.invalid(
                "memory",
                format!(
                    "{memory_mib} MiB is not within {MIN_MEMORY_MIB}..={max_memory_mib} (max-memory)"
                ),
            ));
        }
        Ok((memory_mib, max_memory_mib))
    }

    /// A name that must be one of `allowed`; `default` when left out.
    fn one_of(
        &self,
        key: &'static str,
        value: Option<String>,
        default: &str,
        allowed: &[&str],
    ) -> Result<String, ConfigError> {
        let value = value.unwrap_or_else(|| default.to_owned());
        if allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(self.invalid(
                key,
                format!("{value:?} is not one of {}", allowed.join(", ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose file keys point at files that exist.
    fn base() -> String {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.display();
        format!("kernel = \"{exe}\"\ninitrd = \"{exe}\"\nvmm = \"{exe}\"\njailer = \"{exe}\"\n")
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse("test.toml", text, PathBuf::from("/nonexistent/vmpod-vm"))
            .map_err(|e| vmpod_sys::error::chain(&e))
    }

    #[test]
    fn test_defaults_fill_what_is_left_out() {
        let config = parse(&base()).unwrap();
        assert_eq!(config.vcpus, 1);
        assert_eq!(config.max_vcpus, 4);
        assert_eq!(config.memory_mib, 256);
        assert_eq!(config.max_memory_mib, 2048);
        assert_eq!(config.cpu_template, "auto");
        assert_eq!(config.log_level, "info");
        assert_eq!(config.state_dir, PathBuf::from("/run/vmpod"));
        assert_eq!(config.agent_timeout, Duration::from_secs(300));
        assert_eq!(
            config.share_limits,
            ShareLimits {
                size_mib: 1,
                inodes: 4096
            }
        );
        let config = parse(&format!("{}share-size = 8\nshare-inodes = 64\n", base())).unwrap();
        assert_eq!(
            config.share_limits,
            ShareLimits {
                size_mib: 8,
                inodes: 64
            }
        );
        assert_eq!(
            config.templates,
            Some(PathBuf::from("/run/vmpod/.templates"))
        );
        let jail = config.jail.unwrap();
        assert_eq!(jail.ids, DEFAULT_JAIL_IDS);
        assert_eq!(jail.jailer, std::env::current_exe().unwrap());
    }

    #[test]
    fn test_the_jail_keys() {
        let config = parse(&format!("{}jail-ids = \"1000-1009\"\n", base())).unwrap();
        assert_eq!(
            config.jail.unwrap().ids,
            IdRange {
                first: 1000,
                last: 1009
            }
        );
        let config = parse(&format!("{}unconfined = true\n", base())).unwrap();
        assert_eq!(config.jail, None);
        // Unconfined, the jailer need not exist.
        let no_jailer = base().replace("jailer = \"", "jailer = \"/nonexistent");
        assert!(parse(&format!("{no_jailer}unconfined = true\n")).is_ok());
        let err = parse(&no_jailer).unwrap_err();
        assert!(err.contains("jailer: /nonexistent"), "{err}");
        // Without the key, vmpod-jailer beside vmm (not built there).
        let beside_vmm: String = base().lines().take(3).map(|l| format!("{l}\n")).collect();
        let err = parse(&beside_vmm).unwrap_err();
        assert!(err.contains("/vmpod-jailer is not a file"), "{err}");
    }

    #[test]
    fn test_the_template_keys() {
        let config = parse(&format!("{}state-dir = \"/s\"\n", base())).unwrap();
        assert_eq!(config.templates, Some(PathBuf::from("/s/.templates")));
        let config = parse(&format!("{}templates = false\n", base())).unwrap();
        assert_eq!(config.templates, None);
        assert_eq!(config.template_max, 8);
        let config = parse(&format!("{}template-max = 1\n", base())).unwrap();
        assert_eq!(config.template_max, 1);
        for dir in ["/var/lib/vmpod/templates", "/run/vmpod/.t/x"] {
            let config = parse(&format!("{}template-dir = {dir:?}\n", base())).unwrap();
            assert_eq!(config.templates, Some(PathBuf::from(dir)));
        }
    }

    #[test]
    fn test_every_bad_key_is_named_in_one_line() {
        let cases: &[(&str, &str)] = &[
            ("vcpus = 0", "vcpus: 0 is not within 1..=4"),
            ("vcpus = 3\nmax-vcpus = 2", "vcpus: 3 is not within 1..=2"),
            ("max-vcpus = 9", "max-vcpus: 9 is not within 1..=4"),
            ("memory = 32", "memory: 32 MiB is not within 64..=2048"),
            ("memory = 4096", "memory: 4096 MiB is not within 64..=2048"),
            ("max-memory = 1", "max-memory: 1 MiB is not within"),
            (
                "cpu-template = \"fast\"",
                "cpu-template: \"fast\" is not one of",
            ),
            ("log-level = \"loud\"", "log-level: \"loud\" is not one of"),
            ("agent-timeout = 0", "agent-timeout: 0 s is not within"),
            (
                "state-dir = \"run\"",
                "state-dir: run is not an absolute path",
            ),
            ("share-size = 0", "share-size: 0 MiB is not within 1..=1024"),
            (
                "share-size = 2048",
                "share-size: 2048 MiB is not within 1..=1024",
            ),
            (
                "share-inodes = 8",
                "share-inodes: 8 is not within 64..=1048576",
            ),
            ("share-inodes = -1", "line 5: invalid value"),
            ("jail-ids = \"0-5\"", "jail-ids: \"0-5\" is not FIRST-LAST"),
            (
                "jail-ids = \"9-5\"",
                "jail-ids: \"9-5\": the last id is below the first",
            ),
            (
                "unconfined = \"yes\"",
                "line 5: invalid type: string \"yes\"",
            ),
            ("colour = 1", "line 5: unknown field `colour`"),
            ("templates = 1", "line 5: invalid type: integer `1`"),
            (
                "template-dir = \"t\"",
                "template-dir: t is not an absolute path",
            ),
            (
                "template-dir = \"/run/vmpod/templates\"",
                "template-dir: /run/vmpod/templates is in state-dir under a name",
            ),
            (
                "template-dir = \"/run/vmpod\"",
                "template-dir: /run/vmpod is in state-dir",
            ),
            ("template-max = 0", "template-max: 0 is not within 1..=1024"),
            (
                "template-max = 5000",
                "template-max: 5000 is not within 1..=1024",
            ),
            ("template-max = -1", "line 5: invalid value"),
            ("vcpus = \"two\"", "line 5: invalid type: string \"two\""),
            ("vcpus = 300", "line 5:"),
        ];
        for (extra, expected) in cases {
            let err = parse(&format!("{}{extra}\n", base())).unwrap_err();
            assert!(err.contains(expected), "{extra:?}: {err}");
            assert!(err.starts_with("config test.toml"), "{err}");
            assert!(!err.contains('\n'), "{extra:?}: not one line: {err}");
        }
        let err = parse("initrd = \"/x\"\n").unwrap_err();
        assert!(err.contains("missing field `kernel`"), "{err}");
        let err = parse(&base().replace("kernel = \"", "kernel = \"/nonexistent")).unwrap_err();
        assert!(err.contains("kernel: /nonexistent"), "{err}");
        let no_vmm: String = base().lines().take(2).map(|l| format!("{l}\n")).collect();
        let err = parse(&no_vmm).unwrap_err();
        assert!(
            err.contains("vmm: /nonexistent/vmpod-vm is not a file"),
            "{err}"
        );
        let err = Config::load(Path::new("/nonexistent/config.toml")).unwrap_err();
        assert!(
            vmpod_sys::error::chain(&err)
                .starts_with("config /nonexistent/config.toml: No such file"),
            "{err}"
        );
    }
}
