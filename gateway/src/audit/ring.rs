//! Without Redis, the audit API reads the latest records of this process
//! from memory: a ring of the last [`RING_LEN`] records (the file stays the
//! durable record). Cursors are `m<sequence>`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::query::{AuditQuery, Line, Page};

/// Records the ring keeps.
pub const RING_LEN: usize = 10_000;

#[derive(Default)]
pub struct Ring {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    lines: VecDeque<(u64, Arc<Line>)>,
}

impl Ring {
    pub fn push(&self, line: Arc<Line>) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let seq = g.next_seq;
        g.next_seq += 1;
        if g.lines.len() == RING_LEN {
            g.lines.pop_front();
        }
        g.lines.push_back((seq, line));
    }

    /// The page `q` asks for; `None` when its cursor is not one of this store's.
    pub fn query(&self, q: &AuditQuery) -> Option<Page> {
        let before = match &q.cursor {
            Some(c) => c.strip_prefix('m')?.parse::<u64>().ok()?,
            None => u64::MAX,
        };
        let Ok(g) = self.inner.lock() else {
            return Some(Page::default());
        };
        let mut page = Page {
            source: "memory",
            ..Page::default()
        };
        let mut last = None;
        let mut more = false;
        for (seq, line) in g.lines.iter().rev().filter(|(seq, _)| *seq < before) {
            if page.lines.len() == q.limit {
                more = true;
                break;
            }
            last = Some(*seq);
            if q.in_time(line.ts_ms) && q.matches(line.client_id.as_deref(), line.tenant.as_deref())
            {
                page.lines.push(line.json.clone());
            }
        }
        page.next_cursor = last.filter(|_| more).map(|s| format!("m{s}"));
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts_ms: u64, client: &str) -> Arc<Line> {
        Arc::new(Line {
            ts_ms,
            client_id: Some(client.into()),
            tenant: Some("t".into()),
            json: format!("{{\"ts\":{ts_ms}}}"),
        })
    }

    #[test]
    fn pages_run_newest_first_and_filters_apply() {
        let ring = Ring::default();
        for i in 0..10 {
            ring.push(line(i, if i % 2 == 0 { "even" } else { "odd" }));
        }
        let mut q = AuditQuery {
            client_id: Some("even".into()),
            limit: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = ring.query(&q).unwrap();
            seen.extend(page.lines.clone());
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(
            seen,
            [
                "{\"ts\":8}",
                "{\"ts\":6}",
                "{\"ts\":4}",
                "{\"ts\":2}",
                "{\"ts\":0}"
            ]
        );
        q.cursor = Some("12-0".into());
        assert!(ring.query(&q).is_none(), "a Redis cursor is not ours");
    }

    #[test]
    fn the_ring_keeps_the_latest() {
        let ring = Ring::default();
        for i in 0..(RING_LEN as u64 + 5) {
            ring.push(line(i, "c"));
        }
        let q = AuditQuery {
            limit: 1000,
            since_ms: Some(0),
            until_ms: Some(4),
            ..Default::default()
        };
        // The first five were pushed out.
        let mut q2 = q.clone();
        let mut found = 0;
        loop {
            let page = ring.query(&q2).unwrap();
            found += page.lines.len();
            match page.next_cursor {
                Some(c) => q2.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(found, 0);
    }
}
