//! vLLM's waiting queue: arrival order (FCFS), or by `priority` (lower
//! first) then arrival. A preempted request goes back to the front under
//! FCFS; under the priority policy it keeps its (priority, arrival) place.

use std::collections::{BTreeSet, VecDeque};

use super::engine::ReqId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulingPolicy {
    Fcfs,
    Priority,
}

impl SchedulingPolicy {
    pub fn parse(s: &str) -> Option<SchedulingPolicy> {
        match s {
            "fcfs" => Some(SchedulingPolicy::Fcfs),
            "priority" => Some(SchedulingPolicy::Priority),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SchedulingPolicy::Fcfs => "fcfs",
            SchedulingPolicy::Priority => "priority",
        }
    }
}

/// The waiting queue: arrival order, or (priority, arrival) order.
#[derive(Debug)]
pub enum WaitQueue {
    Fcfs(VecDeque<ReqId>),
    Priority(BTreeSet<(i64, u64, ReqId)>),
}

impl WaitQueue {
    pub fn new(policy: SchedulingPolicy) -> WaitQueue {
        match policy {
            SchedulingPolicy::Fcfs => WaitQueue::Fcfs(VecDeque::new()),
            SchedulingPolicy::Priority => WaitQueue::Priority(BTreeSet::new()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            WaitQueue::Fcfs(q) => q.len(),
            WaitQueue::Priority(q) => q.len(),
        }
    }

    pub fn peek(&self) -> Option<ReqId> {
        match self {
            WaitQueue::Fcfs(q) => q.front().copied(),
            WaitQueue::Priority(q) => q.first().map(|e| e.2),
        }
    }

    pub fn push(&mut self, id: ReqId, key: (i64, u64), front: bool) {
        match self {
            WaitQueue::Fcfs(q) if front => q.push_front(id),
            WaitQueue::Fcfs(q) => q.push_back(id),
            WaitQueue::Priority(q) => {
                q.insert((key.0, key.1, id));
            }
        }
    }

    pub fn pop(&mut self) {
        match self {
            WaitQueue::Fcfs(q) => {
                q.pop_front();
            }
            WaitQueue::Priority(q) => {
                q.pop_first();
            }
        }
    }

    pub fn remove(&mut self, id: ReqId, key: (i64, u64)) {
        match self {
            WaitQueue::Fcfs(q) => q.retain(|&x| x != id),
            WaitQueue::Priority(q) => {
                q.remove(&(key.0, key.1, id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcfs_front_pushes_go_first() {
        let mut q = WaitQueue::new(SchedulingPolicy::Fcfs);
        q.push(1, (0, 0), false);
        q.push(2, (0, 1), false);
        q.push(3, (0, 2), true);
        assert_eq!(q.peek(), Some(3));
        q.remove(1, (0, 0));
        q.pop();
        assert_eq!((q.peek(), q.len()), (Some(2), 1));
    }

    #[test]
    fn priority_orders_by_value_then_arrival() {
        let mut q = WaitQueue::new(SchedulingPolicy::Priority);
        q.push(1, (5, 0), false);
        q.push(2, (-1, 1), false);
        q.push(3, (-1, 2), true);
        let mut order = Vec::new();
        while let Some(id) = q.peek() {
            order.push(id);
            q.pop();
        }
        assert_eq!(order, [2, 3, 1]);
    }
}
