//! Requests in flight per key (a gateway, a shard). A key with none left is
//! forgotten, so the map never holds more keys than requests in flight.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone)]
pub struct InFlight<K> {
    counts: HashMap<K, u32>,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        InFlight {
            counts: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> InFlight<K> {
    /// One more request of `key` in flight.
    pub fn start(&mut self, key: K) {
        *self.counts.entry(key).or_insert(0) += 1;
    }

    /// One request of `key` ended (nothing happens if none was in flight).
    pub fn end<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(n) = self.counts.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(key);
            }
        }
    }

    /// Requests of `key` in flight.
    pub fn get<Q>(&self, key: &Q) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// Keys with requests in flight.
    pub fn keys(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_forgets_keys_with_none_left() {
        let mut f: InFlight<String> = InFlight::default();
        f.start("a".into());
        f.start("a".into());
        f.start("b".into());
        assert_eq!((f.get("a"), f.get("b"), f.get("c")), (2, 1, 0));
        f.end("a");
        f.end("b");
        f.end("c");
        assert_eq!((f.get("a"), f.get("b"), f.keys()), (1, 0, 1));
        f.end("a");
        f.end("a");
        assert_eq!((f.get("a"), f.keys()), (0, 0));
    }
}
