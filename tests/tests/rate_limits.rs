//! Per-client rate limits end to end over loopback sockets (ingress-nginx's `limit-rps`,
//! `limit-connections`, `limit-rate`, `limit-allowlist`, in the YAML as `rate_limit`): an
//! in-process node (`lb_tests::sluice::Proxy`, no XDP, no root) in front of the harness's
//! backends, timed with the wall clock over bounded runs.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::{BACKEND_HEADER, Backend, Mode},
    free_port,
    http::{self, Client},
    raw_backend::RawBackend,
    sluice::Proxy,
    wait_for,
};

/// `limit-rps: 20` with the default burst multiplier: the first request and 100 more at once,
/// then 20 a second, which a client hammering one keep-alive connection sees within 10% over
/// 3 s; refused requests get 503 (or the configured status) and never reach the backend, and
/// are counted in `sluice_requests_denied_total`. An allowlisted client is never limited.
#[test]
fn rps_lets_the_burst_through_then_holds_its_rate() {
    let backend = Backend::with_mode("web", Mode::Name);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::start(&config(
        &format!(
            "admin: {{address: \"{admin}\"}}\nlimits: {{shutdown_grace_ms: 500, rate_limit_status: 429}}\n"
        ),
        "
  - name: limited
    domains: [limited.test]
    rate_limit: {rps: 20}
    routes: [{name: rps-limited, backend: web}]
  - name: office
    domains: [office.test]
    rate_limit: {rps: 1, burst_multiplier: 0, allowlist: [\"127.0.0.0/8\"]}
    routes: [{name: rps-allowlisted, backend: web}]
",
        &[backend.addr()],
    ));
    let mut client = Client::connect(proxy.addr);
    let statuses = |client: &mut Client, host: &str, until: &dyn Fn(u32) -> bool| {
        let (mut ok, mut refused, mut sent) = (0u32, 0u32, 0u32);
        while until(sent) {
            let response = client.get(host, "/");
            sent += 1;
            match response.status {
                200 => ok += 1,
                429 => {
                    assert_eq!(
                        response.header(BACKEND_HEADER),
                        None,
                        "a refused request reached the backend"
                    );
                    refused += 1
                }
                other => panic!("{host}: status {other}: {}", response.body),
            }
        }
        (ok, refused)
    };
    let started = Instant::now();
    let (burst, _) = statuses(&mut client, "limited.test", &|sent| sent < 200);
    // 101 at once, plus one per 50 ms that the 200 requests took.
    let allowance = (started.elapsed().as_millis() / 50) as u32 + 1;
    assert!((101..=101 + allowance).contains(&burst), "{burst} of the first 200 admitted");
    let window = Instant::now();
    let (ok, refused) = statuses(&mut client, "limited.test", &|_| window.elapsed() < Duration::from_secs(3));
    let rate = f64::from(ok) / window.elapsed().as_secs_f64();
    eprintln!("limit-rps 20: {ok} admitted and {refused} refused in 3 s ({rate:.1}/s)");
    assert!((18.0..=22.0).contains(&rate), "{ok} admitted in 3 s: {rate:.1} a second, not 20 within 10%");
    assert!(refused > 10 * ok, "the client offered far more than the rate ({refused} refused)");
    assert_eq!(backend.requests(), u64::from(burst + ok), "every admitted request and no other reached it");
    let metrics = http::http_get(admin, "/metrics").unwrap().body;
    let denied = r#"sluice_requests_denied_total{route="rps-limited",reason="rate_limit"} "#;
    let counted = metrics.lines().find_map(|l| l.strip_prefix(denied)).expect("the denial counter");
    assert_eq!(counted.parse::<f64>().unwrap() as u32, 200 - burst + refused);
    assert!(metrics.contains(r#"sluice_rate_limit_evictions_total{table="requests"} 0"#), "{metrics}");
    // One request a second, nothing more, for anyone but the office.
    let (ok, refused) = statuses(&mut client, "office.test", &|sent| sent < 300);
    assert_eq!((ok, refused), (300, 0), "an allowlisted client is not limited");
}

/// `limit-connections: 8` as ingress-nginx's e2e test runs it: 20 requests at once to a slow
/// backend, 8 get through and 12 get 503; once the 8 are answered, the client may send again.
#[test]
fn connections_limit_the_requests_in_progress() {
    let backend = Backend::with_mode("slow", Mode::Hold);
    let proxy = Proxy::start(&config(
        "limits: {shutdown_grace_ms: 500}\n",
        "
  - name: slow
    domains: [slow.test]
    routes: [{name: connections-limited, backend: slow, rate_limit: {connections: 8}}]
",
        &[backend.addr()],
    ));
    let addr = proxy.addr;
    let requests: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || http::request(addr, "GET", "slow.test", "/", &[]).unwrap().status)
        })
        .collect();
    // The refusals come back at once; the admitted wait at the backend.
    wait_for(Duration::from_secs(10), "8 requests held and 12 answered", || {
        (backend.holding() == 8 && requests.iter().filter(|r| r.is_finished()).count() == 12).then_some(())
    })
    .unwrap();
    backend.release();
    let mut statuses: Vec<u16> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [[200; 8].as_slice(), &[503; 12]].concat());
    assert_eq!(backend.requests(), 8);
    // Every place was given back when its response was sent.
    let again: Vec<u16> =
        (0..10).map(|_| http::request(addr, "GET", "slow.test", "/", &[]).unwrap().status).collect();
    assert_eq!(again, [200; 10]);
}

