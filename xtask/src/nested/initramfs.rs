//! L1's initramfs: a tree of host files, own files and symlinks
//! ([`Tree`]), its fingerprint (the cache key's input) and the newc cpio
//! the kernel unpacks ([`Cpio`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::{fnv1a, stat_line};

#[derive(Clone, Debug)]
pub(super) enum Entry {
    Dir { mode: u32 },
    File { src: PathBuf, mode: u32, size: u64, stamp: String },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink { target: OsString },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// The initramfs as absolute paths → entries. Paths are canonical within
/// the tree: a symlinked directory (e.g. `/lib` → `usr/lib` on a merged-/usr
/// host) is stored as a symlink and everything below it at the target, the
/// way the host has it.
#[derive(Default)]
pub(super) struct Tree {
    pub(super) entries: BTreeMap<PathBuf, Entry>,
}

/// `base/rel` with `.` and `..` removed lexically (`base` is canonical).
fn join_normalized(base: &Path, rel: &Path) -> PathBuf {
    let mut out = if rel.is_absolute() { PathBuf::from("/") } else { base.to_path_buf() };
    for c in rel.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

impl Tree {
    pub(super) fn insert(&mut self, p: PathBuf, e: Entry) -> Result<()> {
        if let Some(old) = self.entries.get(&p) {
            match (old, &e) {
                (Entry::Dir { .. }, Entry::Dir { .. }) => return Ok(()),
                _ => bail!("initramfs: {} added twice", p.display()),
            }
        }
        self.entries.insert(p, e);
        Ok(())
    }

    /// Canonical form of directory `dir`, adding the directories and
    /// symlinks on the way (from the host if `host`).
    fn dir(&mut self, dir: &Path, host: bool, depth: u32) -> Result<PathBuf> {
        if depth > 40 {
            bail!("initramfs: too many symlinks at {}", dir.display());
        }
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Ok(PathBuf::from("/"));
        };
        let parent = self.dir(parent, host, depth + 1)?;
        let cand = parent.join(name);
        match self.entries.get(&cand) {
            Some(Entry::Dir { .. }) => return Ok(cand),
            Some(Entry::Symlink { target }) => {
                let t = join_normalized(&parent, Path::new(target));
                return self.dir(&t, host, depth + 1);
            }
            Some(_) => bail!("initramfs: {} is not a directory", cand.display()),
            None => {}
        }
        if host {
            let m = fs::symlink_metadata(&cand).with_context(|| format!("stat {}", cand.display()))?;
            if m.file_type().is_symlink() {
                let target = fs::read_link(&cand)?;
                self.insert(cand, Entry::Symlink { target: target.clone().into() })?;
                return self.dir(&join_normalized(&parent, &target), host, depth + 1);
            }
            if !m.is_dir() {
                bail!("{} is not a directory", cand.display());
            }
        }
        self.insert(cand.clone(), Entry::Dir { mode: 0o755 })?;
        Ok(cand)
    }

    /// Canonical path of `p` (its directory resolved, not `p` itself).
    fn place(&mut self, p: &Path, host: bool) -> Result<PathBuf> {
        let parent = p.parent().ok_or_else(|| anyhow!("initramfs: bad path {}", p.display()))?;
        let name = p.file_name().ok_or_else(|| anyhow!("initramfs: bad path {}", p.display()))?;
        Ok(self.dir(parent, host, 0)?.join(name))
    }

    pub(super) fn contains(&mut self, p: &Path) -> Result<bool> {
        let c = self.place(p, false)?;
        Ok(self.entries.contains_key(&c))
    }

    pub(super) fn own_dir(&mut self, p: &Path) -> Result<()> {
        self.dir(p, false, 0).map(|_| ())
    }

    pub(super) fn own_bytes(&mut self, p: &Path, data: Vec<u8>, mode: u32) -> Result<()> {
        let c = self.place(p, false)?;
        self.insert(c, Entry::Bytes { data, mode })
    }

    pub(super) fn own_symlink(&mut self, p: &Path, target: &str) -> Result<()> {
        let c = self.place(p, false)?;
        self.insert(c, Entry::Symlink { target: target.into() })
    }

    pub(super) fn own_file(&mut self, p: &Path, src: &Path, mode: u32) -> Result<()> {
        let m = fs::metadata(src).with_context(|| format!("stat {}", src.display()))?;
        let c = self.place(p, false)?;
        self.insert(c, Entry::File { src: src.to_path_buf(), mode, size: m.size(), stamp: stat_line(src)? })
    }

    /// Adds host file `p` at the same path, with the symlinks leading to it.
    pub(super) fn add_host(&mut self, p: &Path) -> Result<()> {
        let mut p = p.to_path_buf();
        for _ in 0..40 {
            let c = self.place(&p, true)?;
            if let Some(e) = self.entries.get(&c) {
                match e {
                    Entry::Symlink { target } => {
                        p = join_normalized(c.parent().expect("absolute"), Path::new(target));
                        continue;
                    }
                    _ => return Ok(()),
                }
            }
            let m = fs::symlink_metadata(&c).with_context(|| format!("stat {}", c.display()))?;
            if m.file_type().is_symlink() {
                let target = fs::read_link(&c)?;
                self.insert(c.clone(), Entry::Symlink { target: target.clone().into() })?;
                p = join_normalized(c.parent().expect("absolute"), &target);
                continue;
            }
            if !m.is_file() {
                bail!("{} is not a regular file", c.display());
            }
            let stamp = stat_line(&c)?;
            let mode = m.permissions().mode() & 0o7777;
            return self.insert(c.clone(), Entry::File { src: c, mode, size: m.size(), stamp });
        }
        bail!("too many symlinks at {}", p.display())
    }

    /// One line per entry: what the cache key covers.
    pub(super) fn fingerprint(&self) -> String {
        let mut s = String::new();
        for (p, e) in &self.entries {
            let line = match e {
                Entry::Dir { mode } => format!("dir {} {mode:o}", p.display()),
                Entry::File { mode, stamp, .. } => format!("file {} {mode:o} {stamp}", p.display()),
                Entry::Bytes { data, mode } => format!("bytes {} {mode:o} {:016x}", p.display(), fnv1a(data)),
                Entry::Symlink { target } => format!("symlink {} -> {}", p.display(), Path::new(target).display()),
                Entry::CharDev { mode, major, minor } => format!("chardev {} {mode:o} {major}:{minor}", p.display()),
            };
            s.push_str(&line);
            s.push('\n');
        }
        s
    }

    pub(super) fn write_cpio(&self, out: &Path) -> Result<()> {
        let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = Cpio::new(BufWriter::with_capacity(1 << 20, f));
        for (p, e) in &self.entries {
            let name = p.strip_prefix("/").unwrap_or(p).as_os_str().as_bytes();
            match e {
                Entry::Dir { mode } => w.entry(name, 0o040000 | mode, 0, &[])?,
                Entry::Bytes { data, mode } => w.entry(name, 0o100000 | mode, 0, data)?,
                Entry::Symlink { target } => w.entry(name, 0o120777, 0, target.as_bytes())?,
                Entry::CharDev { mode, major, minor } => {
                    w.entry(name, 0o020000 | mode, (u64::from(*major) << 32) | u64::from(*minor), &[])?
                }
                Entry::File { src, mode, size, .. } => {
                    let mut data = Vec::with_capacity(*size as usize);
                    File::open(src)
                        .and_then(|mut f| f.read_to_end(&mut data))
                        .with_context(|| format!("reading {}", src.display()))?;
                    if data.len() as u64 != *size {
                        bail!("{} changed while building the initramfs", src.display());
                    }
                    w.entry(name, 0o100000 | mode, 0, &data)?;
                }
            }
        }
        w.finish()?.flush()?;
        Ok(())
    }
}

/// A newc ("070701") cpio writer, the format the kernel unpacks.
struct Cpio<W: Write> {
    w: W,
    ino: u32,
}

impl<W: Write> Cpio<W> {
    fn new(w: W) -> Cpio<W> {
        Cpio { w, ino: 1 }
    }

