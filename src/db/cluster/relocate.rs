//! Where the cluster lives when hearth runs as root.
//!
//! PostgreSQL refuses to run as root, so it runs as `postgres`, which must
//! traverse every ancestor of its data directory. A clone in root's home
//! (`/root` is 0700) fails that, and asking a newcomer to open up their home
//! is wrong. So when `data_dir/postgres` is not reachable by the server user
//! and no cluster is there yet, the cluster (and its socket directory) go to
//! [`RELOCATED_ROOT`]`/<name>-<hash of data_dir>`, and `data_dir/postgres`
//! becomes a symlink to it. The symlink is the record: later starts follow
//! it (whatever the permissions are then), and it shows a human where the
//! data is. An existing, unreachable cluster inside `data_dir` is never
//! replaced by an empty relocated one: that stays an error.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use super::sys::{self, RunAs};
use super::ClusterError;

/// Parent of relocated clusters (root-owned, 0711 as created).
pub const RELOCATED_ROOT: &str = "/var/lib/hearth/clusters";

/// PGDATA and the socket directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Home {
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
}

/// The cluster's place for the canonical `data_dir`; `root` is where a
/// relocated one goes ([`RELOCATED_ROOT`] unless configured).
pub fn resolve_in(
    data_dir: &Path,
    run_as: Option<&RunAs>,
    root: &Path,
) -> Result<Home, ClusterError> {
    let link = data_dir.join("postgres");
    let local = Home {
        pgdata: link.clone(),
        socket_dir: data_dir.join("pgsock"),
    };
    let Some(user) = run_as else {
        return Ok(local);
    };
    match fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            // `read_link`, not `canonicalize`: the target may not exist yet
            // if the first initdb failed.
            let pgdata = fs::read_link(&link)
                .map_err(|e| ClusterError::io(format!("reading link {}", link.display()), e))?;
            let pgdata = if pgdata.is_absolute() {
                pgdata
            } else {
                data_dir.join(pgdata)
            };
            sys::check_traversable(&pgdata, user)?;
            let socket_dir = pgdata
                .parent()
                .map(|p| p.join("pgsock"))
                .unwrap_or_else(|| local.socket_dir.clone());
            return Ok(Home { pgdata, socket_dir });
        }
        Ok(_) => {
            sys::check_traversable(&link, user)?;
            return Ok(local);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ClusterError::io(
                format!("inspecting {}", link.display()),
                e,
            ))
        }
    }
    if sys::check_traversable(&link, user).is_ok() {
        return Ok(local);
    }
    let home = root.join(dir_name(data_dir));
    sys::create_dirs_traversable(&home)?;
    let pgdata = home.join("postgres");
    sys::check_traversable(&pgdata, user)?;
    std::os::unix::fs::symlink(&pgdata, &link).map_err(|e| {
        ClusterError::io(
            format!("linking {} to {}", link.display(), pgdata.display()),
            e,
        )
    })?;
    tracing::warn!(
        data_dir = %data_dir.display(),
        cluster = %pgdata.display(),
        user = %user.name,
        "the PostgreSQL server user cannot enter the data dir; the cluster lives \
         elsewhere and data_dir/postgres links to it"
    );
    Ok(Home {
        pgdata,
        socket_dir: home.join("pgsock"),
    })
}

/// `<last component>-<16 hex of SHA-1(path)>`: readable, and distinct for
/// two clones with the same directory name.
fn dir_name(data_dir: &Path) -> String {
    let base: String = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(32)
        .collect();
    let digest = Sha1::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{base}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Needs root and a `postgres` user (as in CI); skipped otherwise.
    fn postgres_user() -> Option<RunAs> {
        if !sys::is_root() {
            return None;
        }
        sys::lookup_user("postgres").ok()
    }

    #[test]
    fn not_root_stays_in_data_dir() {
        let d = tempfile::tempdir().unwrap();
        let h = resolve_in(d.path(), None, Path::new("/nonexistent")).unwrap();
        assert_eq!(h.pgdata, d.path().join("postgres"));
        assert_eq!(h.socket_dir, d.path().join("pgsock"));
    }

    #[test]
    fn unreachable_data_dir_relocates_once_and_is_followed_after() {
        let Some(pg) = postgres_user() else { return };
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o711);
        let home = t.path().join("home");
        fs::create_dir(&home).unwrap();
        chmod(&home, 0o700); // like /root
        let data = home.join("hearth-data");
        fs::create_dir(&data).unwrap();
        let root = t.path().join("clusters");

        let h = resolve_in(&data, Some(&pg), &root).unwrap();
        assert!(h.pgdata.starts_with(&root), "{h:?}");
        assert!(h.pgdata.ends_with("postgres"));
        assert_eq!(h.socket_dir, h.pgdata.parent().unwrap().join("pgsock"));
        assert_eq!(fs::read_link(data.join("postgres")).unwrap(), h.pgdata);
        sys::check_traversable(&h.pgdata, &pg).unwrap();
        // The next start follows the link to the same place.
        assert_eq!(resolve_in(&data, Some(&pg), &root).unwrap(), h);
        // The home was not opened up.
        assert_eq!(
            fs::metadata(&home).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn reachable_data_dir_and_existing_cluster_stay() {
        let Some(pg) = postgres_user() else { return };
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o711);
        let root = t.path().join("clusters");
        let h = resolve_in(t.path(), Some(&pg), &root).unwrap();
        assert_eq!(h.pgdata, t.path().join("postgres"));
        assert!(!root.exists());

        // A real directory already there but unreachable: an error, never
        // an empty cluster elsewhere.
        let home = t.path().join("home");
        fs::create_dir_all(home.join("d/postgres")).unwrap();
        chmod(&home, 0o700);
        let e = resolve_in(&home.join("d"), Some(&pg), &root).unwrap_err();
        assert!(matches!(e, ClusterError::NotTraversable { .. }), "{e}");
        assert!(!root.exists());
    }

    #[test]
    fn dir_names_differ_by_path() {
        let a = dir_name(Path::new("/root/a/hearth-data"));
        let b = dir_name(Path::new("/root/b/hearth-data"));
        assert!(a.starts_with("hearth-data-") && b.starts_with("hearth-data-"));
        assert_ne!(a, b);
        assert_eq!(a, dir_name(Path::new("/root/a/hearth-data")));
    }
}
