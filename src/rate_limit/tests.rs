use super::*;
use crate::flow::fake::FakeHost;

const PER_MINUTE_30: RateLimit = RateLimit {
    input_per_unit: Some(30),
    output_per_unit: Some(100),
    unit_seconds: 60,
    client_header: None,
    client_slots: 0,
    global: None,
};

fn input() -> Shape {
    Shape::of(&PER_MINUTE_30, Direction::Input).unwrap()
}

#[test]
fn a_bucket_starts_full_and_refills_continuously_up_to_its_burst() {
    let s = input();
    let b = s.full(1_000);
    assert_eq!(tokens(b), 30);
    let b = apply(s, b, Draw::Take(30), Direction::Input).unwrap();
    assert_eq!(tokens(b), 0);
    // 30 per minute: one token every 2 s, continuously (not a fixed window).
    assert_eq!(tokens(s.refill(b, 3_000)), 1);
    assert_eq!(s.refill(b, 2_000).milli, 500);
    assert_eq!(tokens(s.refill(b, 61_000)), 30);
    // Never above the burst, however long idle.
    assert_eq!(tokens(s.refill(b, 10_000_000)), 30);
    // A clock going back refills nothing.
    assert_eq!(s.refill(b, 0), b);
}

#[test]
fn takes_that_do_not_fit_are_refused_with_the_wait() {
    let s = input();
    let b = apply(s, s.full(0), Draw::Take(25), Direction::Input).unwrap();
    let r = apply(s, b, Draw::Take(10), Direction::Input).unwrap_err();
    assert_eq!(r.remaining, 5);
    assert_eq!(r.limit, 30);
    // 5 tokens short at 0.5 token/s: 10 s.
    assert_eq!(r.retry_after_ms, Some(10_000));
    let h = r.headers();
    assert!(h.contains(&("retry-after", "10".to_string())), "{h:?}");
    assert!(h.contains(&("x-ratelimit-remaining-tokens", "5".to_string())));
    assert!(h.contains(&("x-ratelimit-limit-tokens", "30".to_string())));
    // More than the whole budget never fits: no retry-after.
    let never = apply(s, s.full(0), Draw::Take(31), Direction::Input).unwrap_err();
    assert_eq!(never.retry_after_ms, None);
    assert!(!never.headers().iter().any(|(k, _)| *k == "retry-after"));
}

#[test]
fn output_is_debited_into_deficit_and_refused_until_it_refills() {
    let s = Shape::of(&PER_MINUTE_30, Direction::Output).unwrap();
    let b = s.full(0);
    assert!(apply(s, b, Draw::Require, Direction::Output).is_ok());
    // A long answer: 250 tokens against a budget of 100.
    let b = apply(s, b, Draw::Debit(250), Direction::Output).unwrap();
    assert_eq!(b.milli, -150_000);
    let r = apply(s, b, Draw::Require, Direction::Output).unwrap_err();
    assert_eq!(r.direction, Direction::Output);
    // 151 tokens to come back to one, at 100/min: 90.6 s.
    assert_eq!(r.retry_after_ms, Some(90_600));
    assert!(apply(s, s.refill(b, 90_600), Draw::Require, Direction::Output).is_ok());
}

#[test]
fn units_convert_to_milliseconds() {
    for (unit_seconds, per_ms_of_refill) in [
        (1u64, 1_000u64),
        (3_600, 3_600_000),
        (2_592_000, 2_592_000_000),
    ] {
        let s = Shape::of(
            &RateLimit {
                input_per_unit: Some(1),
                output_per_unit: None,
                unit_seconds,
                client_header: None,
                client_slots: 0,
                global: None,
            },
            Direction::Input,
        )
        .unwrap();
        let empty = Bucket { milli: 0, at_ms: 0 };
        assert_eq!(
            s.wait_ms(empty, 1),
            Some(per_ms_of_refill),
            "unit {unit_seconds}s"
        );
    }
    assert_eq!(
        Shape::of(&PER_MINUTE_30, Direction::Output)
            .unwrap()
            .per_unit,
        100
    );
    let input_only = RateLimit {
        output_per_unit: None,
        ..PER_MINUTE_30
    };
    assert_eq!(Shape::of(&input_only, Direction::Output), None);
}

