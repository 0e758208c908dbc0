//! How many streams each caller has open, so that one caller cannot hold more than its
//! share of the controller (a proxy needs one policy and one discovery stream; a reconnect
//! briefly two of each).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Open streams per key, at most `max` each.
#[derive(Debug, Clone)]
pub struct OpenStreams<K> {
    open: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
}

impl<K: Eq + Hash + Clone> OpenStreams<K> {
    /// At most `max` streams open at once per key.
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// Counts one more stream for `key` until the returned guard is dropped, or, with `max`
    /// already open, refuses with that count.
    pub fn try_open(&self, key: K) -> Result<OpenStream<K>, usize> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_default();
        if *count >= self.max {
            return Err(*count);
        }
        *count += 1;
        Ok(OpenStream {
            open: self.open.clone(),
            key,
        })
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct OpenStream<K: Eq + Hash> {
    open: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash> Drop for OpenStream<K> {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_at_most_its_share_and_closed_streams_free_it() {
        let streams = OpenStreams::new(2);
        let a1 = streams.try_open("a").unwrap();
        let _a2 = streams.try_open("a").unwrap();
        assert_eq!(streams.try_open("a").err(), Some(2), "a third is refused");
        let _b = streams.try_open("b").expect("another key is not held back");
        drop(a1);
        let _a3 = streams
            .try_open("a")
            .expect("a closed stream frees its place");
        drop(_b);
        assert!(
            !streams.open.lock().unwrap().contains_key("b"),
            "no entry is kept for a key with nothing open"
        );
    }
}
