//! The paged KV cache and its prefix cache, after vLLM V1's block pool.
//!
//! The cache is a fixed number of blocks of `block_size` tokens. A block is
//! either in use (reference count > 0) or on the free queue. Full blocks of
//! a prompt are identified by a hash chained over all tokens up to their end;
//! such a block stays findable after its request finishes, until it is
//! reused (evicted) for new data. Freed blocks go to the back of the free
//! queue and allocation takes from the front, so the least recently freed
//! block is evicted first; a request frees its blocks tail first, so a
//! shared prefix outlives the request's private suffix.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

const NIL: u32 = u32::MAX;

/// Chained hashes of the full blocks of a token sequence.
pub fn block_hashes(
    token_ids: impl IntoIterator<Item = u32>,
    block_size: u32,
    salt: Option<&str>,
) -> Vec<u64> {
    let block_size = block_size.max(1) as usize;
    let mut hashes = Vec::new();
    let mut parent: u64 = 0;
    let mut block = Vec::with_capacity(block_size);
    for id in token_ids {
        block.push(id);
        if block.len() == block_size {
            let mut h = std::hash::DefaultHasher::new();
            parent.hash(&mut h);
            block.hash(&mut h);
            // The salt keys the first block, and so the whole chain.
            if hashes.is_empty() {
                salt.hash(&mut h);
            }
            parent = h.finish();
            hashes.push(parent);
            block.clear();
        }
    }
    hashes
}

#[derive(Debug, Clone, Copy)]
struct Block {
    ref_cnt: u32,
    hash: Option<u64>,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    free_head: u32,
    free_tail: u32,
    num_free: u32,
    cached: HashMap<u64, u32>,
}

impl BlockPool {
    pub fn new(num_blocks: u32) -> BlockPool {
        let mut pool = BlockPool {
            blocks: vec![
                Block {
                    ref_cnt: 0,
                    hash: None,
                    prev: NIL,
                    next: NIL,
                };
                num_blocks as usize
            ],
            free_head: NIL,
            free_tail: NIL,
            num_free: 0,
            cached: HashMap::new(),
        };
        for b in 0..num_blocks {
            pool.push_free(b);
        }
        pool
    }

    #[cfg(test)]
    pub fn num_blocks(&self) -> u32 {
        self.blocks.len() as u32
    }

    pub fn num_free(&self) -> u32 {
        self.num_free
    }