fn take(h: &mut FakeHost, model: &str, n: u64) -> Result<(), Refusal> {
    draw(
        h,
        model,
        &PER_MINUTE_30,
        &[(Direction::Input, Draw::Take(n))],
        0,
    )
}

#[test]
fn every_worker_draws_from_one_shared_bucket() {
    // The draws of both workers go through the same shared data: 30 tokens in all.
    let mut h = FakeHost::default();
    let admitted = (0..40).filter(|_| take(&mut h, "m", 1).is_ok()).count();
    assert_eq!(admitted, 30);
    let refused = take(&mut h, "m", 1).unwrap_err();
    assert_eq!(refused.retry_after_ms, Some(2_000));
    // Other models have their own buckets.
    assert!(take(&mut h, "other", 30).is_ok());
}

#[test]
fn both_budgets_live_in_one_shared_value_updated_all_or_nothing() {
    let mut h = FakeHost::default();
    let admit = |h: &mut FakeHost, n: u64| {
        let draws = [
            (Direction::Output, Draw::Require),
            (Direction::Input, Draw::Take(n)),
        ];
        draw(
            h,
            &key("m", &PER_MINUTE_30, None),
            &PER_MINUTE_30,
            &draws,
            0,
        )
    };
    admit(&mut h, 10).unwrap();
    admit(&mut h, 10).unwrap();
    let debit = [(Direction::Output, Draw::Debit(150))];
    let k = key("m", &PER_MINUTE_30, None);
    draw(&mut h, &k, &PER_MINUTE_30, &debit, 0).unwrap();
    let stored = h.shared[&k].0.clone();
    assert_eq!(decode(Some(&stored), 0).map(tokens), Some(10));
    assert_eq!(decode(Some(&stored), 1).map(|b| b.milli), Some(-50_000));
    // Refused for output: the input budget is left as it was.
    let r = admit(&mut h, 5).unwrap_err();
    assert_eq!(r.direction, Direction::Output);
    let after = &h.shared[&k].0;
    assert_eq!(decode(Some(after), 0).map(tokens), Some(10));
    // A refusal and a `Require` alone write nothing.
    let writes = h.shared[&k].1;
    let require = [(Direction::Output, Draw::Require)];
    let _ = draw(&mut h, &k, &PER_MINUTE_30, &require, 0);
    assert_eq!(h.shared[&k].1, writes);
}

#[test]
fn per_client_budgets_are_separate_and_bounded() {
    let per_user = RateLimit {
        client_header: Some("x-user".into()),
        client_slots: 8,
        global: None,
        ..PER_MINUTE_30
    };
    let keys: std::collections::HashSet<String> = (0..1000)
        .map(|i| key("m", &per_user, Some(&format!("user-{i}"))))
        .collect();
    assert_eq!(keys.len(), 8, "a thousand clients share 8 buckets");
    let mut h = FakeHost::default();
    let alice = key("m", &per_user, Some("alice"));
    // Another client, in another slot.
    let bob = (0..)
        .map(|i| key("m", &per_user, Some(&format!("client-{i}"))))
        .find(|k| *k != alice)
        .unwrap();
    let take =
        |h: &mut FakeHost, k: &str| draw(h, k, &per_user, &[(Direction::Input, Draw::Take(30))], 0);
    take(&mut h, &alice).unwrap();
    assert!(take(&mut h, &alice).is_err());
    take(&mut h, &bob).unwrap();
    assert_eq!(key("m", &PER_MINUTE_30, Some("alice")), "modelroute.rl.m");
}

