//! Boxing a large future where it will live.
//!
//! `Box::pin(make())` builds the future on the stack and then copies all of it into the
//! heap: for a request's future (several KiB: every state it may pass through, nested) that
//! copy is the biggest single `memmove` of the request path. Taking the heap slot first and
//! writing the future into it lets the compiler build the future in place.
use std::pin::Pin;

/// The future `make` returns, pinned in a box it was written into directly.
#[inline(always)]
pub fn in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
