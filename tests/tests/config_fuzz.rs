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
//!
//! The field names and the shape of a configuration come from the model's JSON Schema
//! (`Config::json_schema`, what `sluice schema` prints): a new field is fuzzed without a change
//! here. `HINTS` only adds edge values for fields that validation checks.
//! - mutations of the example files and of the structured documents: lines deleted,
//!   duplicated, swapped or re-indented, characters changed, inserted or deleted, values
//!   replaced, text truncated.
//!
//! Deterministic: `SLUICE_FUZZ_SEED` picks another seed, `SLUICE_FUZZ_SCALE` multiplies the case
//! counts (default 1: a few seconds in a debug build; each generator stops early at a deadline).
//! A failure prints the generator, case number and the input (minimised for panics).
//!
//! Positions that the properties cannot judge (in the text, but at the right place?) are pinned
//! down by the tests at the end.

use std::{
    cell::Cell,
    collections::BTreeSet,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{Once, OnceLock},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use lb_userspace::{
    config::{Config, Error},
    proxy::{route::RouteTable, snapshot::Snapshot, upstream::endpoint::EndpointRegistry},
};

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
                1 => text.push_str(rng.word(fields())),
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
            tree = Yaml::Map(vec![(rng.pick(fields()).to_string(), tree)]);
        }
        render(rng, &tree)
    });
}

#[test]
fn deep_nesting_never_panics() {
    // The parser stops at its depth budget; the position lookup must cope with anything the
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
                    text.push_str(&format!("{}{}:\n", " ".repeat(level), rng.pick(fields())));
                }
                return text;
            }
        };
        format!("listeners: {open}{}{close}\n", rng.pick(SCALARS))
    });
}

#[test]
fn structured_configurations_never_panic() {
    let shape = config_shape();
    fuzz("structured", 2500, |rng, _| {
        let tree = structured(rng, &shape);
        render(rng, &tree)
    });
}

