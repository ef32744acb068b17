//! XME's split arguments: one call per element of one or more arrays, the
//! arrays zipped, a shorter one repeating its last value, other arguments
//! going to every call. Feed the result to [`crate::Pool::map`]:
//!
//! ```
//! let calls: Vec<(u32, &str, u8)> = shmpool::split((vec![1, 2, 3], vec!["x"]), 9u8).unwrap().collect();
//! assert_eq!(calls, [(1, "x", 9), (2, "x", 9), (3, "x", 9)]);
//! ```

use std::fmt;

/// Why arguments could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SplitError {
    /// The split argument at this position (0-based) has no element: there
    /// is no value to repeat, and a silent empty run would hide the mistake.
    Empty {
        /// Which split argument.
        index: usize,
    },
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::Empty { index } => write!(f, "split argument {index} is empty"),
        }
    }
}

impl std::error::Error for SplitError {}

/// A tuple of arrays to split: `(Vec<A>,)`, `(Vec<A>, Vec<B>)`, up to four.
pub trait SplitArgs {
    /// One call's arguments with the shared value `S` last.
    type Call<S>;
    /// Calls in all: the longest array's length.
    fn calls(&self) -> usize;
    /// The first empty array, if any.
    fn first_empty(&self) -> Option<usize>;
    /// Call `i`'s arguments (each array's element `min(i, len - 1)`).
    fn call<S: Clone>(&self, i: usize, same: &S) -> Self::Call<S>;
}

fn at<T: Clone>(v: &[T], i: usize) -> T {
    v[i.min(v.len() - 1)].clone()
}

macro_rules! split_args {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Clone),+> SplitArgs for ($(Vec<$name>,)+) {
            type Call<S> = ($($name,)+ S);
            fn calls(&self) -> usize {
                [$(self.$idx.len()),+].into_iter().max().unwrap_or(0)
            }
            fn first_empty(&self) -> Option<usize> {
                [$(self.$idx.is_empty()),+].iter().position(|&e| e)
            }
            fn call<S: Clone>(&self, i: usize, same: &S) -> Self::Call<S> {
                ($(at(&self.$idx, i),)+ same.clone())
            }
        }
    };
}

split_args!(A 0);
split_args!(A 0, B 1);
split_args!(A 0, B 1, C 2);
split_args!(A 0, B 1, C 2, D 3);

/// The calls of `arrays` split element by element, each with a clone of
/// `same`, in call order.
pub fn split<T: SplitArgs, S: Clone>(arrays: T, same: S) -> Result<Split<T, S>, SplitError> {
    if let Some(index) = arrays.first_empty() {
        return Err(SplitError::Empty { index });
    }
    Ok(Split { n: arrays.calls(), arrays, same, next: 0 })
}

/// The calls [`split`] makes, in order.
#[derive(Debug, Clone)]
pub struct Split<T, S> {
    arrays: T,
    same: S,
    next: usize,
    n: usize,
}

impl<T: SplitArgs, S: Clone> Iterator for Split<T, S> {
    type Item = T::Call<S>;

    fn next(&mut self) -> Option<Self::Item> {
        (self.next < self.n).then(|| {
            self.next += 1;
            self.arrays.call(self.next - 1, &self.same)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.n - self.next;
        (left, Some(left))
    }
}

impl<T: SplitArgs, S: Clone> ExactSizeIterator for Split<T, S> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_arrays_repeat_their_last_value_and_empty_ones_are_errors() {
        let calls: Vec<_> = split((vec![1, 2, 3, 4], vec!['a', 'b'], vec![true]), "s").unwrap().collect();
        assert_eq!(calls, [(1, 'a', true, "s"), (2, 'b', true, "s"), (3, 'b', true, "s"), (4, 'b', true, "s")]);
        assert_eq!(split((vec![1], Vec::<u8>::new()), ()).unwrap_err(), SplitError::Empty { index: 1 });
        assert_eq!(split((vec![5u8],), 0).unwrap().len(), 1);
    }
}
