//! Operating-system plumbing for the embedded cluster: finding the server
//! binaries, resolving the unprivileged user PostgreSQL runs as, creating
//! directories it can reach, and inspecting `postmaster.pid` files.
//!
//! All of this is blocking and must only run on the main thread (before shards
//! start) or on the supervisor thread.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ClusterError;

/// Binaries we need from one PostgreSQL installation (they must match versions).
const REQUIRED_BINS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Where Debian/Ubuntu's `postgresql-NN` packages put the server binaries.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// Directory holding `initdb`, `pg_ctl` and `postgres` of one installation.
///
/// Looked up on `PATH` first (symlinks such as Debian's `/usr/local/bin/initdb`
/// are resolved so that sibling tools like `psql`/`pg_isready` of the same
/// version are found next to it), else the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bin_dir() -> Result<PathBuf, ClusterError> {
    find_bin_dir(
        std::env::var_os("PATH").as_deref(),
        Path::new(DEBIAN_PG_ROOT),
    )
}

/// [`pg_bin_dir`] with the search places given, so the "not installed"
/// answer can be tested on a machine that has PostgreSQL.
fn find_bin_dir(
    path: Option<&std::ffi::OsStr>,
    debian_root: &Path,
) -> Result<PathBuf, ClusterError> {
    if let Some(path) = path {
        for dir in std::env::split_paths(path) {
            let initdb = dir.join("initdb");
            let Ok(real) = fs::canonicalize(&initdb) else {
                continue;
            };
            if let Some(bin) = real.parent() {
                if has_server_bins(bin) {
                    return Ok(bin.to_path_buf());
                }
            }
        }
    }
    newest_debian_bin_dir(debian_root).ok_or(ClusterError::BinariesNotFound)
}