/// `limit-rate: 64` and `limit-rate-after: 32` (KiB): a 224 KiB response comes with its first
/// 32 KiB at once and the other 192 KiB at 64 KiB/s, measured within 10% over 3 s; the same
/// response without a limit takes a fraction of that.
#[test]
fn limit_rate_paces_each_response() {
    const SIZE: usize = 224 * 1024;
    let body = http::pattern(SIZE, 7);
    let served = body.clone();
    let backend = RawBackend::start(move |mut conn| {
        while conn.next_request().is_some() {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            if !(conn.send(head.as_bytes()) && conn.send(&served)) {
                return;
            }
        }
    });
    let proxy = Proxy::start(&config(
        "limits: {shutdown_grace_ms: 500}\n",
        "
  - name: files
    domains: [files.test]
    routes:
      - {name: bandwidth-limited, backend: web, rate_limit: {response_bytes_per_second: 65536, response_rate_after_bytes: 32768}}
      - {name: bandwidth-free, match: {path: {prefix: /free}}, backend: web}
",
        &[backend.addr],
    ));
    let fetch = |path: &str| {
        let started = Instant::now();
        let mut client = Client::connect(proxy.addr);
        client.send(http::request_text("GET", "files.test", path, &[], true).as_bytes());
        let response = client.read_response(false);
        let took = started.elapsed();
        assert_eq!(response.status, 200);
        assert!(response.body == body, "{path}: the body came whole and in order");
        took
    };
    let free = fetch("/free");
    let limited = fetch("/");
    let rate = (SIZE - 32 * 1024) as f64 / limited.as_secs_f64();
    eprintln!("limit-rate 64 KiB/s: 224 KiB in {limited:?} ({:.1} KiB/s); unlimited {free:?}", rate / 1024.0);
    assert!(
        (0.9 * 65536.0..=1.1 * 65536.0).contains(&rate),
        "{:.1} KiB/s is not 64 KiB/s within 10%",
        rate / 1024.0
    );
    assert!(free < Duration::from_millis(1000), "unlimited: {free:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Two workers, no XDP, one listener; `top` adds top-level fields (`limits`, `admin`), `hosts`
/// the `virtual_hosts` entries, and the backend group `web` (or the route's name) has
/// `endpoints`.
fn config(top: &str, hosts: &str, endpoints: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("{{address: \"{a}\"}}")).collect();
    let endpoints = endpoints.join(", ");
    format!(
        "workers: 2\nxdp: {{enabled: false}}\nlisteners: [{{name: web, address: \"{{listen}}\"}}]\n{top}\
         virtual_hosts:{hosts}backends:\n  - {{name: web, endpoints: [{endpoints}]}}\n  - {{name: slow, endpoints: [{endpoints}]}}\n"
    )
}
