use super::*;

fn f(tenant: &str, priority: Priority, weight: u32, input: u64) -> Fairness {
    Fairness {
        tenant: tenant.into(),
        priority,
        weight,
        input_tokens: input,
    }
}

/// Items are (tenant, input tokens) so `pop` can charge them.
type Q = FairQueue<(&'static str, u64)>;

fn push(q: &mut Q, seq: u64, tenant: &'static str, p: Priority, w: u32, input: u64) {
    q.push(seq, seq, &f(tenant, p, w, input), (tenant, input));
}

fn pop(q: &mut Q) -> &'static str {
    q.pop(|(_, input)| *input).unwrap().1.0
}

#[test]
fn strict_classes_come_first_whatever_the_counters() {
    let mut q = Q::default();
    push(&mut q, 1, "low", Priority::Low, 1, 1);
    push(&mut q, 2, "norm", Priority::Normal, 1, 1_000_000);
    push(&mut q, 3, "norm", Priority::Normal, 1, 1);
    push(&mut q, 4, "high", Priority::High, 1, 1);
    assert_eq!(
        [pop(&mut q), pop(&mut q), pop(&mut q), pop(&mut q)],
        ["high", "norm", "norm", "low"]
    );
    assert!(q.pop(|_| 0).is_none());
}

#[test]
fn equal_tenants_alternate_and_weights_share_proportionally() {
    let mut q = Q::default();
    for i in 0..6 {
        push(&mut q, i, "a", Priority::Normal, 1, 100);
        push(&mut q, 100 + i, "b", Priority::Normal, 2, 100);
    }
    let order: Vec<_> = (0..9).map(|_| pop(&mut q)).collect();
    // b weighs 2: two of b's requests for one of a's.
    assert_eq!(order.iter().filter(|t| **t == "b").count(), 6);
    assert_eq!(order.iter().filter(|t| **t == "a").count(), 3);
}

#[test]
fn fifo_inside_a_tenant_and_requeue_keeps_the_old_place() {
    let mut q = Q::default();
    push(&mut q, 1, "a", Priority::Normal, 1, 1);
    push(&mut q, 2, "a", Priority::Normal, 1, 1);
    let (seq, item, _) = q.pop(|(_, i)| *i).unwrap();
    assert_eq!(seq, 1);
    // Came back unserved: refund, and back in front of seq 2.
    q.charge(Priority::Normal, "a", -1.0);
    q.push(seq, 0, &f("a", Priority::Normal, 1, 1), item);
    assert_eq!(q.pop(|_| 0).unwrap().0, 1);
    assert_eq!(q.pop(|_| 0).unwrap().0, 2);
}

#[test]
fn idle_time_is_not_banked() {
    let mut q = Q::default();
    for i in 0..50 {
        push(&mut q, i, "busy", Priority::Normal, 1, 100);
    }
    for _ in 0..40 {
        pop(&mut q);
    }
    // "idle" arrives late: it starts at the busy tenant's counter, not at 0,
    // so it does not get 40 requests in a row.
    for i in 0..10 {
        push(&mut q, 1000 + i, "idle", Priority::Normal, 1, 100);
    }
    let order: Vec<_> = (0..6).map(|_| pop(&mut q)).collect();
    assert!(order.contains(&"busy"), "{order:?}");
}

#[test]
fn removal_and_shedding_victims() {
    let mut q = Q::default();
    push(&mut q, 1, "a", Priority::Low, 1, 1);
    push(&mut q, 2, "b", Priority::Low, 1, 1);
    push(&mut q, 3, "c", Priority::Normal, 1, 1);
    assert_eq!(
        q.victim_below(Priority::High),
        Some(2),
        "newest of the lowest class"
    );
    assert_eq!(q.victim_below(Priority::Low), None);
    assert_eq!(q.remove(2), Some(("b", 1)));
    assert_eq!(q.remove(2), None);
    assert_eq!(q.victim_below(Priority::Normal), Some(1));
    assert_eq!(q.len(), 2);
    assert_eq!(q.depth(Priority::Low), 1);
}

/// xorshift64*: deterministic randomness for the property tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Simulates a server with `slots` sequences, each running request producing
/// one token per step; checks fairness properties at every step.
fn simulate(seed: u64, weights: [u32; 2], steps: usize) {
    const MAX_IN: u64 = 64;
    const MAX_OUT: u64 = 32;
    const SLOTS: usize = 4;
    let mut rng = Rng(seed | 1);
    let mut q: FairQueue<(usize, u64, u64)> = FairQueue::default();
    let names: [Arc<str>; 2] = ["a".into(), "b".into()];
    let mut seq = 0;
    // Weighted service actually received: (input + 2 × output) / weight.
    let mut service = [0f64; 2];
    let mut running: Vec<(usize, u64)> = Vec::new();
    let mut last_served_step = [0usize; 2];
    let u = MAX_IN.max(2 * SLOTS as u64 * MAX_OUT) as f64;
    // Both tenants stay backlogged: keep 8 requests queued each.
    for step in 0..steps {
        for t in 0..2 {
            while q.tenant_depth(Priority::Normal, &names[t]) < 8 {
                seq += 1;
                let (input, out) = (1 + rng.next(MAX_IN), 1 + rng.next(MAX_OUT));
                let fair = Fairness {
                    tenant: names[t].clone(),
                    priority: Priority::Normal,
                    weight: weights[t],
                    input_tokens: input,
                };
                q.push(seq, step as u64, &fair, (t, input, out));
            }
        }
        while running.len() < SLOTS {
            let (_, (t, input, out), _) = q.pop(|(_, i, _)| *i).unwrap();
            service[t] += input as f64 / f64::from(weights[t]);
            running.push((t, out));
            last_served_step[t] = step;
        }
        for (t, left) in running.iter_mut() {
            q.charge(Priority::Normal, &names[*t], 2.0);
            service[*t] += 2.0 / f64::from(weights[*t]);
            *left -= 1;
        }
        running.retain(|(_, left)| *left > 0);
        let gap = (service[0] - service[1]).abs();
        assert!(
            gap <= 2.0 * u,
            "seed {seed} step {step}: weighted service gap {gap} > 2U = {}",
            2.0 * u
        );
        for (t, last) in last_served_step.iter().enumerate() {
            assert!(
                step - last <= 64,
                "seed {seed}: tenant {t} starved at step {step}"
            );
        }
    }
}

#[test]
fn property_two_backlogged_tenants_stay_within_2u_and_nobody_starves() {
    for seed in 1..=200 {
        simulate(seed, [1, 1], 300);
    }
    for seed in 1..=100 {
        simulate(seed * 7919, [1, 3], 300);
    }
}