#[test]
fn mutated_structured_configurations_never_panic() {
    let shape = config_shape();
    fuzz("structured-mutated", 1500, |rng, _| {
        let tree = structured(rng, &shape);
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
// Positions that are reported, but could be in the wrong place: what the properties above cannot
// tell.

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
fn an_empty_route_is_reported_on_its_own_line() {
    // A bare `-` deserializes as a route with every field defaulted; its problem points at line
    // 7, not at the route after it (which then also looks like a duplicate of it).
    let yaml = "listeners: [{name: a, address: \"127.0.0.1:80\"}]\nbackends: [{name: b, endpoints: []}]\n\
                virtual_hosts:\n  - name: v\n    domains: [\"*\"]\n    routes:\n      -\n\n\n      - backend: b\n";
    assert_eq!(first_position(yaml).0, 7);
}

#[test]
fn a_duplicate_key_is_reported_where_it_repeats() {
    assert_eq!(first_position("listeners: []\nworkers: 1\nlisteners: []\n"), (3, 1));
}

#[test]
fn a_second_document_is_reported_where_its_content_starts() {
    assert_eq!(first_position("listeners: []\n---\nlisteners: []\n"), (3, 1));
}

#[test]
fn a_bad_one_of_choice_is_reported_at_its_field() {
    let yaml = "listeners: [{name: a, address: \"127.0.0.1:80\"}]\nbackends:\n  - name: b\n    balance: hash\n\
                \x20   hash_on: {client_ip: false}\n    endpoints: []\n";
    assert_eq!(first_position(yaml).0, 5);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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
            // Every parse error points into the file.
            if *line == 0 || *column == 0 {
                return Err(format!("a parse error without a position: {rendered:?}"));
            }
            if !in_text(&text_lines(input, LINE_BREAKS), *line, *column) {
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
                if !in_text(&text_lines(input, LINE_BREAKS), problem.line, problem.column) {
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

/// Where the parser (YAML 1.2, for parse errors and problems alike) breaks lines.
const LINE_BREAKS: &[&str] = &["\r\n", "\r", "\n"];

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
            (0..rng.below(5))
                .map(|_| (rng.pick(fields()).to_string(), random_tree(rng, depth - 1)))
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Structured documents: the shape of a configuration, read from the model's JSON Schema, with
// random values.

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
const FRACTIONS: &[&str] = &["0", "0.25", "1.0", "1.5", "-0.5", ".nan", ".inf"];
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

/// Values near the edges that validation checks, by field name. Only sharpens the pools: a field
/// without a row gets the pool of its type (and of its name's suffix: `_path`, `_pem`).
#[rustfmt::skip]
const HINTS: &[(&str, &[&str])] = &[
    ("address", ADDRESSES), ("domains", DOMAINS), ("host", DOMAINS), ("path", PATHS), ("prefix", PATHS),
    ("exact", PATHS), ("regex", REGEXES), ("workers", &["0", "1", "2", "4", "1024", "1025"]),
    ("worker_port_base", &["0", "20000", "8079", "65535"]), ("port", &["0", "443", "65535"]),
    ("weight", &["0", "1", "3", "10000", "10001", "4294967295"]), ("code", &["301", "302", "308", "300", "999"]),
    ("scheme", &["http", "https", "ftp"]), ("methods", &["GET", "POST", "get", ""]),
    ("replacement", &["/$1", "$v", "", "${9}"]), ("interfaces", &["eth0", "lo", "a/b", ""]),
    ("template", &["$remote_addr$request_uri", "$http_x_user", "$", "$cookie_", "x"]),
    ("server_name", &["api.internal", "127.0.0.1", "bad name", ""]), ("domain", &["example.com", "", "a b"]),
    ("affinity_key", &["a-shared-secret", ""]), ("samesite", &["Lax", "strict", "None", "nil"]),
];

/// The shape of a configuration, to generate documents that get past the parser.
#[derive(Debug)]
enum Shape {
    /// A value from the pool.
    Scalar(Vec<&'static str>),
    /// Up to this many items.
    List(usize, Box<Shape>),
    /// Fields: name, required, value.
    Object(Vec<(String, bool, Shape)>),
    /// One key of several, each with its pool (`{prefix: /api}`).
    OneOf(Vec<(String, Vec<&'static str>)>),
}

/// Items in a generated list, at most.
const LIST_ITEMS: usize = 3;

/// The model's JSON Schema (`sluice schema`), which every shape and field name is read from.
fn model_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(Config::json_schema)
}

/// Every field name of the model (and the one-key choices' keys: `exact`, `client_ip`, ...),
/// then keys that are no field.
fn fields() -> &'static [&'static str] {
    static FIELDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        fn collect(schema: &Value, names: &mut BTreeSet<String>) {
            match schema {
                Value::Object(map) => {
                    if let Some(Value::Object(properties)) = map.get("properties") {
                        names.extend(properties.keys().cloned());
                    }
                    map.values().for_each(|v| collect(v, names));
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, names)),
                _ => {}
            }
        }
        let mut names = BTreeSet::new();
        collect(model_schema(), &mut names);
        assert!(names.len() > 50, "the schema names only {} fields", names.len());
        let model = names.into_iter().map(|name| &*String::leak(name));
        model.chain(["listen", "<<", "", "?", "-", "ключ", "🔑"]).collect()
    })
}

/// `schema` with `$ref`s followed (also as the one member of `allOf`, which is how draft 7 puts
/// a default beside a reference) and `Option`'s `null` alternative dropped.
fn resolve(schema: &Value) -> &Value {
    if let Some(Value::Array(all)) = schema.get("allOf")
        && let [only] = all.as_slice()
    {
        return resolve(only);
    }
    if let Some(Value::String(reference)) = schema.get("$ref") {
        let name =
            reference.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("unexpected $ref {reference}"));
        return resolve(&model_schema()["definitions"][name]);
    }
    if let Some(Value::Array(alternatives)) = schema.get("anyOf") {
        let not_null: Vec<&Value> =
            alternatives.iter().filter(|a| a.get("type") != Some(&json!("null"))).collect();
        if let [only] = not_null.as_slice() {
            return resolve(only);
        }
    }
    schema
}

/// The JSON type of `schema` (`"integer"`, `"object"`, ...), `null` left out of a type list.
fn json_type(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(types) => types.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    }
}

/// The values an enum allows (`enum: [...]`, or `oneOf` branches with a `const` each).
fn enum_values(schema: &Value) -> Option<Vec<&'static str>> {
    let leak = |v: &Value| Some(&*String::leak(v.as_str()?.to_owned()));
    if let Some(Value::Array(values)) = schema.get("enum") {
        return values.iter().map(leak).collect();
    }
    if let Some(Value::Array(branches)) = schema.get("oneOf") {
        let mut values = Vec::new();
        for branch in branches {
            match (branch.get("const"), branch.get("enum")) {
                (Some(value), _) => values.push(leak(value)?),
                (None, Some(Value::Array(more))) => {
                    values.extend(more.iter().map(leak).collect::<Option<Vec<_>>>()?)
                }
                _ => return None,
            }
        }
        return Some(values);
    }
    None
}

/// The pool of a scalar field: its enum's values, else a hint for its name, else by its type.
fn scalar_pool(field: &str, schema: &Value) -> Vec<&'static str> {
    if let Some(values) = enum_values(schema) {
        return values;
    }
    if let Some((_, pool)) = HINTS.iter().find(|(name, _)| *name == field) {
        return pool.to_vec();
    }
    let pool = match json_type(schema) {
        Some("integer") => NUMBERS,
        Some("number") => FRACTIONS,
        Some("boolean") => BOOLEANS,
        _ if field.ends_with("_path") => FILES,
        _ if field.ends_with("_pem") => PEMS,
        _ => NAMES,
    };
    pool.to_vec()
}