    /// Share of blocks in use, 0..=1 (cached but unused blocks count as free, as in vLLM).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - f64::from(self.num_free) / self.blocks.len() as f64
    }

    /// How many leading blocks of `hashes` (at most `max_blocks`) are cached.
    pub fn cached_prefix(&self, hashes: &[u64], max_blocks: usize) -> usize {
        hashes
            .iter()
            .take(max_blocks)
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    /// Whether `new_blocks` fresh blocks can be had after reusing the first
    /// `hit_blocks` cached blocks of `hashes` (cached blocks that sit on the
    /// free queue stop being free once reused).
    pub fn can_allocate(&self, hashes: &[u64], hit_blocks: usize, new_blocks: u32) -> bool {
        let reclaimed = hashes[..hit_blocks]
            .iter()
            .filter(|h| {
                self.cached
                    .get(h)
                    .is_some_and(|&b| self.blocks[b as usize].ref_cnt == 0)
            })
            .count() as u32;
        new_blocks <= self.num_free.saturating_sub(reclaimed)
    }

    /// Takes a reference on the first `hit_blocks` cached blocks of `hashes`.
    pub fn reuse_cached(&mut self, hashes: &[u64], hit_blocks: usize, out: &mut Vec<u32>) {
        for h in &hashes[..hit_blocks] {
            if let Some(&b) = self.cached.get(h) {
                if self.blocks[b as usize].ref_cnt == 0 {
                    self.unlink(b);
                }
                self.blocks[b as usize].ref_cnt += 1;
                out.push(b);
            }
        }
    }

    /// Appends `n` fresh blocks to `out`, evicting cached data as needed.
    /// Allocates nothing and returns false when fewer than `n` are free.
    pub fn allocate(&mut self, n: u32, out: &mut Vec<u32>) -> bool {
        if n > self.num_free {
            return false;
        }
        for _ in 0..n {
            let b = self.free_head;
            self.unlink(b);
            let block = &mut self.blocks[b as usize];
            if let Some(h) = block.hash.take()
                && self.cached.get(&h) == Some(&b)
            {
                self.cached.remove(&h);
            }
            block.ref_cnt = 1;
            out.push(b);
        }
        true
    }

    /// Registers a full block under its hash, unless that hash is already cached.
    pub fn cache(&mut self, block: u32, hash: u64) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            self.blocks[block as usize].hash = Some(hash);
        }
    }

    /// Drops one reference on each block, tail first.
    pub fn free(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let block = &mut self.blocks[b as usize];
            block.ref_cnt = block.ref_cnt.saturating_sub(1);
            if block.ref_cnt == 0 {
                self.push_free(b);
            }
        }
    }

    fn push_free(&mut self, b: u32) {
        let tail = self.free_tail;
        self.blocks[b as usize].prev = tail;
        self.blocks[b as usize].next = NIL;
        if tail == NIL {
            self.free_head = b;
        } else {
            self.blocks[tail as usize].next = b;
        }
        self.free_tail = b;
        self.num_free += 1;
    }

    fn unlink(&mut self, b: u32) {
        let Block { prev, next, .. } = self.blocks[b as usize];
        if prev == NIL {
            self.free_head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.free_tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        self.blocks[b as usize].prev = NIL;
        self.blocks[b as usize].next = NIL;
        self.num_free -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chain_over_the_prefix_and_the_salt() {
        let a = block_hashes(0..40, 16, None);
        assert_eq!(a.len(), 2); // the partial third block has no hash
        let b = block_hashes((0..16).chain(100..124), 16, None);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        let c = block_hashes((0..16).chain(16..32), 16, None);
        assert_eq!(a, c);
        assert_ne!(block_hashes(0..16, 16, Some("s"))[0], a[0]);
    }

    #[test]
    fn allocate_free_and_count() {
        let mut pool = BlockPool::new(4);
        let mut mine = Vec::new();
        assert!(pool.allocate(3, &mut mine));
        assert_eq!((pool.num_free(), pool.usage()), (1, 0.75));
        assert!(!pool.allocate(2, &mut mine));
        assert_eq!(mine.len(), 3);
        pool.free(&mine);
        assert_eq!(pool.num_free(), 4);
    }

    #[test]
    fn freed_prefix_stays_cached_until_evicted_lru() {
        let mut pool = BlockPool::new(3);
        let hashes = [11, 22];
        let mut a = Vec::new();
        assert!(pool.allocate(2, &mut a));
        pool.cache(a[0], hashes[0]);
        pool.cache(a[1], hashes[1]);
        pool.free(&a);
        assert_eq!(pool.cached_prefix(&hashes, 2), 2);
        assert_eq!(pool.num_free(), 3);

        // Reusing both cached blocks leaves one free block for new data.
        assert!(pool.can_allocate(&hashes, 2, 1));
        assert!(!pool.can_allocate(&hashes, 2, 2));
        let mut b = Vec::new();
        pool.reuse_cached(&hashes, 2, &mut b);
        assert_eq!(b, a);
        assert!(pool.allocate(1, &mut b));
        pool.free(&b);

        // Freed tail first: the untouched block, then a[1], then a[0] (the prefix).
        let mut c = Vec::new();
        assert!(pool.allocate(2, &mut c));
        assert_eq!(
            pool.cached_prefix(&hashes, 2),
            1,
            "a[1] was evicted, a[0] kept"
        );
        assert!(c.contains(&a[1]) && !c.contains(&a[0]));
    }
}