    /// One entry; `rdev` = major << 32 | minor (device nodes only). Names
    /// are relative (`usr/bin/x`); times and owners are 0.
    fn entry(&mut self, name: &[u8], mode: u32, rdev: u64, data: &[u8]) -> std::io::Result<()> {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            (rdev >> 32) as u32,
            rdev as u32,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        self.w.write_all(h.as_bytes())?;
        self.w.write_all(name)?;
        self.w.write_all(&[0])?;
        self.pad(110 + name.len() + 1)?;
        self.w.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.w.write_all(&[0u8; 3][..n])
    }

    /// Writes the trailer and returns the writer.
    fn finish(mut self) -> std::io::Result<W> {
        self.entry(b"TRAILER!!!", 0, 0, &[])?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Names of the files L1 will find (for tests and diagnostics).
    fn cpio_names(data: &[u8]) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut pos = 0usize;
        let field = |pos: usize, i: usize| -> Result<usize> {
            let s = data.get(pos + 6 + 8 * i..pos + 14 + 8 * i).ok_or_else(|| anyhow!("cpio: truncated"))?;
            Ok(usize::from_str_radix(std::str::from_utf8(s)?, 16)?)
        };
        loop {
            if data.get(pos..pos + 6) != Some(b"070701") {
                bail!("cpio: bad magic at {pos}");
            }
            let size = field(pos, 6)?;
            let namesize = field(pos, 11)?;
            let name = data.get(pos + 110..pos + 110 + namesize - 1).ok_or_else(|| anyhow!("cpio: truncated"))?;
            let name = String::from_utf8_lossy(name).into_owned();
            pos += (110 + namesize).div_ceil(4) * 4;
            pos += size.div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                return Ok(out);
            }
            out.insert(name);
        }
    }

    #[test]
    fn cpio_layout_and_symlinked_dirs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        fs::write(root.join("usr/lib/libx.so.1.2"), b"abcde").unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("usr/lib/libx.so.1")).unwrap();
        let mut t = Tree::default();
        t.add_host(&root.join("lib/libx.so.1")).unwrap();
        t.own_bytes(Path::new("/init"), b"#!/bin/sh\n".to_vec(), 0o755).unwrap();
        let out = root.join("out.cpio");
        t.write_cpio(&out).unwrap();
        let data = fs::read(&out).unwrap();
        assert_eq!(data.len() % 4, 0);
        let names = cpio_names(&data).unwrap();
        let rel = |p: &str| root.join(p).strip_prefix("/").unwrap().to_string_lossy().into_owned();
        assert!(names.contains(&rel("lib")));
        assert!(names.contains(&rel("usr/lib/libx.so.1")));
        assert!(names.contains(&rel("usr/lib/libx.so.1.2")));
        assert!(names.contains("init"));
        assert!(!names.contains(&rel("lib/libx.so.1")));
        // Parents come before children.
        let keys: Vec<_> = t.entries.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
