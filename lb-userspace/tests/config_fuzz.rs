//! Property test of the configuration loader: whatever text `Config::from_yaml` is given, it
//! never panics, and every error it returns renders as `NAME:LINE:COLUMN: ...` (parse errors)
//! or one `NAME:LINE:COLUMN: field.path: message` per problem (validation errors), with the
//! position inside the text. A configuration it accepts must also compile into a route table,
//! and into a serving snapshot unless it uses TLS (certificate files are read only then).
//!
//! Inputs come from a seeded PRNG (splitmix64), no external crates:
//! - random bytes, and random text over YAML's punctuation;
//! - random YAML-ish documents: keys from the model's field names, scalars that include huge,
//!   negative and fractional numbers, unicode, quotes and control characters, nesting up to a
//!   bound, block and flow styles, random indentation;
//! - structured documents shaped like a configuration with random (often invalid) values, so
//!   that validation and its line:column lookup run, not only the parser;
//! - mutations of the example files and of the structured documents: lines deleted,
//!   duplicated, swapped or re-indented, characters changed, inserted or deleted, values
//!   replaced, text truncated.
//!
//! Deterministic: `SLUICE_FUZZ_SEED` picks another seed, `SLUICE_FUZZ_SCALE` multiplies the case
//! counts (default 1: a few seconds in a debug build; each generator stops early at a deadline).
//! A failure prints the generator, case number and the input (minimised for panics).
//!
//! Positions that are reported but point at the wrong place are pinned down by the ignored
//! tests at the end (`cargo test --test config_fuzz -- --ignored`).

use std::{
    cell::Cell,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::Once,
    time::{Duration, Instant},
};

use lb_userspace::{
    config::{Config, Error},
    proxy::{route::RouteTable, snapshot::Snapshot, upstream::endpoint::EndpointRegistry},
};

const SOURCE: &str = "fuzz.yaml";

/// Each generator stops here even when its cases are not done (slow machines).
const DEADLINE: Duration = Duration::from_secs(10);

