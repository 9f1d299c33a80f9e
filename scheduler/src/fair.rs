//! Fair queueing, pure: strict priority classes (`high` > `normal` > `low`);
//! inside a class, virtual token counters (VTC, Sheng et al., "Fairness in
//! Serving Large Language Models", OSDI 2024).
//!
//! Each tenant's counter grows by the service it receives, divided by its
//! weight: input tokens when a request is dispatched, 2 × output tokens as
//! they stream. The next request comes from the backlogged tenant with the
//! smallest counter (FIFO inside a tenant). A tenant that becomes backlogged
//! again is lifted to the smallest counter of those still backlogged, so idle
//! time is not banked. Invariant: for two continuously backlogged tenants of
//! one class, the gap in weighted service stays within 2·U (U = the largest
//! single request's cost).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tollgate_shared::config::Priority;

pub(crate) const CLASSES: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

pub(crate) fn class_index(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// A counter value that can be ordered (counters are finite and non-negative).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Vtc(f64);

impl Eq for Vtc {}

impl PartialOrd for Vtc {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Vtc {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What fairness needs to know of a queued request.
#[derive(Debug, Clone)]
pub struct Fairness {
    pub tenant: Arc<str>,
    pub priority: Priority,
    pub weight: u32,
    /// Input tokens, charged when the request is dispatched.
    pub input_tokens: u64,
}

#[derive(Debug)]
struct Entry<T> {
    seq: u64,
    enqueued_ms: u64,
    item: T,
}

#[derive(Debug)]
struct TenantQueue<T> {
    counter: f64,
    weight: f64,
    queue: VecDeque<Entry<T>>,
}

#[derive(Debug)]
struct Class<T> {
    tenants: HashMap<Arc<str>, TenantQueue<T>>,
    /// Backlogged tenants ordered by counter (ties by name, for determinism).
    backlogged: BTreeSet<(Vtc, Arc<str>)>,
    /// The counter of the last tenant served: the floor for a tenant that
    /// comes back when nobody else is backlogged.
    last_served: f64,
}

impl<T> Default for Class<T> {
    fn default() -> Self {
        Class {
            tenants: HashMap::new(),
            backlogged: BTreeSet::new(),
            last_served: 0.0,
        }
    }
}

/// Per-tenant view for admin pages and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantView {
    pub tenant: Arc<str>,
    pub priority: Priority,
    pub depth: usize,
    pub counter: f64,
    pub oldest_enqueued_ms: Option<u64>,
}

#[derive(Debug)]
pub struct FairQueue<T> {
    classes: [Class<T>; 3],
    /// seq → (class, tenant), to find a request that leaves or comes back.
    index: HashMap<u64, (usize, Arc<str>)>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            classes: Default::default(),
            index: HashMap::new(),
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a request of class `priority` would be first in line: nothing
    /// of its class or a higher one is waiting.
    pub fn first_in_line(&self, priority: Priority) -> bool {
        self.classes[..=class_index(priority)]
            .iter()
            .all(|c| c.backlogged.is_empty())
    }

    pub fn depth(&self, priority: Priority) -> usize {
        self.classes[class_index(priority)]
            .tenants
            .values()
            .map(|t| t.queue.len())
            .sum()
    }

    pub fn tenant_depth(&self, priority: Priority, tenant: &str) -> usize {
        self.classes[class_index(priority)]
            .tenants
            .get(tenant)
            .map_or(0, |t| t.queue.len())
    }

    /// Queues a request behind every earlier one of its tenant (by `seq`).
    pub fn push(&mut self, seq: u64, now_ms: u64, f: &Fairness, item: T) {
        let ci = class_index(f.priority);
        let class = &mut self.classes[ci];
        let floor = class
            .backlogged
            .first()
            .map_or(class.last_served, |(c, _)| c.0);
        let tq = class
            .tenants
            .entry(f.tenant.clone())
            .or_insert_with(|| TenantQueue {
                counter: floor,
                weight: f64::from(f.weight.max(1)),
                queue: VecDeque::new(),
            });
        tq.weight = f64::from(f.weight.max(1));
        if tq.queue.is_empty() {
            // Coming back from idle: no credit for the time away.
            tq.counter = tq.counter.max(floor);
            class.backlogged.insert((Vtc(tq.counter), f.tenant.clone()));
        }
        let at = tq.queue.partition_point(|e| e.seq < seq);
        tq.queue.insert(
            at,
            Entry {
                seq,
                enqueued_ms: now_ms,
                item,
            },
        );
        self.index.insert(seq, (ci, f.tenant.clone()));
    }

    /// The request that should go next, without taking it: (seq, item).
    pub fn peek(&self) -> Option<(u64, &T)> {
        self.classes.iter().find_map(|class| {
            let (_, tenant) = class.backlogged.first()?;
            let e = class.tenants.get(tenant)?.queue.front()?;
            Some((e.seq, &e.item))
        })
    }

    /// Takes the request that should go next and charges its input tokens.
    pub fn pop(&mut self, input_tokens_of: impl Fn(&T) -> u64) -> Option<(u64, T, u64)> {
        let ci = self.classes.iter().position(|c| !c.backlogged.is_empty())?;
        let class = &mut self.classes[ci];
        let (vtc, tenant) = class.backlogged.pop_first()?;
        let tq = class.tenants.get_mut(&tenant)?;
        let e = tq.queue.pop_front()?;
        tq.counter = vtc.0 + input_tokens_of(&e.item) as f64 / tq.weight;
        class.last_served = tq.counter;
        if !tq.queue.is_empty() {
            class.backlogged.insert((Vtc(tq.counter), tenant));
        }
        self.index.remove(&e.seq);
        Some((e.seq, e.item, e.enqueued_ms))
    }

    /// Removes a queued request (its client left, or it was shed).
    pub fn remove(&mut self, seq: u64) -> Option<T> {
        let (ci, tenant) = self.index.remove(&seq)?;
        let class = &mut self.classes[ci];
        let tq = class.tenants.get_mut(&tenant)?;
        let at = tq.queue.iter().position(|e| e.seq == seq)?;
        let e = tq.queue.remove(at)?;
        if tq.queue.is_empty() {
            class.backlogged.remove(&(Vtc(tq.counter), tenant));
        }
        Some(e.item)
    }

    /// Charges service to a tenant: `2 × output tokens` as they stream, or a
    /// negative refund when a dispatched request comes back unserved.
    pub fn charge(&mut self, priority: Priority, tenant: &str, service: f64) {
        let class = &mut self.classes[class_index(priority)];
        let Some(tq) = class.tenants.get_mut(tenant) else {
            return;
        };
        let was_backlogged = !tq.queue.is_empty();
        let key: Arc<str> = tenant.into();
        if was_backlogged {
            class.backlogged.remove(&(Vtc(tq.counter), key.clone()));
        }
        tq.counter = (tq.counter + service / tq.weight).max(0.0);
        if was_backlogged {
            class.backlogged.insert((Vtc(tq.counter), key));
        }
    }

    /// The newest request of the lowest non-empty class below `above`, to shed
    /// so that a request of class `above` can be queued.
    pub fn victim_below(&self, above: Priority) -> Option<u64> {
        let from = class_index(above) + 1;
        self.classes[from.min(3)..]
            .iter()
            .rev()
            .find(|c| !c.backlogged.is_empty())
            .and_then(|c| {
                c.tenants
                    .values()
                    .filter_map(|t| t.queue.back())
                    .map(|e| e.seq)
                    .max()
            })
    }

    pub fn view(&self) -> Vec<TenantView> {
        let mut out = Vec::new();
        for (ci, class) in self.classes.iter().enumerate() {
            for (tenant, tq) in &class.tenants {
                out.push(TenantView {
                    tenant: tenant.clone(),
                    priority: CLASSES[ci],
                    depth: tq.queue.len(),
                    counter: tq.counter,
                    oldest_enqueued_ms: tq.queue.iter().map(|e| e.enqueued_ms).min(),
                });
            }
        }
        out.sort_by(|a, b| (a.priority, &a.tenant).cmp(&(b.priority, &b.tenant)));
        out
    }
}

#[cfg(test)]
mod tests;
