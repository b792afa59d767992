//! A member's data directory is private to the node's user.
//!
//! It holds the node's TLS key, the cluster data key, the Raft log and state (sealed
//! secrets, key hashes) and quota counters. The `meridian` process runs with umask 077, so
//! everything it creates is 0700 (directories) or 0600 (files); this module creates the
//! directory itself that way and refuses to start on one that other users can enter or read,
//! since its contents may already have been copied.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) as 0700, or checks an existing one.
pub fn create_private(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    }
    check_private(dir)
}

/// Refuses a data directory that is not a directory or that others can access.
pub fn check_private(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read the data directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("the data directory {} is not a directory", dir.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the data directory {dir} is accessible to other users (mode {mode:04o}); it holds the node's keys. \
             Run `chmod 700 {dir}` (and consider the keys in it exposed if others could read them)",
            dir = dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_refused_when_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_private(&dir).unwrap_err();
        assert!(e.contains("mode 0755") && e.contains("chmod 700"), "{e}");
        assert!(create_private(&dir).is_err());
    }
}
