//! Finds where a field path (`virtual_hosts[0].routes[2].backend`) sits in the YAML text, so
//! validation problems are reported as `file:line:column` like parse errors are. It reads the
//! events of the parser that serde-saphyr deserializes with (granit-parser, which serde-saphyr
//! re-exports), so both kinds of error count lines and columns the same way.

use serde_saphyr::granit_parser::{Event, Marker, Parser, Span, SpannedEventReceiver};

/// A YAML node with where it starts; mapping entries keep where their key starts.
enum Node {
    Scalar(String),
    Sequence(Vec<(Marker, Node)>),
    Mapping(Vec<(String, Marker, Node)>),
}

/// A container being built: where it starts, its contents, and a mapping key waiting for
/// its value.
struct Open {
    start: Marker,
    node: Node,
    pending_key: Option<(String, Marker)>,
}

#[derive(Default)]
struct Builder {
    /// Open containers, innermost last.
    stack: Vec<Open>,
    root: Option<(Marker, Node)>,
}

impl Builder {
    /// Ends the innermost open container.
    fn close(&mut self) {
        if let Some(Open { mut start, node, .. }) = self.stack.pop() {
            // A block mapping's start event is marked after its first key; point at the key,
            // where a reader looks.
            if let Node::Mapping(entries) = &node
                && let Some((_, first_key, _)) = entries.first()
                && first_key.index() < start.index()
            {
                start = *first_key;
            }
            self.push_value(start, node);
        }
    }

    fn push_value(&mut self, mark: Marker, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some((mark, node)),
            Some(Open { node: Node::Sequence(items), .. }) => items.push((mark, node)),
            Some(Open { node: Node::Mapping(entries), pending_key: pending, .. }) => match pending.take() {
                Some((key, key_mark)) => entries.push((key, key_mark, node)),
                None => {
                    // A key: scalars become names; anything else cannot be addressed by a path.
                    let key = match node {
                        Node::Scalar(s) => s,
                        _ => String::new(),
                    };
                    *pending = Some((key, mark));
                }
            },
            Some(Open { node: Node::Scalar(_), .. }) => {}
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        let mark = span.start;
        match event {
            Event::Scalar(value, ..) => self.push_value(mark, Node::Scalar(value.into_owned())),
            Event::Alias(_) => self.push_value(mark, Node::Scalar(String::new())),
            Event::SequenceStart(..) => {
                self.stack.push(Open { start: mark, node: Node::Sequence(Vec::new()), pending_key: None })
            }
            Event::MappingStart(..) => {
                self.stack.push(Open { start: mark, node: Node::Mapping(Vec::new()), pending_key: None })
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            _ => {}
        }
    }
}

/// A path segment: a mapping key or a sequence index.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map(|(k, r)| (k, Some(r))).unwrap_or((part, None));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(r) = rest {
            let (index, after) = r.split_once(']').unwrap_or((r, ""));
            if let Ok(index) = index.parse() {
                out.push(Segment::Index(index));
            }
            rest = after.strip_prefix('[');
        }
    }
    out
}

/// Where every node of a YAML text starts, to look field paths up in.
pub struct Positions {
    root: Option<(Marker, Node)>,
}

impl Positions {
    pub fn of(yaml: &str) -> Positions {
        let mut builder = Builder::default();
        // A syntax error later in the file leaves what came before it addressable: the model
        // can fail on that part first (a repeated field before a broken line).
        if Parser::new_from_str(yaml).load(&mut builder, false).is_err() {
            while !builder.stack.is_empty() {
                builder.close();
            }
        }
        Positions { root: builder.root }
    }

    /// 1-based (line, column) of the deepest node of `path` present in the text.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let (root_mark, root) = self.root.as_ref()?;
        let mut found = *root_mark;
        let mut node = root;
        for segment in segments(path) {
            let next = match (segment, node) {
                (Segment::Key(key), Node::Mapping(entries)) => {
                    entries.iter().find(|(k, _, _)| k == key).map(|(_, mark, node)| (*mark, node))
                }
                (Segment::Index(i), Node::Sequence(items)) => items.get(i).map(|(mark, node)| (*mark, node)),
                _ => None,
            };
            let Some((mark, child)) = next else { break };
            found = mark;
            node = child;
        }
        // The parser counts lines from 1 and columns from 0.
        Some((found.line(), found.col() + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locate(yaml: &str, path: &str) -> Option<(usize, usize)> {
        Positions::of(yaml).locate(path)
    }

    const YAML: &str = "listeners:\n  - name: a\n    address: x\nvirtual_hosts:\n  - name: v\n    routes:\n      - backend: b\n      - {backend: c, match: {path: {prefix: /p}}}\n";

    #[test]
    fn paths_resolve_to_their_key_or_item() {
        assert_eq!(locate(YAML, "listeners[0].address"), Some((3, 5)));
        assert_eq!(locate(YAML, "virtual_hosts[0].routes[0].backend"), Some((7, 9)));
        assert_eq!(locate(YAML, "virtual_hosts[0].routes[1].match.path"), Some((8, 30)));
        assert_eq!(locate(YAML, "virtual_hosts[0].routes[1]"), Some((8, 9)));
    }

    #[test]
    fn what_precedes_a_syntax_error_is_located() {
        let yaml = "workers: 1\nbackends:\n  - name: b\n  - [unclosed\n";
        assert_eq!(locate(yaml, "backends[0].name"), Some((3, 5)));
        assert_eq!(locate(yaml, ""), Some((1, 1)));
    }

    #[test]
    fn a_missing_field_points_at_its_deepest_present_parent() {
        assert_eq!(locate(YAML, "virtual_hosts[0].routes[0].redirect.code"), Some((7, 9)));
        assert_eq!(locate(YAML, "backends[0]"), Some((1, 1)));
    }
}
