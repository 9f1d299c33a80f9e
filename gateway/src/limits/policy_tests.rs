//! The model's own cases, with time given: windows, leases, days, bounded state.

use super::*;

fn dim(subject: &str, kind: LimitKind, limit: u64) -> Dim {
    Dim {
        subject: subject.into(),
        kind,
        limit,
    }
}

#[test]
fn requests_window_admits_exactly_the_limit_and_reopens_a_minute_later() {
    let mut c = Counters::default();
    let dims = [dim("c", LimitKind::RequestsPerMinute, 3)];
    let t0 = 1_000_000_500;
    for i in 0..3 {
        assert!(matches!(
            c.admit(t0 + i, "k", &dims, 0, 1000),
            Verdict::Admitted { .. }
        ));
    }
    match c.admit(t0 + 10, "k", &dims, 0, 1000) {
        Verdict::Limited {
            kind,
            retry_after_ms,
            headroom,
        } => {
            assert_eq!(kind, LimitKind::RequestsPerMinute);
            // The bucket of second 1_000_000 frees at 1_000_060.000 s.
            assert_eq!(retry_after_ms, Some(59_490));
            assert_eq!(headroom.requests.unwrap().remaining, 0);
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(
        c.admit(t0 + 59_499, "k", &dims, 0, 1000),
        Verdict::Limited { .. }
    ));
    assert!(matches!(
        c.admit(t0 + 59_500, "k", &dims, 0, 1000),
        Verdict::Admitted { .. }
    ));
}

#[test]
fn one_refused_dimension_debits_none() {
    let mut c = Counters::default();
    let dims = [
        dim("c-rpm", LimitKind::RequestsPerMinute, 10),
        dim("t-tpm", LimitKind::TokensPerMinute, 100),
    ];
    assert!(matches!(
        c.admit(0, "k", &dims, 80, 1000),
        Verdict::Admitted { .. }
    ));
    assert!(matches!(
        c.admit(1, "k", &dims, 30, 1000),
        Verdict::Limited {
            kind: LimitKind::TokensPerMinute,
            ..
        }
    ));
    let Verdict::Admitted { headroom, .. } = c.admit(2, "k", &dims, 20, 1000) else {
        panic!()
    };
    assert_eq!(
        headroom.requests.unwrap().remaining,
        8,
        "the refused request was not counted"
    );
    assert_eq!(headroom.tokens.unwrap().remaining, 0);
}

#[test]
fn settling_returns_unused_tokens_to_their_bucket() {
    let mut c = Counters::default();
    let dims = [
        dim("t", LimitKind::TokensPerMinute, 100),
        dim("d", LimitKind::DailyTokens, 1000),
    ];
    let Verdict::Admitted {
        second,
        deadline_ms,
        ..
    } = c.admit(5_000, "k", &dims, 90, 1000)
    else {
        panic!()
    };
    assert!(matches!(
        c.admit(6_000, "k", &dims, 20, 1000),
        Verdict::Limited { .. }
    ));
    c.settle("k", &dims, deadline_ms, second, -85);
    assert!(matches!(
        c.admit(7_000, "k", &dims, 20, 1000),
        Verdict::Admitted { .. }
    ));
}

#[test]
fn a_request_larger_than_the_limit_is_never_admitted() {
    let mut c = Counters::default();
    let dims = [dim("t", LimitKind::TokensPerMinute, 100)];
    assert!(matches!(
        c.admit(0, "k", &dims, 101, 1000),
        Verdict::Limited {
            retry_after_ms: None,
            ..
        }
    ));
}

#[test]
fn leases_end_with_the_request_or_by_their_deadline() {
    let mut c = Counters::default();
    let dims = [dim("c", LimitKind::Concurrency, 1)];
    let Verdict::Admitted { deadline_ms, .. } = c.admit(0, "k", &dims, 0, 1000) else {
        panic!()
    };
    assert_eq!(deadline_ms, 1000);
    assert!(matches!(
        c.admit(10, "k", &dims, 0, 1000),
        Verdict::Limited {
            kind: LimitKind::Concurrency,
            ..
        }
    ));
    c.settle("k", &dims, deadline_ms, 0, 0);
    assert!(matches!(
        c.admit(20, "k", &dims, 0, 1000),
        Verdict::Admitted { .. }
    ));
    // The second is never settled (its gateway died): it lapses at 1020 ms.
    assert!(matches!(
        c.admit(1019, "k", &dims, 0, 1000),
        Verdict::Limited { .. }
    ));
    assert!(matches!(
        c.admit(1021, "k", &dims, 0, 1000),
        Verdict::Admitted { .. }
    ));
}

#[test]
fn daily_budget_resets_at_utc_midnight() {
    let mut c = Counters::default();
    let dims = [dim("d", LimitKind::DailyTokens, 100)];
    let late = DAY_SECS * 1000 - 10_000;
    assert!(matches!(
        c.admit(late, "k", &dims, 100, 1),
        Verdict::Admitted { .. }
    ));
    match c.admit(late + 1, "k", &dims, 1, 1) {
        Verdict::Limited { retry_after_ms, .. } => assert_eq!(retry_after_ms, Some(9_999)),
        v => panic!("{v:?}"),
    }
    assert!(matches!(
        c.admit(DAY_SECS * 1000, "k", &dims, 1, 1),
        Verdict::Admitted { .. }
    ));
}

#[test]
fn one_subject_counts_requests_and_tokens_in_the_same_buckets() {
    let mut c = Counters::default();
    let dims = [
        dim("c:a", LimitKind::RequestsPerMinute, 2),
        dim("c:a", LimitKind::TokensPerMinute, 100),
    ];
    let Verdict::Admitted { headroom, .. } = c.admit(0, "k", &dims, 60, 1000) else {
        panic!()
    };
    assert_eq!(headroom.requests.unwrap().remaining, 1);
    assert_eq!(headroom.tokens.unwrap().remaining, 40);
    assert!(matches!(
        c.admit(1, "k", &dims, 50, 1000),
        Verdict::Limited {
            kind: LimitKind::TokensPerMinute,
            ..
        }
    ));
    assert!(matches!(
        c.admit(2, "k", &dims, 40, 1000),
        Verdict::Admitted { .. }
    ));
    assert!(matches!(
        c.admit(3, "k", &dims, 0, 1000),
        Verdict::Limited {
            kind: LimitKind::RequestsPerMinute,
            ..
        }
    ));
}

#[test]
fn a_subjects_state_holds_one_window_and_its_live_leases() {
    let mut c = Counters::default();
    let dims = [
        dim("c:a", LimitKind::RequestsPerMinute, 1_000),
        dim("c:a", LimitKind::TokensPerMinute, 1_000_000),
        dim("c:a", LimitKind::Concurrency, 1_000),
        dim("c:a", LimitKind::DailyTokens, 1 << 40),
    ];
    // One request a second for ten minutes, none settled, leases of 5 s.
    for i in 0..600u64 {
        let v = c.admit(1_000_000 + i * 1000, "k", &dims, 10, 5_000);
        assert!(matches!(v, Verdict::Admitted { .. }), "{i}: {v:?}");
    }
    assert_eq!(c.state("k", "c:a").unwrap().size(), (60, 5));
}

#[test]
fn a_lease_is_given_back_by_its_deadline_and_a_lapsed_one_gives_back_nothing() {
    let mut c = Counters::default();
    let dims = [dim("c", LimitKind::Concurrency, 2)];
    let admit = |c: &mut Counters, at| match c.admit(at, "k", &dims, 0, 1000) {
        Verdict::Admitted { deadline_ms, .. } => Some(deadline_ms),
        Verdict::Limited { .. } => None,
    };
    // Two leases with one deadline: giving back one leaves the other held.
    let a = admit(&mut c, 0).unwrap();
    let b = admit(&mut c, 0).unwrap();
    assert_eq!(a, b);
    assert_eq!(admit(&mut c, 500), None);
    c.settle("k", &dims, a, 0, 0);
    assert_eq!(admit(&mut c, 600), Some(1600));
    assert_eq!(admit(&mut c, 700), None);
    // At 1001 the second lapsed; its request settling late frees no other.
    assert_eq!(admit(&mut c, 1001), Some(2001));
    c.settle("k", &dims, b, 0, 0);
    assert_eq!(admit(&mut c, 1002), None);
}