/// splitmix64 (Steele, Lea, Flood): tiny, fast, and good enough to drive a fuzzer.
struct Rng {
    state: u64,
    /// Percent chance that a generated value is replaced by noise (a random scalar or tree, a
    /// raw unquoted scalar, an unknown field): low keeps documents parseable so validation
    /// runs, high exercises the parser's errors.
    noise: u64,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng { state: seed, noise: 3 }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn word(&mut self, words: &[&'static str]) -> &'static str {
        words[self.below(words.len())]
    }
}

fn seed() -> u64 {
    std::env::var("SLUICE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_0FC0_F160_0001)
}

fn scale() -> usize {
    std::env::var("SLUICE_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// Every field name of the model, and the one-key choices (`exact`, `client_ip`, ...).
#[rustfmt::skip]
const FIELDS: &[&str] = &[
    "workers", "listeners", "xdp", "limits", "virtual_hosts", "backends", "worker_id_header", "admin",
    "name", "address", "enabled", "interfaces", "mode", "worker_port_base", "heartbeat_timeout_ms",
    "max_header_bytes", "max_headers", "header_read_timeout_ms", "idle_timeout_ms", "max_body_bytes",
    "h2_max_concurrent_streams", "max_connections_per_worker", "shutdown_grace_ms", "domains", "routes",
    "match", "backend", "redirect", "rewrite", "timeout_ms", "path", "methods", "headers", "exact",
    "prefix", "regex", "present", "replacement", "scheme", "host", "port", "code", "protocol", "balance",
    "hash_on", "endpoints", "health_check", "outlier", "timeouts", "max_connections_per_endpoint",
    "retries", "weight", "ready", "interval_ms", "timeout_ms", "healthy_threshold",
    "unhealthy_threshold", "consecutive_failures", "base_ejection_ms", "max_ejection_ms", "connect_ms",
    "request_ms", "idle_ms", "attempts", "budget_percent", "min_retries_per_second", "header", "cookie",
    "client_ip", "certificates", "access_log", "sample_rate", "tls", "default_certificate",
    "unknown_sni", "session_tickets", "cert_path", "cert_pem", "key_path", "key_pem", "certificate",
    "passthrough", "redirect_http", "hsts", "max_age_seconds", "include_subdomains", "preload",
    "client_ca_path", "client_ca_pem", "ca_path", "ca_pem", "insecure_skip_verify", "server_name",
    "template", "affinity_key", "cookie_affinity", "domain", "max_age_seconds", "expires_seconds",
    "samesite", "conditional_samesite_none", "secure", "change_on_failure",
    "listen", "<<", "", "?", "-", "ключ", "🔑",
];

/// Scalars, as they would be written (quoting is decided when rendering).
#[rustfmt::skip]
const SCALARS: &[&str] = &[
    "0", "1", "-1", "2", "7", "100", "8192", "65535", "65536", "-65536", "1024", "1025", "20000",
    "4294967295", "4294967296", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
    "18446744073709551615", "18446744073709551616", "340282366920938463463374607431768211456",
    "99999999999999999999999999999999999999999999", "1e309", "-1e309", "1.5", "-0.0", "0x1F", "0o17",
    "0b101", "+12", "1_000", ".inf", "-.inf", ".nan", "~", "null", "Null", "true", "false", "yes", "no",
    "on", "off", "", " ", "a", "*", "/", "//", "/api", "/v1/", "api", "get", "GET", "POST", "PATCH",
    "127.0.0.1:80", "127.0.0.1:0", "0.0.0.0:80", "[::1]:8080", "[::]:80", "198.18.0.1:443",
    "198.19.255.255:65535", "127.0.0.1", "localhost:80", "127.0.0.1:99999", "[::1", "example.com",
    "*.example.com", "*.*.example.com", "EXAMPLE.com.", "-bad-.com", "a..b", "xn--bcher-kva.example",
    "http", "https", "ftp", "301", "302", "308", "399", "round_robin", "least_request", "ewma", "hash",
    "random", "h2c", "http1", "auto", "driver", "skb", "native", "eth0", "lo", "averyveryverylongifname",
    "a/b", "x-user", "x user", "cookie", "^/v[0-9]+/", "(", ")", "[", "a)|(b", "(?P<n>x)", "$1", "${n}",
    "\\", "\\\\", "a{1000}{1000}", "\u{e9}t\u{e9}", "\u{1F600}", "\u{202E}rtl", "\u{FEFF}bom", "\u{0}",
    "\u{7}", "\t", "line\nbreak", "\r", "\"", "'", "#", "# comment", ": ", "- ", "&a", "*a", "!!str",
    "!!binary", "!tag", "|", ">", "%YAML 1.2", "---", "...", "{", "}", "[]", "{}", "? x", "@", "`",
];

/// Punctuation that means something to YAML, for the random-text generator.
#[rustfmt::skip]
const YAML_PIECES: &[&str] = &[
    ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "#", "&", "*", "!", "|", ">", "'", "\"", "%", "@",
    "`", "?", "\n", "\n  ", "\n    ", "\t", " ", "---", "...", "~", "<<", "\\", "\r\n", "\u{FEFF}",
];

// ---------------------------------------------------------------------------------------------
// Running one input and checking the properties.

thread_local! {
    /// While set, the panic hook stays silent: panics are expected, caught and reported.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `f`, returning the panic message if it panics.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_hook();
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into())
    })
}

/// `NAME:LINE:COLUMN: rest` → (line, column, rest).
fn position_prefix(text: &str) -> Option<(usize, usize, &str)> {
    let rest = text.strip_prefix(SOURCE)?.strip_prefix(':')?;
    let (line, rest) = rest.split_once(':')?;
    let (column, rest) = rest.split_once(':')?;
    let rest = rest.strip_prefix(' ')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(line) || !all_digits(column) {
        return None;
    }
    Some((line.parse().ok()?, column.parse().ok()?, rest))
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Accepted,
    ParseError,
    Invalid,
}

/// Checks every property for one input; `Err` says which one failed.
fn check(input: &str) -> Result<Outcome, String> {
    let result =
        no_panic(|| Config::from_yaml(input, SOURCE)).map_err(|p| format!("from_yaml panicked: {p}"))?;
    let error = match result {
        Ok(config) => {
            // What validation accepts must compile into routes.
            no_panic(|| RouteTable::build(&config))
                .map_err(|p| format!("compiling the routes of an accepted configuration panicked: {p}"))?
                .map_err(|e| format!("accepted by validation, refused by the route compiler: {e}"))?;
            // The snapshot also loads certificates (PEM is checked there, not by validation),
            // so only a configuration with TLS may fail to build; none may panic.
            let built = no_panic(|| Snapshot::build(&config, &EndpointRegistry::default(), 1).map(|_| ()))
                .map_err(|p| format!("building a snapshot of an accepted configuration panicked: {p}"))?;
            let uses_tls = !config.certificates.is_empty()
                || config.listeners.iter().any(|l| l.tls.is_some())
                || config.virtual_hosts.iter().any(|h| h.tls.is_some())
                || config.backends.iter().any(|b| b.tls.is_some());
            if let Err(e) = built
                && !uses_tls
            {
                return Err(format!("accepted by validation, refused by the snapshot: {e}"));
            }
            return Ok(Outcome::Accepted);
        }
        Err(error) => error,
    };
    let rendered = no_panic(|| error.to_string()).map_err(|p| format!("rendering panicked: {p}"))?;
    if rendered.trim().is_empty() {
        return Err("the error renders empty".into());
    }
    match &error {
        Error::Parse { line, column, message, .. } => {
            let (l, c, rest) = position_prefix(&rendered)
                .ok_or_else(|| format!("a parse error without NAME:LINE:COLUMN: {rendered:?}"))?;
            if (l, c) != (*line, *column) || rest != message {
                return Err(format!("a parse error renders other fields: {rendered:?}"));
            }
            if message.trim().is_empty() {
                return Err(format!("a parse error with an empty message: {rendered:?}"));
            }
            // serde_yaml knows no position for "more than one document" (known gap: 0:0);
            // every other parse error must point into the file.
            if (*line == 0 || *column == 0) && !message.contains("more than one document") {
                return Err(format!("a parse error without a position: {rendered:?}"));
            }
            // serde_yaml's parser (libyaml, YAML 1.1) also breaks lines at NEL, LS and PS.
            let breaks = ["\r\n", "\r", "\n", "\u{85}", "\u{2028}", "\u{2029}"];
            if *line > 0 && !in_text(&text_lines(input, &breaks), *line, *column) {
                return Err(format!("a parse error positioned outside the text: {rendered:?}"));
            }
            Ok(Outcome::ParseError)
        }
        Error::Invalid { problems, .. } => {
            if problems.is_empty() {
                return Err("Invalid with no problems".into());
            }
            let mut lines = 0;
            for problem in problems {
                let line = format!(
                    "{SOURCE}:{}:{}: {}: {}",
                    problem.line, problem.column, problem.path, problem.message
                );
                if problem.line == 0 || problem.column == 0 {
                    return Err(format!("a problem without a position: {line:?}"));
                }
                // The lookup parser (yaml-rust2) breaks lines at CR and LF only.
                if !in_text(&text_lines(input, &["\r\n", "\r", "\n"]), problem.line, problem.column) {
                    return Err(format!("a problem positioned outside the text: {line:?}"));
                }
                if problem.path.is_empty() || problem.message.trim().is_empty() {
                    return Err(format!("a problem without a path or message: {line:?}"));
                }
                if !rendered.contains(&line) {
                    return Err(format!("problem {line:?} is not in the rendering {rendered:?}"));
                }
                lines += 1 + problem.message.matches('\n').count();
            }
            // One problem per line, and nothing else.
            let rendered_lines = rendered.lines().count();
            if rendered_lines != lines {
                return Err(format!("{rendered_lines} lines for {} problems: {rendered:?}", problems.len()));
            }
            if rendered.lines().next().and_then(position_prefix).is_none() {
                return Err(format!("the first line has no NAME:LINE:COLUMN: {rendered:?}"));
            }
            Ok(Outcome::Invalid)
        }
        Error::Read { .. } => Err(format!("from_yaml returned a read error: {rendered:?}")),
    }
}

/// The lines of `text`, split at any of `breaks` (the longest match first).
fn text_lines<'a>(text: &'a str, breaks: &[&str]) -> Vec<&'a str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < text.len() {
        match breaks.iter().find(|b| text[at..].starts_with(**b)) {
            Some(b) => {
                lines.push(&text[start..at]);
                at += b.len();
                start = at;
            }
            None => at += text[at..].chars().next().map_or(1, char::len_utf8),
        }
    }
    lines.push(&text[start..]);
    lines
}

