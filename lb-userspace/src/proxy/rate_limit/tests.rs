use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn limit(rps: u32, rpm: u32, burst_multiplier: u32) -> RateLimitConfig {
    RateLimitConfig { rps, rpm, burst_multiplier, ..RateLimitConfig::default() }
}

fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
}

const MS: u64 = 1_000;

/// Offers a request every `every` µs from `start` for `span` µs; how many were admitted.
fn offer(limiter: &Limiter, limit: &RateLimitConfig, who: IpAddr, start: u64, span: u64, every: u64) -> u64 {
    (0..span / every).filter(|i| limiter.admit_at(limit, "r", who, start + i * every).is_ok()).count() as u64
}

#[test]
fn a_burst_of_rps_times_the_multiplier_then_the_rate() {
    let limiter = Limiter::new(1024, 1024);
    let twenty = limit(20, 0, 5);
    // nginx's `limit_req burst=100 nodelay`: the first request and 100 more at once.
    let at_once = (0..200).filter(|_| limiter.admit_at(&twenty, "r", client(1), 0).is_ok()).count();
    assert_eq!(at_once, 101);
    assert_eq!(limiter.admit_at(&twenty, "r", client(1), 49 * MS).err(), Some(Refusal::Requests));
    assert!(limiter.admit_at(&twenty, "r", client(1), 50 * MS).is_ok(), "one per 50 ms after the burst");
    assert!(limiter.admit_at(&twenty, "r", client(1), 50 * MS).is_err());
    // Other clients and other routes have budgets of their own.
    assert!(limiter.admit_at(&twenty, "r", client(2), 50 * MS).is_ok());
    assert!(limiter.admit_at(&twenty, "other", client(1), 50 * MS).is_ok());
    // An IPv4-mapped peer is the IPv4 client.
    let mapped = IpAddr::V6(Ipv4Addr::from(0x0A00_0001).to_ipv6_mapped());
    assert!(limiter.admit_at(&twenty, "r", mapped, 50 * MS).is_err());
    // Multiplier 0 is nginx's burst=0: one at a time.
    let strict = limit(10, 0, 0);
    assert!(limiter.admit_at(&strict, "s", client(3), 0).is_ok());
    assert!(limiter.admit_at(&strict, "s", client(3), 99 * MS).is_err());
    assert!(limiter.admit_at(&strict, "s", client(3), 100 * MS).is_ok());
}

#[test]
fn the_rate_holds_within_ten_percent_over_a_bounded_run() {
    for (rps, rpm) in [(20, 0), (7, 0), (0, 600), (0, 90)] {
        let limiter = Limiter::new(1024, 1024);
        let config = limit(rps, rpm, 5);
        let per_second = if rps > 0 { f64::from(rps) } else { f64::from(rpm) / 60.0 };
        let burst = if rps > 0 { rps * 5 } else { rpm * 5 };
        // Spend the burst, then offer ten times the rate for 20 s (simulated).
        for _ in 0..=burst {
            assert!(limiter.admit_at(&config, "r", client(1), 0).is_ok());
        }
        let admitted = offer(&limiter, &config, client(1), 0, 20_000 * MS, (100_000.0 / per_second) as u64);
        let expected = 20.0 * per_second;
        assert!(
            (admitted as f64 - expected).abs() <= expected * 0.1,
            "rps {rps} rpm {rpm}: {admitted} admitted in 20 s, expected {expected}"
        );
        // Idle for a while, the whole burst is back (and no more).
        let later = 1_000_000 * MS;
        let again =
            (0..2 * burst).filter(|_| limiter.admit_at(&config, "r", client(1), later).is_ok()).count();
        assert_eq!(again as u32, burst + 1, "rps {rps} rpm {rpm}");
    }
}

#[test]
fn both_rates_apply_and_a_refusal_costs_nothing() {
    let limiter = Limiter::new(1024, 1024);
    // rps allows 11 at once, rpm only 3: the rpm refusals give their rps request back.
    let both = limit(10, 3, 1);
    let admitted = (0..20).filter(|_| limiter.admit_at(&both, "r", client(1), 0).is_ok()).count();
    assert_eq!(admitted, 4);
    let rps_only = limit(10, 0, 1);
    // The same route's rps bucket has taken 4 of its 11.
    let more = (0..20).filter(|_| limiter.admit_at(&rps_only, "r", client(1), 0).is_ok()).count();
    assert_eq!(more, 7);
}

