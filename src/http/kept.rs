//! Values kept per thread for reuse: emptied buffers and header maps that the next connection
//! or request on the same thread takes instead of allocating. Each kind keeps its own rule for
//! what is worth keeping; this is the bounded list they share.

use std::cell::RefCell;

/// A bounded list of kept values, for a `thread_local!`.
#[derive(Debug)]
pub struct Kept<T> {
    values: RefCell<Vec<T>>,
    most: usize,
}

impl<T> Kept<T> {
    /// Keeps at most `most` values; more given back are dropped.
    pub const fn new(most: usize) -> Kept<T> {
        Kept {
            values: RefCell::new(Vec::new()),
            most,
        }
    }

    /// The last value kept, if `fits` it.
    pub fn take_if(&self, fits: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut values = self.values.borrow_mut();
        match values.last() {
            Some(v) if fits(v) => values.pop(),
            _ => None,
        }
    }

    /// Keeps `value` unless the list is full (then it is dropped).
    pub fn put(&self, value: T) {
        let mut values = self.values.borrow_mut();
        if values.len() < self.most {
            values.push(value);
        }
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.values.borrow().len()
    }

    /// Nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_its_bound_and_gives_back_only_what_fits() {
        let kept = Kept::new(2);
        assert_eq!(kept.take_if(|_: &u32| true), None);
        kept.put(1);
        kept.put(2);
        kept.put(3);
        assert_eq!(kept.len(), 2, "the third is dropped");
        assert_eq!(kept.take_if(|v| *v == 1), None, "only the last is offered");
        assert_eq!(kept.len(), 2);
        assert_eq!(kept.take_if(|v| *v == 2), Some(2));
        assert_eq!(kept.take_if(|_| true), Some(1));
        assert!(kept.is_empty());
    }
}
