//! Files an operator names (configuration, API definitions, zones, tokens, certificates)
//! are read through here, with a size bound, so no file can make a node read without
//! limit.

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
