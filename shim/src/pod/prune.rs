// SPDX-License-Identifier: Apache-2.0
//! Pruning pod VM templates: pod sizes vary, so several templates coexist
//! (each holds its VM's memory), and a new kernel, initrd or `vmpod-vm`
//! orphans the old ones. Once a template is made, the least recently used
//! beyond `template-max` go (a restore marks its template used, and holds
//! it while it restores), with the lock files and hash cache entries
//! nothing needs any more.

use std::path::Path;

use super::template::{cache_entry, io_error, Template, TemplateError, HASH_CACHE};

/// What [`prune`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pruned {
    /// The keys of the templates removed.
    pub(super) templates: Vec<String>,
    /// Lock files whose template was gone.
    pub(super) locks: usize,
    /// Hash cache entries of files as they no longer are.
    pub(super) hashes: usize,
}

/// Whether `name` is a template's key (64 lowercase hex digits).
fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Removes from `templates` the least recently used templates beyond the
/// `max` most recently used ones (by their directories' modification time,
/// see [`Template::touch`]) — never `kept`, the one just made, nor one
/// whose lock is held (a pod restoring or making it) — then the lock files
/// whose template is gone and whose lock is free, and the hash cache's
/// entries of files other than `sources` as they are now (a replaced
/// kernel, initrd or `vmpod-vm`). Anything else there is left alone.
///
/// # Errors
/// The directory cannot be read, or a template cannot be removed (what
/// was removed before stays removed).
pub(super) fn prune(
    templates: &Path,
    max: usize,
    kept: &str,
    sources: &[&Path],
) -> Result<Pruned, TemplateError> {
    let mut found = Vec::new();
    let mut locks = Vec::new();
    let read = io_error("read", templates);
    for entry in std::fs::read_dir(templates).map_err(read)? {
        let entry = entry.map_err(io_error("read", templates))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(key) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".lock")) {
            locks.push(key.to_owned());
        } else if is_key(&name) {
            // DirEntry::metadata does not follow a link.
            if let Some(meta) = entry.metadata().ok().filter(std::fs::Metadata::is_dir) {
                found.push((meta.modified().ok(), name));
            }
        }
    }
    // The most recently used first.
    found.sort_by(|a, b| b.cmp(a));
    let mut pruned = Pruned::default();
    let mut kept_count = usize::from(found.iter().any(|(_, key)| key == kept));
    for (_, key) in found {
        if key == kept {
            continue;
        }
        if kept_count < max {
            kept_count += 1;
            continue;
        }
        let template = Template {
            dir: templates.join(&key),
            key,
        };
        let Some(_claim) = template.lock(libc::LOCK_EX) else {
            continue;
        };
        template.remove()?;
        let _ = std::fs::remove_file(template.lock_path());
        pruned.templates.push(template.key);
    }
    for key in locks {
        if pruned.templates.contains(&key) {
            continue;
        }
        let template = Template {
            dir: templates.join(&key),
            key,
        };
        if template.dir.symlink_metadata().is_err() {
            if let Some(_claim) = template.lock(libc::LOCK_EX) {
                if std::fs::remove_file(template.lock_path()).is_ok() {
                    pruned.locks += 1;
                }
            }
        }
    }
    pruned.hashes = prune_hashes(&templates.join(HASH_CACHE), sources);
    Ok(pruned)
}

