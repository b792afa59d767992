//! Finding where a run of ordinary bytes ends, sixteen bytes at a time: where a JSON string's
//! text stops (`mapping::json`: at a quote, a backslash or a control character), where
//! `$util.escapeJavaScript` stops copying (`mapping::eval`: at anything it escapes).
//!
//! A [`ByteSet`] names the bytes that end a run; [`ByteSet::run_length`] tests sixteen at a time
//! with SSE2, which every x86-64 CPU has, and one at a time elsewhere.
//!
//! ```
//! use meridian_dataplane::byte_scan::ByteSet;
//! const QUOTE_OR_CONTROL: ByteSet = ByteSet { below: 0x20, beyond_ascii: false, also: b"\"" };
//! assert_eq!(QUOTE_OR_CONTROL.run_length(b"plain text\" and more"), 10);
//! assert_eq!(QUOTE_OR_CONTROL.run_length("é, all of it".as_bytes()), 13);
//! ```

/// The bytes that end a run: those below `below`, those beyond ASCII if `beyond_ascii`, and
/// each of `also`.
#[derive(Debug, Clone, Copy)]
pub struct ByteSet {
    pub below: u8,
    pub beyond_ascii: bool,
    pub also: &'static [u8],
}

impl ByteSet {
    /// Whether `byte` ends a run.
    pub fn contains(&self, byte: u8) -> bool {
        byte < self.below || (self.beyond_ascii && !byte.is_ascii()) || self.also.contains(&byte)
    }

    /// How many bytes at the start of `bytes` are not in the set.
    #[inline(always)]
    pub fn run_length(&self, bytes: &[u8]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if bytes.len() >= 16 {
            let mut start = 0;
            while let Some(chunk) = bytes.get(start..start + 16) {
                // SAFETY: SSE2 is part of x86-64 itself: every CPU this code runs on has it.
                let found = unsafe { self.found_among(chunk) };
                if found != 0 {
                    return start + found.trailing_zeros() as usize;
                }
                start += 16;
            }
            if start == bytes.len() {
                return start;
            }
            // Fewer than 16 bytes are left: the text's last 16 cover them, and the bits of the
            // bytes already tested are shifted out.
            let left = bytes.len() - start;
            // SAFETY: as above.
            let found = unsafe { self.found_among(&bytes[bytes.len() - 16..]) } >> (16 - left);
            return start + if found != 0 { found.trailing_zeros() as usize } else { left };
        }
        bytes.iter().take_while(|&&b| !self.contains(b)).count()
    }

    /// Which of the 16 bytes of `chunk` are in the set, one bit each (bit `i` for byte `i`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    #[inline]
    fn found_among(&self, chunk: &[u8]) -> u32 {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8, _mm_setzero_si128,
        };
        assert!(chunk.len() >= 16);
        // SAFETY: `chunk` has at least 16 readable bytes, and the load needs no alignment.
        let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
        let mut found = match (self.beyond_ascii, self.below) {
            // Compared as signed bytes, everything from 0x80 up is negative: one comparison
            // finds those and the ones below `below`.
            (true, below) if below < 0x80 => _mm_cmplt_epi8(v, _mm_set1_epi8(below as i8)),
            (beyond_ascii, below) => {
                let mut found = _mm_setzero_si128();
                if below > 0 {
                    // A byte is below `below` exactly when the larger of it and `below - 1`
                    // (unsigned) is `below - 1`.
                    let top = _mm_set1_epi8((below - 1) as i8);
                    found = _mm_cmpeq_epi8(_mm_max_epu8(v, top), top);
                }
                if beyond_ascii {
                    found = _mm_or_si128(found, _mm_cmplt_epi8(v, _mm_setzero_si128()));
                }
                found
            }
        };
        for &byte in self.also {
            found = _mm_or_si128(found, _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8)));
        }
        _mm_movemask_epi8(found) as u32
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SETS: [ByteSet; 5] = [
        ByteSet { below: 0x20, beyond_ascii: false, also: b"\"\\" },
        ByteSet { below: 0x20, beyond_ascii: true, also: b"\"'\\/\x7f" },
        ByteSet { below: 0, beyond_ascii: false, also: b"" },
        ByteSet { below: 0x90, beyond_ascii: true, also: b"" },
        ByteSet { below: 0, beyond_ascii: true, also: b"a" },
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Sixteen at a time (with the last, overlapping chunk) finds what one at a time finds.
        #[test]
        fn a_run_ends_where_testing_each_byte_ends_it(bytes in prop::collection::vec(any::<u8>(), 0..70), set in 0..5usize) {
            let set = SETS[set];
            let expected = bytes.iter().take_while(|&&b| !set.contains(b)).count();
            prop_assert_eq!(set.run_length(&bytes), expected);
        }

        #[test]
        fn a_run_of_ordinary_bytes_of_any_length_ends_at_its_stop(length in 0..70usize, stop in prop::sample::select(vec![b'"', b'\\', 0u8, 0x1f])) {
            let mut bytes = vec![b'a'; length];
            bytes.push(stop);
            bytes.extend_from_slice(b"after the stop, more than sixteen bytes");
            prop_assert_eq!(SETS[0].run_length(&bytes), length);
        }
    }
}