#[test]
fn debits_wait_while_the_worker_has_limited_requests_running_and_ride_the_next_admission() {
    let mut h = FakeHost::default();
    let k = key("m", &PER_MINUTE_30, None);
    let mut debits = Debits::default();
    let admit = |h: &mut FakeHost, debits: &mut Debits, n: u64| {
        let draws = [
            (Direction::Output, Draw::Debit(debits.take(&k))),
            (Direction::Output, Draw::Require),
            (Direction::Input, Draw::Take(n)),
        ];
        let r = draw(h, &k, &PER_MINUTE_30, &draws, 0);
        if r.is_ok() {
            debits.admitted();
        }
        r
    };
    let output = |h: &FakeHost| decode(Some(&h.shared[&k].0), 1).map(|b| b.milli);
    admit(&mut h, &mut debits, 1).unwrap();
    admit(&mut h, &mut debits, 1).unwrap();
    let writes = h.shared[&k].1;
    // One of two running ends: its 60 tokens are owed, not written.
    debits.ended(&mut h, &k, &PER_MINUTE_30, 60, 0);
    assert_eq!((h.shared[&k].1, output(&h)), (writes, Some(100_000)));
    // The next admission carries them in its one read and one write.
    let gets = h.shared_gets.borrow().len();
    admit(&mut h, &mut debits, 1).unwrap();
    assert_eq!(h.shared_gets.borrow().len(), gets + 1);
    assert_eq!((h.shared[&k].1, output(&h)), (writes + 1, Some(40_000)));
    assert!(debits.is_empty());
    // Owed again, then a refusal for input: the debit is still written, the take is not.
    debits.ended(&mut h, &k, &PER_MINUTE_30, 30, 0);
    let r = admit(&mut h, &mut debits, 1_000).unwrap_err();
    assert_eq!(r.direction, Direction::Input);
    assert_eq!(output(&h), Some(10_000));
    assert_eq!(decode(Some(&h.shared[&k].0), 0).map(tokens), Some(27));
    // The worker's last running request ending writes at once, into deficit (a sequential
    // client sees its own debit).
    debits.ended(&mut h, &k, &PER_MINUTE_30, 20, 0);
    assert_eq!(output(&h), Some(-10_000));
    assert!(debits.is_empty());
}

#[test]
fn the_tick_writes_what_is_owed_to_every_budget() {
    let mut h = FakeHost::default();
    let mut debits = Debits::default();
    let (a, b) = (
        key("a", &PER_MINUTE_30, None),
        key("b", &PER_MINUTE_30, None),
    );
    debits.admitted();
    debits.admitted();
    debits.admitted();
    debits.ended(&mut h, &a, &PER_MINUTE_30, 10, 0);
    debits.ended(&mut h, &b, &PER_MINUTE_30, 20, 0);
    assert!(h.shared.is_empty());
    debits.flush(&mut h, 0);
    assert_eq!(decode(Some(&h.shared[&a].0), 1).map(tokens), Some(90));
    assert_eq!(decode(Some(&h.shared[&b].0), 1).map(tokens), Some(80));
    assert!(debits.is_empty());
}

#[test]
fn a_budget_two_workers_create_at_once_keeps_both_draws() {
    // Both workers find no bucket yet; the other one's first draw lands between this one's
    // read and write. Shared data has no create-if-absent of its own: a write that does not
    // check would wipe the other's draw, and both requests would be paid for as one.
    let limit = PER_MINUTE_30;
    let key = "modelroute.ratelimit.pool";
    let mut other = FakeHost::default();
    draw(
        &mut other,
        key,
        &limit,
        &[(Direction::Input, Draw::Take(5))],
        0,
    )
    .unwrap();
    let mut h = FakeHost {
        racing_write: Some((key.to_string(), other.shared[key].0.clone())),
        ..FakeHost::default()
    };
    draw(&mut h, key, &limit, &[(Direction::Input, Draw::Take(5))], 0).unwrap();
    let (bytes, _) = h.shared_get(key);
    let left = decode(bytes.as_deref(), Direction::Input as usize).unwrap();
    assert_eq!(tokens(left), 20);
}
