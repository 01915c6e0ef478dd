//! Files written so that a reader sees either the old file or the whole new one: checkpoints,
//! weights, CSV logs and SVG charts all go through [`write_atomic`].

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Write `bytes` to `path` atomically: into a temporary file in the same directory (named
/// `.NAME.tmp-PID-N`, so concurrent writers never share one), flushed to disk, then renamed
/// over `path`. On any failure the temporary file is removed and `path` keeps its old
/// contents (or stays absent); the error names `path`.
///
/// A symbolic link is followed: the file it points to is replaced and the link kept. A path
/// that exists but is not a regular file (a device such as `/dev/null`, a FIFO, a socket, a
/// directory) is an error: renaming over it would replace it with a regular file.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let given = path.as_ref();
    let io = |source: std::io::Error| Error::Io {
        path: given.display().to_string(),
        source,
    };
    let target = regular_target(given).map_err(io)?;
    let path = target.as_path();
    let tmp = temp_path(path).map_err(io)?;
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // The temporary file may not exist (the open failed); nothing else to report.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    // Make the rename itself durable where the platform allows opening a directory.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The file that `path` names, symbolic links resolved; an error if it exists and is not a
/// regular file.
fn regular_target(path: &Path) -> std::io::Result<PathBuf> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let target = if is_link {
        // A dangling link resolves to nothing: replacing the link itself would surprise.
        std::fs::canonicalize(path)?
    } else {
        path.to_path_buf()
    };
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        )),
        Ok(m) if !m.is_file() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO or socket); files are written to a temporary \
             file and renamed over the old one, which would replace it",
        )),
        _ => Ok(target),
    }
}

fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no file (it ends in `..` or is empty)",
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pompc-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_nothing_else() {
        let d = dir("ok");
        let p = d.join("a.csv");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(&d), vec!["a.csv".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let d = dir("fail");
        // A directory where the file should go: the rename fails after the data was written.
        let p = d.join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"x").unwrap();
        let e = write_atomic(&p, b"data").unwrap_err();
        assert!(e.to_string().contains("taken"), "{e}");
        assert_eq!(entries(&d), vec!["taken".to_string()]);
        // A missing directory: nothing is created.
        let e = write_atomic(d.join("no/such/dir/f.svg"), b"data").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert_eq!(entries(&d), vec!["taken".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_and_links_followed() {
        let d = dir("special");
        // A FIFO stands for /dev/null and other devices: renaming over it would replace it.
        let fifo = d.join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = write_atomic(&fifo, b"data").unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
            let t = std::fs::symlink_metadata(&fifo).unwrap().file_type();
            assert!(!t.is_file() && !t.is_dir(), "the FIFO was replaced");
            std::fs::remove_file(&fifo).unwrap();
        }
        // A link to a file: the file gets the new contents, the link stays a link.
        let file = d.join("real.bin");
        std::fs::write(&file, b"old").unwrap();
        let link = d.join("link.bin");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert_eq!(
            entries(&d),
            vec!["link.bin".to_string(), "real.bin".to_string()]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
