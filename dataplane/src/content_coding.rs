//! HTTP content codings (RFC 9110 §8.4): which coding a client accepts (`Accept-Encoding`
//! with its q-values), a streaming encoder for the responses the gateway compresses, and a
//! bounded decoder for the compressed request bodies its stages read.
//!
//! gzip and deflate go through flate2 (on zlib-rs), brotli through the `brotli` crate, zstd
//! through the reference library. A decoder never produces more than its caller's limit, so a
//! small compressed body that expands without end (a decompression bomb) costs at most that
//! limit in memory before it is refused.

use std::io::{self, Read, Write};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

/// A content coding the gateway can produce or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// The zlib format (RFC 1950), which is what HTTP's `deflate` means.
    Deflate,
    Brotli,
    Zstd,
}

/// The codings responses are compressed with, best first: when a client accepts several
/// with the same q-value, the first of them here is used.
pub const RESPONSE_CODINGS: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];

/// gzip at level 1, like nginx's default `gzip_comp_level`: on a gateway the CPU per
/// request matters more than the last percent of size.
const GZIP_LEVEL: u32 = 1;
/// Brotli's quality 4 is its fast setting for dynamic content, with a 4 MiB window.
const BROTLI_QUALITY: u32 = 4;
const BROTLI_WINDOW_LOG: u32 = 22;
/// zstd's default level.
const ZSTD_LEVEL: i32 = 3;
/// The largest zstd window a request body may ask the decoder for (8 MiB): a frame that
/// declares a larger one is refused instead of allocating it.
const ZSTD_MAX_WINDOW_LOG: u32 = 23;

impl Coding {
    /// The coding's token in `Content-Encoding` and `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }

    fn of_token(token: &str) -> Option<Coding> {
        Some(match token.to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Brotli,
            "zstd" => Coding::Zstd,
            _ => return None,
        })
    }

    /// The coding a message's `Content-Encoding` names: `Ok(None)` when it has none (or
    /// `identity`), `Err` with the header's text when it is a coding the gateway cannot
    /// read, or several stacked.
    pub fn of_message(headers: &HeaderMap) -> Result<Option<Coding>, String> {
        let mut found = None;
        for value in headers.get_all(http::header::CONTENT_ENCODING) {
            let text = value.to_str().map_err(|_| "a Content-Encoding that is not text".to_string())?;
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("identity") {
                    continue;
                }
                let coding = Coding::of_token(token).ok_or_else(|| format!("`{token}`"))?;
                if found.replace(coding).is_some() {
                    return Err(format!("`{text}` (more than one coding)"));
                }
            }
        }
        Ok(found)
    }
}

/// The response coding a request's `Accept-Encoding` asks for: the one of
/// [`RESPONSE_CODINGS`] with the highest q-value above zero (`*` stands for any coding not
/// named), ties going to the earlier. `None` when the client accepts none of them.
pub fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let mut named = [None::<u16>; RESPONSE_CODINGS.len()];
    let mut any = None::<u16>;
    for value in headers.get_all(http::header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for element in text.split(',') {
            let mut parts = element.split(';');
            let token = parts.next().unwrap_or("").trim();
            let Some(q) = quality(parts) else { continue };
            if token == "*" {
                any = Some(q);
            } else if let Some(coding) = Coding::of_token(token)
                && let Some(i) = RESPONSE_CODINGS.iter().position(|c| *c == coding)
            {
                named[i] = Some(q);
            }
        }
    }
    let mut best: Option<(Coding, u16)> = None;
    for (coding, q) in RESPONSE_CODINGS.iter().zip(named) {
        let q = q.or(any).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

/// An element's q-value in thousandths (1000 without one); `None` when it is malformed, so
/// the element is ignored.
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    let mut q = 1000;
    for param in params {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
        q = match whole {
            "0" => thousandths,
            "1" if thousandths == 0 => 1000,
            _ => return None,
        };
    }
    Some(q)
}

/// A response body being compressed, chunk by chunk. Each chunk is flushed through, so a
/// streamed response reaches the client as it comes and not when the encoder's buffer fills.
pub struct Encoder(EncoderKind);

enum EncoderKind {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let coding = match self.0 {
            EncoderKind::Gzip(_) => Coding::Gzip,
            EncoderKind::Deflate(_) => Coding::Deflate,
            EncoderKind::Brotli(_) => Coding::Brotli,
            EncoderKind::Zstd(_) => Coding::Zstd,
        };
        f.debug_tuple("Encoder").field(&coding).finish()
    }
}

impl Encoder {
    pub fn new(coding: Coding) -> io::Result<Encoder> {
        let level = flate2::Compression::new(GZIP_LEVEL);
        Ok(Encoder(match coding {
            Coding::Gzip => EncoderKind::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            Coding::Deflate => EncoderKind::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), level)),
            Coding::Brotli => EncoderKind::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_WINDOW_LOG,
            ))),
            Coding::Zstd => EncoderKind::Zstd(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?),
        }))
    }

    /// Compresses `chunk` and returns what is ready to send (everything written so far).
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<Bytes> {
        let output = match &mut self.0 {
            EncoderKind::Gzip(e) => {
                e.write_all(chunk)?;
                e.flush()?;
                e.get_mut()
            }
            EncoderKind::Deflate(e) => {
                e.write_all(chunk)?;
                e.flush()?;
                e.get_mut()
            }
            EncoderKind::Brotli(e) => {
                e.write_all(chunk)?;
                e.flush()?;
                e.get_mut()
            }
            EncoderKind::Zstd(e) => {
                e.write_all(chunk)?;
                e.flush()?;
                e.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(output)))
    }

    /// Ends the stream and returns its last bytes.
    pub fn finish(self) -> io::Result<Bytes> {
        let output = match self.0 {
            EncoderKind::Gzip(e) => e.finish()?,
            EncoderKind::Deflate(e) => e.finish()?,
            EncoderKind::Brotli(mut e) => {
                e.flush()?;
                e.into_inner()
            }
            EncoderKind::Zstd(e) => e.finish()?,
        };
        Ok(Bytes::from(output))
    }
}

