//! Files an operator names (configuration, API definitions, zones, tokens, certificates)
//! are read through here, with a size bound, so no file can make a node read without
//! limit; files that hold a secret are written through here, readable by this user only.

/// The largest file an operator's configuration, definition or zone may be (16 MiB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a configuration file (a node's configuration, an API definition, a zone, a token),
/// refusing one larger than [`MAX_FILE_BYTES`] before reading it into memory.
pub fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is larger than the limit of {} MiB", MAX_FILE_BYTES >> 20),
        )
    };
    if file.metadata()?.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    // The length can change between the check and the read (a pipe, a growing file).
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

/// Writes `bytes` to `path`, readable and writable by this user only, whatever the umask and
/// whatever the permissions of a file already there.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_file_is_this_users_only_even_over_a_wider_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }
}