/// Whether 1-based `line`:`column` is in the text: on an existing line, at most one column past
/// its last character, or just past the end of the text (where a truncated document fails).
fn in_text(lines: &[&str], line: usize, column: usize) -> bool {
    match lines.get(line.wrapping_sub(1)) {
        Some(text) => column >= 1 && column <= text.chars().count() + 1,
        None => line == lines.len() + 1 && column == 1,
    }
}

/// Smallest input (by deleting lines, then characters) for which `fails` still holds.
fn minimise(input: &str, fails: impl Fn(&str) -> bool) -> String {
    let mut current = input.to_owned();
    let started = Instant::now();
    let mut progress = true;
    while progress && started.elapsed() < Duration::from_secs(20) {
        progress = false;
        let lines: Vec<&str> = current.split_inclusive('\n').collect();
        for i in 0..lines.len() {
            let candidate: String =
                lines.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| *l).collect();
            if fails(&candidate) {
                current = candidate;
                progress = true;
                break;
            }
        }
        if progress {
            continue;
        }
        let chars: Vec<(usize, char)> = current.char_indices().collect();
        for &(at, c) in &chars {
            let mut candidate = current.clone();
            candidate.replace_range(at..at + c.len_utf8(), "");
            if fails(&candidate) {
                current = candidate;
                progress = true;
                break;
            }
        }
    }
    current
}