/// Why a compressed body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// It decodes to more than the limit.
    TooLarge,
    /// It is not a valid stream of its coding.
    Malformed,
}

/// The body `input` decoded from `coding`: all of it, up to `limit` bytes
/// ([`DecodeError::TooLarge`] beyond), or with `prefix` only its first `limit` bytes.
pub fn decode(coding: Coding, input: &[u8], limit: u64, prefix: bool) -> Result<Bytes, DecodeError> {
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(input)),
        Coding::Brotli => Box::new(brotli::Decompressor::new(input, 4096)),
        Coding::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|_| DecodeError::Malformed)?;
            decoder.window_log_max(ZSTD_MAX_WINDOW_LOG).map_err(|_| DecodeError::Malformed)?;
            Box::new(decoder)
        }
    };
    // One byte more than the limit tells a body of exactly the limit from a longer one.
    let take = if prefix { limit } else { limit.saturating_add(1) };
    let mut output = Vec::new();
    match reader.take(take).read_to_end(&mut output) {
        Ok(_) => {}
        // A prefix may stop inside the stream; what was decoded before is the prefix.
        Err(_) if prefix && output.len() as u64 == limit => {}
        Err(_) => return Err(DecodeError::Malformed),
    }
    if output.len() as u64 > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(Bytes::from(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn negotiation_honours_q_values_and_prefers_zstd_on_ties() {
        assert_eq!(negotiate(&accept("gzip, deflate, br, zstd")), Some(Coding::Zstd));
        assert_eq!(negotiate(&accept("gzip, deflate, br")), Some(Coding::Brotli));
        assert_eq!(negotiate(&accept("gzip;q=1.0, br;q=0.5")), Some(Coding::Gzip));
        assert_eq!(negotiate(&accept("br;q=0, gzip;q=0.001")), Some(Coding::Gzip));
        assert_eq!(negotiate(&accept("*")), Some(Coding::Zstd));
        assert_eq!(negotiate(&accept("*;q=0.5, zstd;q=0, br;q=0")), Some(Coding::Gzip));
        assert_eq!(negotiate(&accept("X-GZIP")), Some(Coding::Gzip));
        assert_eq!(negotiate(&accept("identity")), None);
        assert_eq!(negotiate(&accept("gzip;q=0")), None);
        assert_eq!(negotiate(&HeaderMap::new()), None);
        // Malformed q-values drop their element, not the header.
        assert_eq!(negotiate(&accept("zstd;q=2, br;q=0.5x, gzip;q=0.5")), Some(Coding::Gzip));
        assert_eq!(negotiate(&accept("zstd;q=1.5, gzip;q=0.1234")), None);
    }

    #[test]
    fn content_encoding_names_one_readable_coding() {
        let of = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_str(value).unwrap());
            Coding::of_message(&headers)
        };
        assert_eq!(of("gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(of("identity"), Ok(None));
        assert_eq!(Coding::of_message(&HeaderMap::new()), Ok(None));
        assert!(of("compress").is_err());
        assert!(of("gzip, br").is_err());
    }

    #[test]
    fn every_coding_round_trips_through_its_encoder_chunk_by_chunk() {
        let text: Vec<u8> = (0..5000).flat_map(|i| format!("{{\"id\":{i},\"name\":\"pet\"}},").into_bytes()).collect();
        for coding in [Coding::Zstd, Coding::Brotli, Coding::Gzip, Coding::Deflate] {
            let mut encoder = Encoder::new(coding).unwrap();
            let mut compressed = Vec::new();
            for chunk in text.chunks(7000) {
                compressed.extend_from_slice(&encoder.write(chunk).unwrap());
            }
            compressed.extend_from_slice(&encoder.finish().unwrap());
            assert!(compressed.len() * 5 < text.len(), "{coding:?}: {} bytes", compressed.len());
            let decoded = decode(coding, &compressed, text.len() as u64, false).unwrap();
            assert_eq!(decoded, text, "{coding:?}");
        }
    }

    #[test]
    fn a_body_that_decodes_past_the_limit_is_refused_or_cut_to_a_prefix() {
        let zeros = vec![0u8; 1 << 20];
        for coding in [Coding::Zstd, Coding::Brotli, Coding::Gzip, Coding::Deflate] {
            let mut encoder = Encoder::new(coding).unwrap();
            let mut bomb = encoder.write(&zeros).unwrap().to_vec();
            bomb.extend_from_slice(&encoder.finish().unwrap());
            assert!(bomb.len() * 64 < zeros.len(), "{coding:?}: {} bytes", bomb.len());
            assert_eq!(decode(coding, &bomb, 64 * 1024, false), Err(DecodeError::TooLarge), "{coding:?}");
            assert_eq!(decode(coding, &bomb, 1 << 20, false).unwrap().len(), 1 << 20);
            assert_eq!(decode(coding, &bomb, 100, true).unwrap().len(), 100);
            assert_eq!(decode(coding, b"not compressed at all", 100, false), Err(DecodeError::Malformed));
        }
    }
}
