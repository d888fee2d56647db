//! `bench --dataset`: trees of many files, generated locally, sent whole
//! by every mode, and checked file by file against what arrived.
//!
//! The sets follow the small-file and large-file ends of ESnet's test
//! sets for data transfer nodes, scaled to a test VM.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

/// A dataset's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// 10,000 files of 4 KiB, 100 to a directory.
    Tiny,
    /// 1,000 files of 1 MiB, 100 to a directory.
    Small,
    /// 4 files of 256 MiB.
    Large,
}

impl Dataset {
    pub const ALL: [Dataset; 3] = [Dataset::Tiny, Dataset::Small, Dataset::Large];

    pub fn name(self) -> &'static str {
        match self {
            Dataset::Tiny => "tiny",
            Dataset::Small => "small",
            Dataset::Large => "large",
        }
    }

    /// Files, and bytes in each.
    pub fn shape(self) -> (u64, u64) {
        match self {
            Dataset::Tiny => (10_000, 4 << 10),
            Dataset::Small => (1_000, 1 << 20),
            Dataset::Large => (4, 256 << 20),
        }
    }

    /// Bytes of all its files.
    pub fn bytes(self) -> u64 {
        let (n, each) = self.shape();
        n * each
    }

    /// Makes the set at `root` (a directory named after it): incompressible
    /// bytes, each file seeded by its index, everything synced so that no
    /// run pays for the generator's writeback.
    pub fn generate(self, root: &Path) -> anyhow::Result<()> {
        let (n, each) = self.shape();
        for i in 0..n {
            let dir = root.join(format!("d{:03}", i / 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
            }
            let path = dir.join(format!("f{i:05}.bin"));
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
            );
            let seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
            super::runs::write_pseudo_random(&mut f, each, seed)?;
            f.flush()?;
        }
        let top = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
        nix::unistd::syncfs(&top).context("syncing the generated set")?;
        Ok(())
    }
}

impl std::str::FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dataset {s:?}; datasets are tiny, small, large"))
    }
}

/// Checks that `got` holds exactly what `want` does: the same directories
/// and files, each file's bytes the same. Returns how many files it
/// compared.
pub fn compare_trees(want: &Path, got: &Path) -> anyhow::Result<u64> {
    let mut files = 0;
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let names = |root: &Path| -> anyhow::Result<Vec<(std::ffi::OsString, std::fs::FileType)>> {
            let dir = root.join(&rel);
            let mut v = std::fs::read_dir(&dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .map(|e| {
                    let e = e?;
                    Ok((e.file_name(), e.file_type()?))
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(v)
        };
        let (w, g) = (names(want)?, names(got)?);
        let wn: Vec<_> = w.iter().map(|e| &e.0).collect();
        let gn: Vec<_> = g.iter().map(|e| &e.0).collect();
        if wn != gn {
            bail!("{} holds {:?}, the source {:?}", got.join(&rel).display(), gn, wn);
        }
        for (name, kind) in &w {
            let r = rel.join(name);
            if kind.is_dir() {
                stack.push(r);
            } else if !same_bytes(&want.join(&r), &got.join(&r))? {
                bail!("{} differs from its source", got.join(&r).display());
            }
            files += u64::from(!kind.is_dir());
        }
    }
    Ok(files)
}

fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let open = |p: &Path| std::fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_matches_and_a_change_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("d/e")).unwrap();
        std::fs::write(a.join("d/x"), b"one").unwrap();
        std::fs::write(a.join("d/e/y"), b"two").unwrap();
        let b = dir.path().join("b");
        std::fs::create_dir_all(b.join("d/e")).unwrap();
        std::fs::write(b.join("d/x"), b"one").unwrap();
        std::fs::write(b.join("d/e/y"), b"two").unwrap();
        assert_eq!(compare_trees(&a, &b).unwrap(), 2);
        std::fs::write(b.join("d/e/y"), b"tw0").unwrap();
        assert!(compare_trees(&a, &b).is_err());
        std::fs::write(b.join("d/e/y"), b"two").unwrap();
        std::fs::write(b.join("d/extra"), b"").unwrap();
        assert!(compare_trees(&a, &b).is_err());
        assert_eq!("small".parse::<Dataset>(), Ok(Dataset::Small));
        assert!("huge".parse::<Dataset>().is_err());
        assert_eq!(Dataset::Tiny.bytes(), 10_000 * 4096);
    }
}