/// Runs `cases` inputs from `generate`, checks each and fails with every problem found.
fn fuzz(generator: &str, cases: usize, mut generate: impl FnMut(&mut Rng, usize) -> String) {
    let seed = seed() ^ generator.bytes().fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(b));
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut outcomes = [0usize; 3];
    let mut ran = 0;
    for case in 0..cases * scale() {
        if started.elapsed() > DEADLINE * scale() as u32 {
            break;
        }
        let input = generate(&mut rng, case);
        ran += 1;
        match check(&input) {
            Ok(outcome) => outcomes[outcome as usize] += 1,
            Err(why) => {
                let panicked = why.contains("panicked");
                let shown = if panicked {
                    minimise(&input, |candidate| matches!(check(candidate), Err(w) if w.contains("panicked")))
                } else {
                    input.clone()
                };
                failures.push(format!("{generator} case {case} (seed {seed:#x}): {why}\ninput: {shown:?}"));
                if failures.len() >= 10 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "{generator}: {ran} cases in {:?}: {} accepted, {} parse errors, {} invalid",
        started.elapsed(),
        outcomes[0],
        outcomes[1],
        outcomes[2]
    );
    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
    assert!(ran >= cases.min(200), "{generator}: only {ran} cases before the deadline");
}

// ---------------------------------------------------------------------------------------------
// A YAML value tree and its renderings.

#[derive(Clone, Debug)]
enum Yaml {
    Scalar(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

fn scalar(s: impl Into<String>) -> Yaml {
    Yaml::Scalar(s.into())
}

/// How a scalar is written: plain when that is safe, otherwise quoted; sometimes raw anyway.
fn quote(rng: &mut Rng, s: &str, flow: bool) -> String {
    let plain_safe = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./-+~$".contains(c) || (!flow && c == ' '))
        && !s.starts_with([' ', '-', '~'])
        && !s.ends_with(' ');
    if rng.chance(rng.noise / 2) {
        return s.to_owned(); // raw, whatever it breaks
    }
    if plain_safe && !rng.chance(rng.noise) {
        return s.to_owned();
    }
    if rng.chance(20) && !s.contains(['\'', '\n', '\r']) {
        return format!("'{s}'");
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn key(rng: &mut Rng, k: &str, flow: bool) -> String {
    if k.is_empty() || k.contains([':', ' ', '?', '<', '-']) || rng.chance(2) {
        quote(rng, k, flow)
    } else {
        k.into()
    }
}

fn flow(rng: &mut Rng, value: &Yaml) -> String {
    match value {
        Yaml::Scalar(s) => quote(rng, s, true),
        Yaml::Seq(items) => {
            let items: Vec<String> = items.iter().map(|i| flow(rng, i)).collect();
            format!("[{}]", items.join(", "))
        }
        Yaml::Map(entries) => {
            let entries: Vec<String> =
                entries.iter().map(|(k, v)| format!("{}: {}", key(rng, k, true), flow(rng, v))).collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// Block style at `indent`, `step` more per level; a subtree is in flow style now and then.
fn block(rng: &mut Rng, value: &Yaml, indent: usize, step: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Yaml::Scalar(s) => {
            let s = quote(rng, s, false);
            out.push_str(&format!("{pad}{s}\n"));
        }
        Yaml::Seq(items) if items.is_empty() => out.push_str(&format!("{pad}[]\n")),
        Yaml::Map(entries) if entries.is_empty() => out.push_str(&format!("{pad}{{}}\n")),
        Yaml::Seq(items) => {
            for item in items {
                match item {
                    Yaml::Scalar(_) => {
                        let s = flow(rng, item);
                        out.push_str(&format!("{pad}- {s}\n"));
                    }
                    _ if rng.chance(25) => {
                        let s = flow(rng, item);
                        out.push_str(&format!("{pad}- {s}\n"));
                    }
                    _ => {
                        // The item's first line goes after the dash.
                        let mut inner = String::new();
                        block(rng, item, indent + 2, step, &mut inner);
                        inner.replace_range(indent..indent + 2, "- ");
                        out.push_str(&inner);
                    }
                }
            }
        }
        Yaml::Map(entries) => {
            for (k, v) in entries {
                let k = key(rng, k, false);
                match v {
                    Yaml::Scalar(_) => {
                        let s = flow(rng, v);
                        out.push_str(&format!("{pad}{k}: {s}\n"));
                    }
                    _ if rng.chance(20) => {
                        let s = flow(rng, v);
                        out.push_str(&format!("{pad}{k}: {s}\n"));
                    }
                    Yaml::Seq(items) if !items.is_empty() && rng.chance(30) => {
                        // A sequence may sit at its key's indentation.
                        out.push_str(&format!("{pad}{k}:\n"));
                        block(rng, v, indent, step, out);
                    }
                    _ => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        block(rng, v, indent + step, step, out);
                    }
                }
            }
        }
    }
}

fn render(rng: &mut Rng, value: &Yaml) -> String {
    let mut out = String::new();
    if rng.chance(5) {
        out.push_str(rng.word(&["---\n", "# a comment\n", "\n\n", "%YAML 1.2\n---\n", "\u{FEFF}"]));
    }
    if rng.chance(10) {
        out.push_str(&flow(rng, value));
        out.push('\n');
    } else {
        let step = 1 + rng.below(4);
        block(rng, value, 0, step, &mut out);
    }
    if rng.chance(3) {
        out.push_str(rng.word(&["...\n", "---\n", "# end\n", "---\nlisteners: []\n"]));
    }
    out
}

/// Any tree: keys from the model, scalars from the pool, nesting to `depth`.
fn random_tree(rng: &mut Rng, depth: usize) -> Yaml {
    let kind = if depth == 0 { 0 } else { rng.below(3) };
    match kind {
        0 => Yaml::Scalar(rng.pick(SCALARS).to_string()),
        1 => Yaml::Seq((0..rng.below(4)).map(|_| random_tree(rng, depth - 1)).collect()),
        _ => Yaml::Map(
            (0..rng.below(5)).map(|_| (rng.pick(FIELDS).to_string(), random_tree(rng, depth - 1))).collect(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Structured documents: the shape of a configuration with random values.

/// A value from `pool`, or noise (see [`Rng::noise`]).
fn value_for(rng: &mut Rng, pool: &[&'static str]) -> Yaml {
    if !rng.chance(rng.noise) {
        scalar(rng.word(pool))
    } else if rng.chance(75) {
        scalar(rng.word(SCALARS))
    } else {
        random_tree(rng, 2)
    }
}

const NUMBERS: &[&str] = &["0", "1", "2", "3", "5", "10", "100", "300", "1000", "8192", "60000", "65535"];
const BOOLEANS: &[&str] = &["true", "false"];
#[rustfmt::skip]
const ADDRESSES: &[&str] = &[
    "127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.2:9000", "[::1]:8080", "198.18.0.1:80", "198.18.0.2:20001",
    "0.0.0.0:80", "127.0.0.1:0", "127.0.0.1:20000",
];
const NAMES: &[&str] = &["a", "b", "web", "api", "app", "default", "x"];
const DOMAINS: &[&str] = &["*", "example.com", "*.example.com", "API.example.com", "a_b", "", "x.y.z"];
const PATHS: &[&str] = &["/", "/api", "/api/", "/v1", "a", "", "/x/y"];
const REGEXES: &[&str] = &["^/v[0-9]+/", "/(.*)", "(", "a)|(b", "[a-z]+", "(?P<v>x)", "\\d{2,1}"];
/// Files that do not exist or cannot be read as PEM (never a device or a FIFO).
const FILES: &[&str] = &["/nonexistent/sluice-fuzz.pem", "relative/sluice-fuzz.pem", "", "/"];
const PEMS: &[&str] = &["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "not pem", ""];

/// The shape of a configuration, to generate documents that get past the parser.
enum Schema {
    /// A value from the pool.
    Scalar(&'static [&'static str]),
    /// Up to this many items.
    List(usize, Box<Schema>),
    /// Fields: name, required, value.
    Object(Vec<(&'static str, bool, Schema)>),
    /// One key of several, each with its pool (`{prefix: /api}`).
    OneOf(&'static [(&'static str, &'static [&'static str])]),
}

use Schema::{List, Object, OneOf, Scalar};

fn req(name: &'static str, schema: Schema) -> (&'static str, bool, Schema) {
    (name, true, schema)
}

fn opt(name: &'static str, schema: Schema) -> (&'static str, bool, Schema) {
    (name, false, schema)
}

fn list(max: usize, item: Schema) -> Schema {
    List(max, Box::new(item))
}

/// An object of optional numeric fields.
fn numbers(fields: &[&'static str]) -> Schema {
    Object(fields.iter().map(|f| opt(f, Scalar(NUMBERS))).collect())
}

fn config_schema() -> Schema {
    let route = Object(vec![
        opt("name", Scalar(NAMES)),
        opt(
            "match",
            Object(vec![
                opt("path", OneOf(&[("exact", PATHS), ("prefix", PATHS), ("regex", REGEXES)])),
                opt("methods", list(3, Scalar(&["GET", "POST", "get", ""]))),
                opt(
                    "headers",
                    list(
                        2,
                        Object(vec![
                            req("name", Scalar(&["x-user", "cookie", "x y", ""])),
                            opt("exact", Scalar(NAMES)),
                            opt("regex", Scalar(REGEXES)),
                            opt("present", Scalar(BOOLEANS)),
                        ]),
                    ),
                ),
            ]),
        ),
        opt("backend", Scalar(NAMES)),
        opt(
            "redirect",
            Object(vec![
                opt("scheme", Scalar(&["http", "https", "ftp"])),
                opt("host", Scalar(DOMAINS)),
                opt("port", Scalar(&["0", "443", "65535"])),
                opt("path", Scalar(PATHS)),
                opt("code", Scalar(&["301", "302", "308", "300", "999"])),
            ]),
        ),
        opt(
            "rewrite",
            Object(vec![
                opt("prefix", Scalar(PATHS)),
                opt("regex", Scalar(REGEXES)),
                opt("replacement", Scalar(&["/$1", "$v", "", "${9}"])),
            ]),
        ),
        opt("timeout_ms", Scalar(NUMBERS)),
        opt("max_body_bytes", Scalar(NUMBERS)),
    ]);
    let backend = Object(vec![
        req("name", Scalar(NAMES)),
        opt("protocol", Scalar(&["http1", "h2c"])),
        opt("balance", Scalar(&["round_robin", "least_request", "ewma", "hash"])),
        opt(
            "hash_on",
            OneOf(&[
                ("header", &["x-user"]),
                ("cookie", &["session"]),
                ("client_ip", BOOLEANS),
                ("template", &["$remote_addr$request_uri", "$http_x_user", "$", "$cookie_", "x"]),
            ]),
        ),
        req(
            "endpoints",
            list(
                4,
                Object(vec![
                    req("address", Scalar(ADDRESSES)),
                    opt("weight", Scalar(&["0", "1", "3", "10000", "10001", "4294967295"])),
                    opt("ready", Scalar(BOOLEANS)),
                ]),
            ),
        ),
        opt(
            "health_check",
            Object(vec![
                opt("path", Scalar(PATHS)),
                opt("interval_ms", Scalar(NUMBERS)),
                opt("timeout_ms", Scalar(NUMBERS)),
                opt("healthy_threshold", Scalar(NUMBERS)),
                opt("unhealthy_threshold", Scalar(NUMBERS)),
            ]),
        ),
        opt("outlier", numbers(&["consecutive_failures", "base_ejection_ms", "max_ejection_ms"])),
        opt("timeouts", numbers(&["connect_ms", "request_ms", "idle_ms"])),
        opt("max_connections_per_endpoint", Scalar(NUMBERS)),
        opt("retries", numbers(&["attempts", "budget_percent", "min_retries_per_second"])),
        opt(
            "cookie_affinity",
            Object(vec![
                opt("name", Scalar(&["INGRESSCOOKIE", "route", "bad name", ""])),
                opt("mode", Scalar(&["balanced", "persistent"])),
                opt("path", Scalar(&["/", "/app", "app", "/a;b"])),
                opt("domain", Scalar(&["example.com", "", "a b"])),
                opt("max_age_seconds", Scalar(NUMBERS)),
                opt("expires_seconds", Scalar(NUMBERS)),
                opt("samesite", Scalar(&["Lax", "strict", "None", "nil"])),
                opt("conditional_samesite_none", Scalar(BOOLEANS)),
                opt("secure", Scalar(BOOLEANS)),
                opt("change_on_failure", Scalar(BOOLEANS)),
            ]),
        ),
        opt(
            "tls",
            Object(vec![
                opt("ca_path", Scalar(FILES)),
                opt("ca_pem", Scalar(PEMS)),
                opt("insecure_skip_verify", Scalar(BOOLEANS)),
                opt("server_name", Scalar(&["api.internal", "127.0.0.1", "bad name", ""])),
            ]),
        ),
    ]);
    let host_tls = Object(vec![
        opt("certificate", Scalar(NAMES)),
        opt("passthrough", Scalar(NAMES)),
        opt("redirect_http", Scalar(BOOLEANS)),
        opt(
            "hsts",
            Object(vec![
                opt("max_age_seconds", Scalar(NUMBERS)),
                opt("include_subdomains", Scalar(BOOLEANS)),
                opt("preload", Scalar(BOOLEANS)),
            ]),
        ),
        opt("client_ca_path", Scalar(FILES)),
        opt("client_ca_pem", Scalar(PEMS)),
    ]);
    Object(vec![
        opt("workers", Scalar(&["0", "1", "2", "4", "1024", "1025"])),
        req(
            "listeners",
            list(
                3,
                Object(vec![
                    req("name", Scalar(NAMES)),
                    req("address", Scalar(ADDRESSES)),
                    opt(
                        "tls",
                        Object(vec![
                            opt("default_certificate", Scalar(NAMES)),
                            opt("unknown_sni", Scalar(&["default", "reject"])),
                            opt("session_tickets", Scalar(BOOLEANS)),
                        ]),
                    ),
                ]),
            ),
        ),
        opt(
            "xdp",
            Object(vec![
                opt("enabled", Scalar(BOOLEANS)),
                opt("interfaces", list(2, Scalar(&["eth0", "lo", "a/b", ""]))),
                opt("mode", Scalar(&["auto", "driver", "skb"])),
                opt("worker_port_base", Scalar(&["0", "20000", "8079", "65535"])),
                opt("heartbeat_timeout_ms", Scalar(NUMBERS)),
            ]),
        ),
        opt(
            "limits",
            numbers(&[
                "max_header_bytes",
                "max_headers",
                "header_read_timeout_ms",
                "idle_timeout_ms",
                "max_body_bytes",
                "h2_max_concurrent_streams",
                "max_connections_per_worker",
                "shutdown_grace_ms",
            ]),
        ),
        opt(
            "access_log",
            Object(vec![
                opt("enabled", Scalar(BOOLEANS)),
                opt("sample_rate", Scalar(&["0", "0.25", "1.0", "1.5", "-0.5", ".nan", ".inf"])),
            ]),
        ),
        opt("admin", Object(vec![req("address", Scalar(ADDRESSES))])),
        opt(
            "certificates",
            list(
                2,
                Object(vec![
                    req("name", Scalar(NAMES)),
                    opt("cert_path", Scalar(FILES)),
                    opt("cert_pem", Scalar(PEMS)),
                    opt("key_path", Scalar(FILES)),
                    opt("key_pem", Scalar(PEMS)),
                ]),
            ),
        ),
        opt(
            "virtual_hosts",
            list(
                3,
                Object(vec![
                    req("name", Scalar(NAMES)),
                    req("domains", list(3, Scalar(DOMAINS))),
                    opt("routes", list(4, route)),
                    opt("tls", host_tls),
                ]),
            ),
        ),
        opt("backends", list(3, backend)),
        opt("worker_id_header", Scalar(BOOLEANS)),
        opt("affinity_key", Scalar(&["a-shared-secret", ""])),
    ])
}

/// A document of `schema`'s shape; [`Rng::noise`] decides how often it strays.
fn generate(rng: &mut Rng, schema: &Schema) -> Yaml {
    match schema {
        Scalar(pool) => value_for(rng, pool),
        List(max, item) => Yaml::Seq((0..rng.below(max + 1)).map(|_| generate(rng, item)).collect()),
        Object(fields) => {
            let mut entries = Vec::new();
            for (name, required, value) in fields {
                let include = if *required { !rng.chance(rng.noise) } else { rng.chance(50) };
                if include {
                    entries.push((name.to_string(), generate(rng, value)));
                }
            }
            if rng.chance(rng.noise) {
                entries.push((rng.word(FIELDS).to_owned(), value_for(rng, NAMES)));
            }
            if rng.chance(10) && !entries.is_empty() {
                let i = rng.below(entries.len());
                entries.swap(0, i);
            }
            Yaml::Map(entries)
        }
        OneOf(choices) => {
            let mut entries = Vec::new();
            for _ in 0..if rng.chance(rng.noise * 2) { 2 } else { 1 } {
                let (key, pool) = choices[rng.below(choices.len())];
                entries.push((key.to_owned(), value_for(rng, pool)));
            }
            Yaml::Map(entries)
        }
    }
}

/// A configuration-shaped document with a noise level drawn per document.
fn structured(rng: &mut Rng, schema: &Schema) -> Yaml {
    rng.noise = [0, 0, 1, 3, 10][rng.below(5)];
    generate(rng, schema)
}

// ---------------------------------------------------------------------------------------------
// Mutations of text.

fn char_boundary_at_or_before(s: &str, mut at: usize) -> usize {
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut text = text.to_owned();
    for _ in 0..1 + rng.below(4) {
        let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = rng.below(lines.len());
        let j = rng.below(lines.len());
        match rng.below(12) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let line = lines[i].clone();
                lines.insert(j, line);
            }
            2 => lines.swap(i, j),
            3 => {
                // Re-indent a line by a few spaces either way.
                let line = &lines[i];
                let trimmed = line.trim_start_matches(' ');
                let indent = (line.len() - trimmed.len()) as isize + rng.below(7) as isize - 3;
                lines[i] = format!("{}{trimmed}", " ".repeat(indent.max(0) as usize));
            }
            4 => {
                // Replace the value after a colon with a random scalar.
                if let Some(colon) = lines[i].find(": ") {
                    let scalar = *rng.pick(SCALARS);
                    let value = quote(rng, scalar, false);
                    lines[i] = format!("{}: {value}\n", &lines[i][..colon]);
                }
            }
            5 => {
                // Rename a key.
                if let Some(colon) = lines[i].find(':') {
                    let indent = lines[i].len() - lines[i].trim_start_matches([' ', '-']).len();
                    let rest = lines[i][colon..].to_owned();
                    lines[i] = format!("{}{}{rest}", &lines[i][..indent], rng.pick(FIELDS));
                }
            }
            6 => {
                // Replace a digit run with a huge or negative number.
                if let Some(start) = lines[i].find(|c: char| c.is_ascii_digit()) {
                    let end = lines[i][start..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(lines[i].len(), |e| start + e);
                    let number = rng.pick(&["-1", "0", "99999999999999999999999", "4294967296", "-0", "1e3"]);
                    lines[i].replace_range(start..end, number);
                }
            }
            _ => {
                let joined: String = lines.concat();
                return finish_char_mutation(rng, joined);
            }
        }
        text = lines.concat();
    }
    text
}

/// Character-level mutations: change, insert or delete a character, or truncate.
fn finish_char_mutation(rng: &mut Rng, mut text: String) -> String {
    if text.is_empty() {
        return rng.pick(YAML_PIECES).to_string();
    }
    let at = char_boundary_at_or_before(&text, rng.below(text.len() + 1));
    let piece = if rng.chance(70) {
        rng.pick(YAML_PIECES).to_string()
    } else {
        char::from_u32(rng.below(0x11_0000) as u32).map(String::from).unwrap_or_else(|| "\u{FFFD}".into())
    };
    match rng.below(4) {
        0 => text.insert_str(at, &piece),
        1 => {
            if at < text.len() {
                let end = at + text[at..].chars().next().map_or(0, char::len_utf8);
                text.replace_range(at..end, &piece);
            }
        }
        2 => {
            if at < text.len() {
                let end = at + text[at..].chars().next().map_or(0, char::len_utf8);
                text.replace_range(at..end, "");
            }
        }
        _ => text.truncate(at),
    }
    text
}

fn examples() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "yaml").then(|| std::fs::read_to_string(&path).ok().map(|t| (path, t)))?
        })
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------------
// The properties, per generator.

#[test]
fn random_bytes_never_panic() {
    fuzz("bytes", 3000, |rng, _| {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    });
}

#[test]
fn random_yaml_punctuation_never_panics() {
    fuzz("punctuation", 3000, |rng, _| {
        let mut text = String::new();
        for _ in 0..rng.below(60) {
            match rng.below(3) {
                0 => text.push_str(rng.word(YAML_PIECES)),
                1 => text.push_str(rng.word(FIELDS)),
                _ => text.push_str(rng.word(SCALARS)),
            }
        }
        text
    });
}

#[test]
fn random_yaml_documents_never_panic() {
    fuzz("yaml-ish", 3000, |rng, case| {
        let depth = if case % 50 == 0 { 12 } else { 1 + rng.below(5) };
        let mut tree = random_tree(rng, depth);
        // Mostly a top-level mapping, as a configuration is.
        if rng.chance(80) && !matches!(tree, Yaml::Map(_)) {
            tree = Yaml::Map(vec![(rng.pick(FIELDS).to_string(), tree)]);
        }
        render(rng, &tree)
    });
}

#[test]
fn deep_nesting_never_panics() {
    // serde_yaml stops at its recursion limit; the position lookup must cope with anything the
    // parser gets through.
    fuzz("deep", 200, |rng, case| {
        let depth = 1 + case * 5 + rng.below(5);
        let (open, close) = match rng.below(4) {
            0 => ("[".repeat(depth), "]".repeat(depth)),
            1 => ("{a: ".repeat(depth), "}".repeat(depth)),
            2 => ("- ".repeat(depth), String::new()),
            _ => {
                let mut text = String::new();
                for level in 0..depth.min(300) {
                    text.push_str(&format!("{}{}:\n", " ".repeat(level), rng.pick(FIELDS)));
                }
                return text;
            }
        };
        format!("listeners: {open}{}{close}\n", rng.pick(SCALARS))
    });
}

#[test]
fn structured_configurations_never_panic() {
    let schema = config_schema();
    fuzz("structured", 2500, |rng, _| {
        let tree = structured(rng, &schema);
        render(rng, &tree)
    });
}

#[test]
fn mutated_structured_configurations_never_panic() {
    let schema = config_schema();
    fuzz("structured-mutated", 1500, |rng, _| {
        let tree = structured(rng, &schema);
        let text = render(rng, &tree);
        mutate(rng, &text)
    });
}

#[test]
fn mutated_examples_never_panic() {
    let examples = examples();
    assert!(examples.len() >= 4, "examples/ has {} files", examples.len());
    for (path, text) in &examples {
        assert!(check(text) == Ok(Outcome::Accepted), "{} is not accepted", path.display());
    }
    fuzz("examples-mutated", 2500, |rng, _| {
        let (_, text) = rng.pick(&examples);
        mutate(rng, text)
    });
}

// ---------------------------------------------------------------------------------------------
// Positions that are reported, but in the wrong place: what the properties above cannot tell.
// Ignored until the loader is fixed; `cargo test -- --ignored` shows them failing.

/// (line, column) of the first error for `yaml`.
fn first_position(yaml: &str) -> (usize, usize) {
    match Config::from_yaml(yaml, SOURCE) {
        Ok(_) => panic!("accepted"),
        Err(Error::Parse { line, column, .. }) => (line, column),
        Err(Error::Invalid { problems, .. }) => (problems[0].line, problems[0].column),
        Err(e) => panic!("{e}"),
    }
}

#[test]
#[ignore = "known gap: an empty list item is located at the next item (10:9)"]
fn an_empty_route_is_reported_on_its_own_line() {
    // A bare `-` deserializes as a route with every field defaulted; its problem should point at
    // line 7, not at the route after it (which then also looks like a duplicate of it).
    let yaml = "listeners: [{name: a, address: \"127.0.0.1:80\"}]\nbackends: [{name: b, endpoints: []}]\n\
                virtual_hosts:\n  - name: v\n    domains: [\"*\"]\n    routes:\n      -\n\n\n      - backend: b\n";
    assert_eq!(first_position(yaml).0, 7);
}

#[test]
#[ignore = "known gap: a duplicate key is reported at the start of the document (1:1)"]
fn a_duplicate_key_is_reported_where_it_repeats() {
    assert_eq!(first_position("listeners: []\nworkers: 1\nlisteners: []\n").0, 3);
}

#[test]
#[ignore = "known gap: serde_yaml gives no position for a second document (0:0)"]
fn a_second_document_is_reported_where_it_starts() {
    assert_eq!(first_position("listeners: []\n---\nlisteners: []\n").0, 2);
}

#[test]
#[ignore = "known gap: a one-of choice is reported at its parent item (backends[0], line 3)"]
fn a_bad_one_of_choice_is_reported_at_its_field() {
    let yaml = "listeners: [{name: a, address: \"127.0.0.1:80\"}]\nbackends:\n  - name: b\n    balance: hash\n\
                \x20   hash_on: {client_ip: false}\n    endpoints: []\n";
    assert_eq!(first_position(yaml).0, 5);
}