/// The shape of field `field` (the top level is `""`) from its schema.
fn shape(field: &str, schema: &Value) -> Shape {
    let schema = resolve(schema);
    if let Some(Value::Array(branches)) = schema.get("oneOf")
        && enum_values(schema).is_none()
    {
        // A one-key choice: each branch is an object with exactly one property.
        let choices = branches
            .iter()
            .flat_map(|branch| branch["properties"].as_object().into_iter().flatten())
            .map(|(key, value)| (key.clone(), scalar_pool(key, resolve(value))))
            .collect();
        return Shape::OneOf(choices);
    }
    match json_type(schema) {
        Some("object") => {
            let required: Vec<&str> =
                schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let properties =
                schema["properties"].as_object().unwrap_or_else(|| panic!("{field}: no properties"));
            let fields = properties
                .iter()
                .map(|(name, value)| (name.clone(), required.contains(&name.as_str()), shape(name, value)))
                .collect();
            Shape::Object(fields)
        }
        Some("array") => Shape::List(LIST_ITEMS, Box::new(shape(field, &schema["items"]))),
        _ => Shape::Scalar(scalar_pool(field, schema)),
    }
}

fn config_shape() -> Shape {
    let shape = shape("", model_schema());
    assert!(
        matches!(&shape, Shape::Object(fields) if fields.iter().any(|(name, required, _)| name == "listeners" && *required))
    );
    shape
}

/// A document of `shape`; [`Rng::noise`] decides how often it strays.
fn generate(rng: &mut Rng, shape: &Shape) -> Yaml {
    match shape {
        Shape::Scalar(pool) => value_for(rng, pool),
        Shape::List(max, item) => Yaml::Seq((0..rng.below(max + 1)).map(|_| generate(rng, item)).collect()),
        Shape::Object(members) => {
            let mut entries = Vec::new();
            for (name, required, value) in members {
                let include = if *required { !rng.chance(rng.noise) } else { rng.chance(50) };
                if include {
                    entries.push((name.clone(), generate(rng, value)));
                }
            }
            if rng.chance(rng.noise) {
                entries.push((rng.word(fields()).to_owned(), value_for(rng, NAMES)));
            }
            if rng.chance(10) && !entries.is_empty() {
                let i = rng.below(entries.len());
                entries.swap(0, i);
            }
            Yaml::Map(entries)
        }
        Shape::OneOf(choices) => {
            let mut entries = Vec::new();
            for _ in 0..if rng.chance(rng.noise * 2) { 2 } else { 1 } {
                let (key, pool) = &choices[rng.below(choices.len())];
                entries.push((key.clone(), value_for(rng, pool)));
            }
            Yaml::Map(entries)
        }
    }
}

/// A configuration-shaped document with a noise level drawn per document.
fn structured(rng: &mut Rng, shape: &Shape) -> Yaml {
    rng.noise = [0, 0, 1, 3, 10][rng.below(5)];
    generate(rng, shape)
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
                    lines[i] = format!("{}{}{rest}", &lines[i][..indent], rng.pick(fields()));
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
