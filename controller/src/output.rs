//! Writing outputs: every file is replaced atomically (temp file in the same directory, fsync,
//! rename) and only when its bytes differ from what is on disk, because each rename makes Envoy
//! reload and a reload resets filter state. Knows nothing about what the files mean beyond the
//! write order and pruning it is handed.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Files to write, in order, relative to the output directory; then stale files to prune.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputSet {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// `(directory, names to keep)`: other `*.json` files in that directory are deleted after
    /// all files were written.
    pub prune: Vec<(PathBuf, BTreeSet<String>)>,
}

/// What an apply changed on disk (absolute paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.removed.is_empty()
    }
}

/// Writes `content` to `path` atomically unless the file already holds exactly these bytes.
/// Returns whether it wrote.
pub fn write_if_changed(path: &Path, content: &[u8]) -> io::Result<bool> {
    if let Ok(existing) = fs::read(path) {
        if existing == content {
            return Ok(false);
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable; not all platforms can fsync a directory.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

/// Writes the set into `out_dir` in order, then prunes. Stops at the first I/O error.
pub fn apply(out_dir: &Path, set: &OutputSet) -> io::Result<Applied> {
    let mut applied = Applied::default();
    for (rel, content) in &set.files {
        let path = out_dir.join(rel);
        if write_if_changed(&path, content)? {
            applied.written.push(path);
        }
    }
    for (rel, keep) in &set.prune {
        let dir = out_dir.join(rel);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut stale: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.ends_with(".json") && !name.starts_with('.') && !keep.contains(name)
            })
            .collect();
        stale.sort();
        for p in stale {
            fs::remove_file(&p)?;
            applied.removed.push(p);
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("modelroute-output-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_only_when_changed() {
        let d = temp_dir("changed");
        let p = d.join("sub/f.json");
        assert!(write_if_changed(&p, b"one").unwrap());
        let ino = fs::metadata(&p).unwrap().ino();
        assert!(!write_if_changed(&p, b"one").unwrap());
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "unchanged content must not be replaced"
        );
        assert!(write_if_changed(&p, b"two").unwrap());
        assert_ne!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "a change is a rename (new inode)"
        );
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = fs::read_dir(d.join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn apply_writes_in_order_and_prunes_stale_files() {
        let d = temp_dir("apply");
        fs::create_dir_all(d.join("eds")).unwrap();
        fs::write(d.join("eds/old.json"), b"x").unwrap();
        fs::write(d.join("eds/.keep.tmp"), b"x").unwrap();
        let set = OutputSet {
            files: vec![
                ("eds/a.json".into(), b"a".to_vec()),
                ("cds/c.json".into(), b"c".to_vec()),
            ],
            prune: vec![("eds".into(), BTreeSet::from(["a.json".to_string()]))],
        };
        let applied = apply(&d, &set).unwrap();
        assert_eq!(
            applied.written,
            vec![d.join("eds/a.json"), d.join("cds/c.json")]
        );
        assert_eq!(applied.removed, vec![d.join("eds/old.json")]);
        assert!(apply(&d, &set).unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
