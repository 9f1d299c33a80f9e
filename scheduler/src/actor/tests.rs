use super::*;
use tollgate_shared::config::Priority;

fn settings(per_tenant: usize) -> Settings {
    Settings {
        bounds: Bounds {
            max_queue_per_tenant: per_tenant,
            max_queued_bytes: 1_000_000,
        },
        batch_window: Duration::from_millis(2),
        reserve: Reserve::default(),
    }
}

fn spec(tenant: &str, priority: Priority) -> JobSpec {
    JobSpec {
        tenant: tenant.into(),
        priority,
        weight: 1,
        input_tokens: 1,
        cost_tokens: 1,
        prefix: None,
        bytes: 10,
    }
}

fn one_slot(worker: &str) -> Vec<ShardCapacity> {
    vec![ShardCapacity {
        id: ShardId {
            worker: worker.into(),
            index: 0,
        },
        healthy: true,
        free_slots: 1,
        max_slots: 1,
        ..ShardCapacity::default()
    }]
}

/// Polls once after letting the actor run; `None` if still pending.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    // The actor runs on this test's runtime: yielding lets it drain its mailbox.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    std::future::poll_fn(|cx| match Pin::new(&mut *f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn grant_waits_for_capacity_and_lease_frees_it() {
    let s = Scheduler::start(settings(10));
    let h = s.handle();
    let first = h.submit(spec("t", Priority::Normal));
    let second = h.submit(spec("t", Priority::Normal));
    h.report("w".into(), one_slot("w"));
    let g1 = first.await.unwrap();
    assert_eq!(g1.shard.index, 0);
    let mut second = Box::pin(second);
    assert!(poll_once(&mut second).await.is_none(), "no slot yet");
    drop(g1);
    let g2 = second.await.unwrap();
    assert_eq!(g2.shard.worker.as_ref(), "w");
}

#[tokio::test(start_paused = true)]
async fn dropped_ticket_leaves_the_queue() {
    let s = Scheduler::start(settings(10));
    let h = s.handle();
    drop(h.submit(spec("t", Priority::Normal)));
    let waiting = h.submit(spec("t", Priority::Normal));
    h.report("w".into(), one_slot("w"));
    // The withdrawn request must not have taken the only slot.
    drop(waiting.await.unwrap());
    assert_eq!(h.stats().await.unwrap().depth, 0);
}

#[tokio::test(start_paused = true)]
async fn queue_full_is_reported() {
    let s = Scheduler::start(settings(1));
    let h = s.handle();
    let _a = h.submit(spec("t", Priority::Normal));
    let b = h.submit(spec("t", Priority::Normal));
    assert_eq!(b.await.err(), Some(Rejected::QueueFull));
}

#[tokio::test(start_paused = true)]
async fn shed_requests_are_told_so() {
    let s = Scheduler::start(Settings {
        bounds: Bounds {
            max_queue_per_tenant: 10,
            max_queued_bytes: 10,
        },
        batch_window: Duration::ZERO,
        reserve: Reserve::default(),
    });
    let h = s.handle();
    let low = h.submit(spec("l", Priority::Low));
    let _high = h.submit(spec("h", Priority::High));
    assert_eq!(low.await.err(), Some(Rejected::Shed));
    let another_low = h.submit(spec("l", Priority::Low));
    assert_eq!(another_low.await.err(), Some(Rejected::Overloaded));
}

#[tokio::test(start_paused = true)]
async fn busy_requeues_until_the_next_report() {
    let s = Scheduler::start(settings(10));
    let h = s.handle();
    h.report("w".into(), one_slot("w"));
    let g = h.submit(spec("t", Priority::Normal)).await.unwrap();
    let mut again = Box::pin(g.lease.busy());
    assert!(
        poll_once(&mut again).await.is_none(),
        "busy shard is skipped"
    );
    h.report("w".into(), one_slot("w"));
    assert!(again.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn streamed_output_moves_the_tenant_back_in_line() {
    let s = Scheduler::start(settings(10));
    let h = s.handle();
    h.report("w".into(), one_slot("w"));
    let a = h.submit(spec("a", Priority::Normal)).await.unwrap();
    // Queued while a runs: one of a's, then one of b's.
    let a2 = h.submit(spec("a", Priority::Normal));
    let b = h.submit(spec("b", Priority::Normal));
    a.lease.charge_output(1000);
    drop(a);
    h.report("w".into(), one_slot("w"));
    let b = b.await.unwrap();
    // The slot freed while two waited: it went out at the end of the batch window.
    assert_eq!(b.queued, Duration::from_millis(2));
    let mut a2 = Box::pin(a2);
    assert!(
        poll_once(&mut a2).await.is_none(),
        "a was charged for its output: b goes first"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_first_in_line_ends_the_batch_window() {
    let s = Scheduler::start(Settings {
        batch_window: Duration::from_secs(3600),
        ..settings(10)
    });
    let h = s.handle();
    h.report("w".into(), one_slot("w"));
    let running = h.submit(spec("l", Priority::Low)).await.unwrap();
    let mut queued = Box::pin(h.submit(spec("l", Priority::Low)));
    assert!(poll_once(&mut queued).await.is_none(), "the slot is taken");
    // Freed while a request waits: the window opens to gather more.
    drop(running);
    assert!(poll_once(&mut queued).await.is_none(), "the window is open");
    // Another low request is behind the waiting one: the window stays open.
    let mut later = Box::pin(h.submit(spec("l", Priority::Low)));
    assert!(poll_once(&mut later).await.is_none());
    assert!(poll_once(&mut queued).await.is_none());
    // A high request would be first in line: it ends the window and goes.
    let mut high = Box::pin(h.submit(spec("h", Priority::High)));
    let g = poll_once(&mut high).await.expect("granted at once");
    assert_eq!(g.unwrap().shard.index, 0);
    assert!(poll_once(&mut queued).await.is_none());
}

/// Polls once without yielding to any other task first.
fn poll_now<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    match Pin::new(f).poll(&mut Context::from_waker(waker)) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_finds_room_is_granted_before_submit_returns() {
    let s = Scheduler::start(settings(10));
    let h = s.handle();
    h.report("w".into(), one_slot("w"));
    // No other task runs between `submit` and this poll: the grant was made by `submit`.
    let mut t = h.submit(spec("t", Priority::Normal));
    let g = poll_now(&mut t).expect("granted in submit").unwrap();
    assert_eq!(g.shard.index, 0);
    let mut next = h.submit(spec("t", Priority::Normal));
    assert!(poll_now(&mut next).is_none(), "the only slot is taken");
    drop(g);
    assert!(next.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_grant_whose_ticket_is_dropped_unread_frees_its_slot() {
    let s = Scheduler::start(settings(10));
    let h = s.handle();
    h.report("w".into(), one_slot("w"));
    // Granted inside submit, then dropped before anyone read the grant.
    drop(h.submit(spec("t", Priority::Normal)));
    let mut t = h.submit(spec("t", Priority::Normal));
    assert!(poll_now(&mut t).expect("the slot came back").is_ok());
}

#[tokio::test(start_paused = true)]
async fn stopping_the_scheduler_tells_waiting_and_later_requests() {
    let s = Scheduler::start(settings(10));
    let h = s.handle();
    let waiting = h.submit(spec("t", Priority::Normal));
    drop(s);
    assert_eq!(waiting.await.err(), Some(Rejected::Closed));
    assert_eq!(
        h.submit(spec("t", Priority::Normal)).await.err(),
        Some(Rejected::Closed)
    );
}