fn has_server_bins(dir: &Path) -> bool {
    REQUIRED_BINS.iter().all(|b| is_executable(&dir.join(b)))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `/usr/lib/postgresql/<major>/bin` with the highest numeric major version.
fn newest_debian_bin_dir(root: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version: Vec<u32> = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = e.path().join("bin");
            has_server_bins(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// A Unix account the server processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Whether this process runs with root privileges (PostgreSQL refuses those).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Resolves a user name with the thread-safe `getpwnam_r`.
pub fn lookup_user(name: &str) -> Result<RunAs, ClusterError> {
    let cname = CString::new(name).map_err(|_| ClusterError::NoSuchUser(name.to_owned()))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data; zeroed is a valid initial value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the given lengths; the strings
        // written into `buf` outlive our reads of `pwd` below.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return Err(ClusterError::NoSuchUser(name.to_owned()));
        }
        // SAFETY: on success pw_name points to a NUL-terminated string in buf.
        let real_name = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned();
        return Ok(RunAs {
            name: real_name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

/// Supplementary groups of `user` (to decide whether it can traverse a dir).
fn user_groups(user: &RunAs) -> Vec<u32> {
    let Ok(cname) = CString::new(user.name.as_str()) else {
        return vec![user.gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries; the name is NUL-terminated.
        let rc = unsafe {
            libc::getgrouplist(cname.as_ptr(), user.gid, groups.as_mut_ptr(), &mut count)
        };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || n > 65536 {
            return vec![user.gid];
        }
        n = count;
    }
}

/// Fails with a clear message if `user` cannot `cd` through every ancestor of
/// `dir` (a typical trap: a root-owned mode-0700 temp dir above the data dir).
pub fn check_traversable(dir: &Path, user: &RunAs) -> Result<(), ClusterError> {
    let groups = user_groups(user);
    for anc in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(anc) else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if groups.contains(&meta.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(ClusterError::NotTraversable {
                dir: anc.to_path_buf(),
                user: user.name.clone(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

/// Creates `dir` and any missing parents; the ones we create get mode 0711 so
/// an unprivileged server user can pass through without being able to list.
pub fn create_dirs_traversable(dir: &Path) -> Result<(), ClusterError> {
    let mut missing = Vec::new();
    for anc in dir.ancestors() {
        if anc.as_os_str().is_empty() || anc.exists() {
            break;
        }
        missing.push(anc);
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o711).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ClusterError::io(format!("creating {}", d.display()), e)),
        }
        // The umask may have narrowed the mode; set it explicitly.
        fs::set_permissions(d, fs::Permissions::from_mode(0o711))
            .map_err(|e| ClusterError::io(format!("chmod {}", d.display()), e))?;
    }
    Ok(())
}

/// Creates (if needed) a private directory owned by the server user.
pub fn private_dir(dir: &Path, owner: Option<&RunAs>) -> Result<(), ClusterError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ClusterError::io(format!("creating {}", dir.display()), e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| ClusterError::io(format!("chmod {}", dir.display()), e))?;
    chown_to(dir, owner)
}

/// Writes a file readable by the server user (chowned to it when we are root).
pub fn write_owned(path: &Path, contents: &str, owner: Option<&RunAs>) -> Result<(), ClusterError> {
    fs::write(path, contents)
        .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| ClusterError::io(format!("chmod {}", path.display()), e))?;
    chown_to(path, owner)
}

fn chown_to(path: &Path, owner: Option<&RunAs>) -> Result<(), ClusterError> {
    if let Some(u) = owner {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .map_err(|e| ClusterError::io(format!("chown {} to {}", path.display(), u.name), e))?;
    }
    Ok(())
}

/// A command for a PostgreSQL binary, run as `run_as` when given (we are root).
///
/// std's `uid()` drops supplementary groups before `setuid`, so the child has
/// exactly the server user's privileges. The working directory is `/` because
/// tools complain when they cannot access the (root-only) current directory.
pub fn pg_command(bin_dir: &Path, tool: &str, run_as: Option<&RunAs>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin_dir.join(tool));
    cmd.current_dir("/");
    // Stray client settings from the environment must not redirect our tools.
    for var in [
        "PGDATA",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("LC_ALL", "C");
    if let Some(u) = run_as {
        cmd.gid(u.gid).uid(u.uid);
        cmd.env("HOME", "/")
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    cmd
}

/// Whether a process with this pid runs (EPERM means it exists, not ours).
///
/// A zombie counts as dead: it has released everything, and an orphan's
/// zombie may linger when PID 1 (e.g. a container's init) reaps slowly.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only performs the existence/permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// State field of `/proc/<pid>/stat` (after the parenthesised command) is `Z`.
fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `sig` to `pid`, ignoring "no such process".
pub fn signal(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: plain syscall; a stale pid at worst yields ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Whether `pid` runs the `postgres` binary from `bin_dir`.
///
/// `None` when we cannot tell (e.g. another user's process without root).
pub fn is_our_postgres(pid: i32, bin_dir: &Path) -> Option<bool> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let ours = fs::canonicalize(bin_dir.join("postgres")).ok()?;
    Some(exe == ours)
}

/// Contents of a `postmaster.pid` file that matter to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    pub pid: i32,
    /// Line 8 (`PM_STATUS`, PostgreSQL ≥ 10): "starting", "ready", "stopping"…
    pub status: Option<String>,
}

/// Parses `postmaster.pid` (see `src/include/utils/pidfile.h` upstream).
pub fn read_pid_file(path: &Path) -> Option<PidFile> {
    let text = fs::read_to_string(path).ok()?;
    parse_pid_file(&text)
}

pub fn parse_pid_file(text: &str) -> Option<PidFile> {
    let mut lines = text.lines();
    // A negative pid marks a standalone backend; the magnitude is the pid.
    let pid = lines.next()?.trim().parse::<i32>().ok()?.abs();
    let status = lines
        .nth(6)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    Some(PidFile { pid, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_pid_file() {
        let text =
            "1234\n/data/postgres\n1700000000\n5432\n/data/pgsock\n\n  1234     5678\nready   \n";
        let pf = parse_pid_file(text).expect("valid pid file");
        assert_eq!(pf.pid, 1234);
        assert_eq!(pf.status.as_deref(), Some("ready"));
    }

    #[test]
    fn parses_partial_pid_file() {
        let pf = parse_pid_file("77\n/x\n").expect("pid line present");
        assert_eq!(pf.pid, 77);
        assert_eq!(pf.status, None);
        assert!(parse_pid_file("").is_none());
        assert!(parse_pid_file("garbage\n").is_none());
    }

    #[test]
    fn missing_binaries_say_which_package_to_install() {
        let empty = std::env::temp_dir().join(format!("hearth-nopg-{}", std::process::id()));
        let _ = fs::create_dir_all(&empty);
        let err = find_bin_dir(Some(empty.as_os_str()), &empty).unwrap_err();
        let _ = fs::remove_dir_all(&empty);
        let msg = err.to_string();
        assert!(msg.contains("apt-get install postgresql"), "{msg}");
    }

    #[test]
    fn finds_bin_dir_when_installed() {
        // Only meaningful where PostgreSQL is installed (CI and dev boxes are).
        if let Ok(dir) = pg_bin_dir() {
            assert!(has_server_bins(&dir));
        }
    }
}
