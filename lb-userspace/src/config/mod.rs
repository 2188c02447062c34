//! The one internal configuration model, its YAML form and its validation.
//!
//! `model` holds the types (one-to-one with the YAML file); `validate` checks everything serde
//! cannot, and reports every problem at once with the path of the offending field.

mod locate;
mod model;
mod validate;

pub(crate) use validate::valid_domain;

use std::path::Path;

pub use model::*;

/// The built-in configuration served when no file is given.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../../config/default.yaml");

/// Upper bound on workers: beyond this, threads only contend.
pub const MAX_WORKERS: usize = 1024;

/// One thing wrong with a configuration: where (a field path such as
/// `virtual_hosts[0].routes[2].backend`, and its line and column in the file when known) and
/// what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{source_name}: cannot read: {source}")]
    Read {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}:{line}:{column}: {message}")]
    Parse { source_name: String, line: usize, column: usize, message: String },
    #[error("{}", render_problems(source_name, problems))]
    Invalid { source_name: String, problems: Vec<Problem> },
}

fn render_problems(source_name: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{source_name}:{}:{}: {}: {}", p.line, p.column, p.path, p.message))
        .collect();
    lines.join("\n")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Config {
    /// Parses and validates YAML. `source_name` names the input in errors (a path or "built-in").
    pub fn from_yaml(yaml: &str, source_name: &str) -> Result<Config> {
        let config: Config = serde_yaml::from_str(yaml).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            Error::Parse { source_name: source_name.to_owned(), line, column, message: e.to_string() }
        })?;
        let mut problems = validate::problems(&config);
        for problem in &mut problems {
            (problem.line, problem.column) = locate::locate(yaml, &problem.path).unwrap_or((1, 1));
        }
        // In file order, as a reader goes through the file.
        problems.sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
        if !problems.is_empty() {
            return Err(Error::Invalid { source_name: source_name.to_owned(), problems });
        }
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let source_name = path.display().to_string();
        let yaml = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { source_name: source_name.clone(), source })?;
        Config::from_yaml(&yaml, &source_name)
    }

    /// Validates a configuration built or changed in code (command-line overrides, a
    /// provider's translation): the same rules as for a file, without positions.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid { source_name: source_name.to_owned(), problems })
        }
    }

    pub fn builtin() -> Config {
        Config::from_yaml(DEFAULT_CONFIG_YAML, "built-in").expect("the built-in configuration is valid")
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map(usize::from).unwrap_or(1)
        } else {
            self.workers
        }
    }

    /// The own port of `worker` for listener `listener` when XDP steers: listeners take
    /// consecutive blocks of `worker_count` ports from `xdp.worker_port_base`.
    pub fn worker_port(&self, listener: usize, worker: usize) -> u16 {
        self.xdp.worker_port_base + (listener * self.worker_count() + worker) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<Problem> {
        match Config::from_yaml(yaml, "t.yaml") {
            Err(Error::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn builtin_config_parses() {
        let config = Config::builtin();
        assert_eq!(config.listeners[0].address.port(), 8080);
        assert!(config.xdp.enabled);
    }

    #[test]
    fn unknown_field_is_an_error_with_position() {
        let err = Config::from_yaml("listeners: []\nlisten_port: 3\n", "t.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("t.yaml:2:"), "{text}");
        assert!(text.contains("listen_port"), "{text}");
    }

    #[test]
    fn bad_address_is_an_error() {
        let err = Config::from_yaml("listeners: [{name: a, address: nowhere}]\n", "t.yaml").unwrap_err();
        assert!(matches!(err, Error::Parse { line: 1, .. }), "{err}");
    }

    #[test]
    fn worker_port_blocks_follow_listeners() {
        let config = Config::from_yaml(
            "workers: 3\nlisteners: [{name: a, address: '0.0.0.0:80'}, {name: b, address: '0.0.0.0:81'}]\n",
            "t",
        )
        .unwrap();
        assert_eq!(config.worker_port(0, 0), 20000);
        assert_eq!(config.worker_port(1, 2), 20005);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let found = problems(
            "listeners: [{name: a, address: '0.0.0.0:0'}]\nxdp: {interfaces: ['a/b'], heartbeat_timeout_ms: 1}\n",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        // In file order.
        assert_eq!(paths, ["listeners[0].address", "xdp.interfaces[0]", "xdp.heartbeat_timeout_ms"]);
        let positions: Vec<(usize, usize)> = found.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(positions, [(1, 23), (2, 20), (2, 28)]);
    }
}

#[cfg(test)]
mod rendering {
    use super::*;

    #[test]
    fn invalid_files_render_one_line_per_problem_with_line_and_column() {
        let yaml = "listeners:\n  - name: a\n    address: '0.0.0.0:80'\nvirtual_hosts:\n  - name: v\n    domains: ['*']\n    routes:\n      - backend: missing\n";
        let text = Config::from_yaml(yaml, "f.yaml").unwrap_err().to_string();
        assert_eq!(text, "f.yaml:8:9: virtual_hosts[0].routes[0].backend: no backend named \"missing\"");
    }
}