/// Removes the entries of the hash cache `cache` that are not those of
/// `sources` as they are now; returns how many went.
fn prune_hashes(cache: &Path, sources: &[&Path]) -> usize {
    let current: Vec<String> = sources
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| cache_entry(&meta))
        .collect();
    let Ok(entries) = std::fs::read_dir(cache) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            !current
                .iter()
                .any(|name| entry.file_name() == name.as_str())
        })
        .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::super::template::STATE_FILE;
    use super::*;

    /// A template directory named `key` in `dir`, last used `age` seconds
    /// ago.
    fn aged_template(dir: &Path, key: &str, age: u64) -> Template {
        let template = Template {
            key: key.to_owned(),
            dir: dir.join(key),
        };
        std::fs::create_dir_all(&template.dir).unwrap();
        std::fs::write(template.dir.join(STATE_FILE), b"state").unwrap();
        let used = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
        File::open(&template.dir)
            .unwrap()
            .set_modified(used)
            .unwrap();
        template
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn test_the_least_recently_used_templates_beyond_the_max_are_pruned() {
        let dir = std::env::temp_dir().join(format!("vmpod-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = |n: u32| format!("{n:064x}");
        // Template n was last used 100 - n seconds ago: 6 is the newest;
        // 1, the oldest, is the one just made.
        let all: Vec<Template> = (1..=6)
            .map(|n| aged_template(&dir, &key(n), u64::from(100 - n)))
            .collect();
        for template in &all {
            drop(template.claim().unwrap());
        }
        // A pod restores 2: it is held.
        let held = all[1].hold().expect("a shared hold");
        assert!(all[1].claim().is_none(), "a claim while held");
        let second_hold = all[1].hold().expect("holds are shared");
        drop(second_hold);
        // A lock file whose template is gone, one whose lock is held, a
        // link and a file that are no templates, and the hash cache.
        let gone = aged_template(&dir, &key(8), 0);
        drop(gone.claim().unwrap());
        gone.remove().unwrap();
        let making = Template {
            key: key(9),
            dir: dir.join(key(9)),
        };
        let making_claim = making.claim().unwrap();
        std::os::unix::fs::symlink(all[5].dir.clone(), dir.join(key(7))).unwrap();
        std::fs::write(dir.join("notes"), b"mine").unwrap();
        let source = dir.join("initrd");
        std::fs::write(&source, b"initrd").unwrap();
        let cache = dir.join(HASH_CACHE);
        std::fs::create_dir_all(&cache).unwrap();
        let current = cache.join(cache_entry(&std::fs::metadata(&source).unwrap()));
        std::fs::write(&current, "a".repeat(64)).unwrap();
        std::fs::write(cache.join("1-2-3-4.5-6.7"), "f".repeat(64)).unwrap();

        let pruned = prune(&dir, 3, &key(1), &[&source]).unwrap();
        assert_eq!(pruned.templates, [key(4), key(3)]);
        assert_eq!((pruned.locks, pruned.hashes), (1, 1));
        let mut left = vec![
            format!(".{}.lock", key(1)),
            format!(".{}.lock", key(2)),
            format!(".{}.lock", key(5)),
            format!(".{}.lock", key(6)),
            format!(".{}.lock", making.key),
            HASH_CACHE.to_owned(),
            key(1),
            key(2),
            key(5),
            key(6),
            key(7),
            "initrd".to_owned(),
            "notes".to_owned(),
        ];
        left.sort();
        assert_eq!(names(&dir), left);
        assert!(current.is_file(), "the source's own hash stays");
        assert_eq!(names(&cache).len(), 1);
        drop(making_claim);

        // Restored, 2 is the most recently used: with room for two, the
        // one just made and 2 stay.
        drop(held);
        all[1].touch().unwrap();
        let pruned = prune(&dir, 2, &key(1), &[&source]).unwrap();
        assert_eq!(pruned.templates, [key(6), key(5)]);
        assert!(all[0].exists() && all[1].exists());
        assert!(!all[4].exists() && !all[5].exists());
        // The just made template stays even beyond a max of one.
        let pruned = prune(&dir, 1, &key(1), &[]).unwrap();
        assert_eq!(pruned.templates, [key(2)]);
        assert!(all[0].exists());
        assert_eq!(pruned.hashes, 1, "no source: no hash stays");
        // A template link is not followed by touch.
        let link = Template {
            key: key(7),
            dir: dir.join(key(7)),
        };
        assert!(link.touch().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
