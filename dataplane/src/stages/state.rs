//! What the stages of one request keep between its phases, by type: a cache fill under way,
//! an idempotency claim, the template a response will be rendered with, who an authorizer
//! let in.
//!
//! A stage owns its state as a plain value: it inserts it in one phase, reads or changes it
//! in the next (`get`, `get_mut`), and takes it back when it is done with it (`remove`).
//! Whatever is left is dropped with the exchange, so a request abandoned halfway releases
//! what its stages held (an idempotency claim, a cache fill others wait on). A request keeps
//! a handful of values at most, so they sit in a short list rather than a map.

use std::any::{Any, TypeId};

/// One request's stage state; see the module documentation.
#[derive(Default)]
pub struct ExchangeState {
    values: Vec<(TypeId, Box<dyn Any + Send + Sync>)>,
}

impl ExchangeState {
    /// Keeps `value`, returning the value of its type kept before, if any.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        match self.get_mut::<T>() {
            Some(kept) => Some(std::mem::replace(kept, value)),
            None => {
                self.values.push((TypeId::of::<T>(), Box::new(value)));
                None
            }
        }
    }

    /// The value of type `T`, if one is kept.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values.iter().find(|(id, _)| *id == TypeId::of::<T>()).and_then(|(_, value)| value.downcast_ref())
    }

    /// The value of type `T`, if one is kept, to change in place.
    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.values.iter_mut().find(|(id, _)| *id == TypeId::of::<T>()).and_then(|(_, value)| value.downcast_mut())
    }

    /// The value of type `T`, kept until now, if any.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        let index = self.values.iter().position(|(id, _)| *id == TypeId::of::<T>())?;
        let (_, value) = self.values.swap_remove(index);
        value.downcast().ok().map(|value| *value)
    }

    /// The value of type `T`, kept from now on as its default if there was none.
    pub fn get_or_insert_default<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        let index = match self.values.iter().position(|(id, _)| *id == TypeId::of::<T>()) {
            Some(index) => index,
            None => {
                self.values.push((TypeId::of::<T>(), Box::new(T::default())));
                self.values.len() - 1
            }
        };
        // The entry at `index` holds a `T`: its `TypeId` says so.
        match self.values[index].1.downcast_mut() {
            Some(value) => value,
            None => unreachable!("a value kept under the TypeId of another type"),
        }
    }
}

impl std::fmt::Debug for ExchangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeState").field("values", &self.values.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, PartialEq, Default)]
    struct Count(u32);
    /// Counts its drops: what a stage leaves behind is released with the exchange.
    struct Held(Arc<AtomicUsize>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn values_are_kept_by_type_changed_in_place_taken_back_and_dropped_with_the_state() {
        let mut state = ExchangeState::default();
        assert_eq!(state.get::<Count>(), None);
        assert_eq!(state.insert(Count(1)), None);
        assert_eq!(state.insert("a str"), None);
        assert_eq!(state.insert(Count(2)), Some(Count(1)), "one value per type; the earlier one comes back");
        if let Some(count) = state.get_mut::<Count>() {
            count.0 += 1;
        }
        assert_eq!(state.get::<Count>(), Some(&Count(3)));
        assert_eq!(state.get::<&str>(), Some(&"a str"));
        assert_eq!(state.remove::<Count>(), Some(Count(3)));
        assert_eq!(state.remove::<Count>(), None);
        state.get_or_insert_default::<Count>().0 += 5;
        state.get_or_insert_default::<Count>().0 += 5;
        assert_eq!(state.get::<Count>(), Some(&Count(10)));
        let drops = Arc::new(AtomicUsize::new(0));
        state.insert(Held(drops.clone()));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(state);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "a value left in the state is dropped with it");
    }
}