#[test]
fn the_allowlist_is_never_limited() {
    let limiter = Limiter::new(1024, 1024);
    let mut config = limit(1, 0, 0);
    config.connections = 1;
    config.allowlist = vec!["10.0.0.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
    let held: Vec<_> = (0..50).map(|_| limiter.admit_at(&config, "r", client(5), 0).unwrap()).collect();
    assert!(held.iter().all(Option::is_none), "nothing is counted for an allowlisted client");
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    assert!((0..50).all(|_| limiter.admit_at(&config, "r", v6, 0).is_ok()));
    let outside = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let _first = limiter.admit_at(&config, "r", outside, 0).unwrap();
    assert!(limiter.admit_at(&config, "r", outside, 0).is_err());
}

#[test]
fn connections_count_requests_in_progress() {
    let limiter = Limiter::new(1024, 1024);
    let config = RateLimitConfig { connections: 2, ..RateLimitConfig::default() };
    let first = limiter.admit_at(&config, "r", client(1), 0).unwrap();
    let second = limiter.admit_at(&config, "r", client(1), 0).unwrap();
    assert!(first.is_some() && second.is_some());
    assert_eq!(limiter.admit_at(&config, "r", client(1), 0).err(), Some(Refusal::Connections));
    assert!(limiter.admit_at(&config, "r", client(2), 0).is_ok(), "another client has its own count");
    drop(first);
    let third = limiter.admit_at(&config, "r", client(1), 0).unwrap();
    assert!(limiter.admit_at(&config, "r", client(1), 0).is_err());
    drop((second, third));
    // A connection refused by the request rate is not left counted.
    let mut both = limit(1, 0, 0);
    both.connections = 1;
    assert!(limiter.admit_at(&both, "b", client(1), 0).is_ok());
    assert_eq!(limiter.admit_at(&both, "b", client(1), 0).err(), Some(Refusal::Requests));
    assert!(limiter.admit_at(&both, "b", client(1), 2_000 * MS).is_ok());
}

/// 100,000 source addresses through a 4,096-slot table: the table stays its size, the
/// addresses evict each other (counted), and a client being limited the whole time stays
/// limited at its rate.
#[test]
fn memory_is_flat_under_many_addresses_and_the_limited_keep_their_entries() {
    let limiter = Limiter::new(4096, 4096);
    // One a second, a burst of one: every address holds its entry for a second, so the
    // 10,000 live at a time overflow the table.
    let config = limit(1, 0, 1);
    let victim = IpAddr::V6("2001:db8::1".parse().unwrap());
    let mut victim_admitted = 0;
    let mut now = 0;
    for n in 0..100_000u32 {
        now += 100; // 10 s in all
        assert!(limiter.admit_at(&config, "r", client(n), now).is_ok(), "a new address is admitted");
        if n % 10 == 0 && limiter.admit_at(&config, "r", victim, now).is_ok() {
            victim_admitted += 1; // offered at 1,000/s
        }
    }
    assert_eq!(limiter.requests().len(), 4096);
    assert!(limiter.requests().evictions() > 50_000, "{}", limiter.requests().evictions());
    // The burst of two, then one a second.
    assert!((11..=13).contains(&victim_admitted), "the limited client got {victim_admitted} in 10 s");
    // Connections: counts at zero are free slots, so finished requests evict nothing.
    let conns = RateLimitConfig { connections: 1, ..RateLimitConfig::default() };
    for n in 0..100_000u32 {
        drop(limiter.admit_at(&conns, "r", client(n), 0).unwrap());
    }
    assert_eq!((limiter.connections().len(), limiter.connections().evictions()), (4096, 0));
}

#[test]
fn workers_share_a_bucket_without_a_lock() {
    let limiter = Limiter::new(1024, 1024);
    let config = limit(100, 0, 10); // 1,001 at once
    let admitted: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..1000).filter(|_| limiter.admit_at(&config, "r", client(1), 0).is_ok()).count()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(admitted, 1001);
}
