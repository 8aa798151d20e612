//! Media bytes on disk, named by their SHA-256: `media/content/ab/cd/<hex>`
//! under the data directory. Identical content is stored once.
//!
//! Every function here is blocking (file IO, hashing) and is meant to run
//! on [`crate::blocking`]; [`Files::put`] and [`Files::get`] are the async
//! wrappers that send it there. A write is durable before it returns:
//! temporary file, fsync, rename into place, fsync of the directory, so an
//! acknowledged upload survives a crash and a torn write never shows under
//! a content name.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::MediaError;

/// The content store rooted at `<data_dir>/media`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Files {
    pub fn new(data_dir: &Path) -> Files {
        Files {
            root: data_dir.join("media"),
        }
    }

    /// Where content `hash` lives (two levels of fan-out keep directories
    /// small). `None` for anything but a SHA-256 in hex.
    fn path_of(&self, hash: &str) -> Option<PathBuf> {
        valid_hash(hash).then(|| {
            self.root
                .join("content")
                .join(&hash[0..2])
                .join(&hash[2..4])
                .join(hash)
        })
    }

    /// Hashes and stores `data` (blocking); returns its hash.
    pub fn put_blocking(&self, data: &[u8]) -> io::Result<String> {
        let hash = sha256_hex(data);
        let Some(path) = self.path_of(&hash) else {
            return Err(io::Error::other("bad content hash"));
        };
        if path.exists() {
            return Ok(hash);
        }
        let Some(dir) = path.parent() else {
            return Err(io::Error::other("content path has no directory"));
        };
        fs::create_dir_all(dir)?;
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir)?;
        let tmp = tmp_dir.join(format!(
            "{hash}.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map(|()| hash)
    }

    /// The bytes of content `hash` (blocking).
    pub fn get_blocking(&self, hash: &str) -> io::Result<Vec<u8>> {
        match self.path_of(hash) {
            Some(p) => fs::read(p),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "bad content hash")),
        }
    }

    /// [`Files::put_blocking`] on the blocking pool (the hashing too).
    pub async fn put(&self, data: Bytes) -> Result<String, MediaError> {
        let files = self.clone();
        crate::blocking::run(move || files.put_blocking(&data))
            .await?
            .map_err(|e| io_error("storing media", e))
    }

    /// [`Files::get_blocking`] on the blocking pool.
    pub async fn get(&self, hash: String) -> Result<Bytes, MediaError> {
        let files = self.clone();
        crate::blocking::run(move || files.get_blocking(&hash))
            .await?
            .map(Bytes::from)
            .map_err(|e| io_error("reading media", e))
    }
}

/// An IO failure; logged (once) where the HTTP edge answers it.
pub(super) fn io_error(what: &str, e: io::Error) -> MediaError {
    MediaError::Io(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_by_hash_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let h = files.put_blocking(b"hello").unwrap();
        assert_eq!(
            h,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(files.put_blocking(b"hello").unwrap(), h);
        assert_eq!(files.get_blocking(&h).unwrap(), b"hello");
        let p = files.path_of(&h).unwrap();
        assert!(p.ends_with(format!("content/2c/f2/{h}")));
        // No temporary file is left behind.
        assert_eq!(
            fs::read_dir(dir.path().join("media/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn only_hashes_name_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        for bad in ["../../etc/passwd", "", &"A".repeat(64), &"0".repeat(63)] {
            assert!(files.path_of(bad).is_none(), "{bad}");
            assert!(files.get_blocking(bad).is_err());
        }
    }
}
