//! PromQL-style label selectors (`{service_name="nginx", comm=~"py.*"}`): parsing and matching,
//! the one selector language of every query surface (Kiln's API, Pyroscope's Connect methods and
//! `/pyroscope/render`).
//!
//! Label names are Prometheus-style (`[a-zA-Z_][a-zA-Z0-9_.]*`) or, as in Prometheus 3 and
//! Pyroscope, any quoted string: `{"service.name"="api"}`; a lone quoted string inside the braces
//! is the metric name (`{"process_cpu"}` = `{__name__="process_cpu"}`).
//!
//! Pyroscope's profile-type labels (`__profile_type__`, `__type__`, `__unit__`,
//! `__period_type__`, `__period_unit__`, see [`super::profile_type`]) are not series labels in
//! Kiln: a series holds several sample types. A matcher on one is evaluated against a (series,
//! sample type) pair: exactly by [`Selector::matches_type`], or by [`Selector::matches`] once the
//! selector is [bound](Selector::bind) to the sample type a query reads. Unbound,
//! [`Selector::matches`] leaves such matchers to the caller (the store's series filter cannot know
//! the type; the query layer checks each type with `matches_type`).

use std::fmt;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};

use super::profile_type::{TypeLabels, is_type_label};
use crate::store::Labels;

/// Compiled regexes are capped so a hostile query cannot make the server build a huge automaton.
const MAX_REGEX_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid selector at position {pos}: {msg}")]
pub struct SelectorError {
    /// Character offset into the query where the problem was found.
    pub pos: usize,
    pub msg: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::NotRe => "!~",
        })
    }
}

/// One `name op "value"` condition.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// Anchored regex for `=~` / `!~`.
    regex: Option<Regex>,
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, regex::Error> {
        let regex = match op {
            MatchOp::Re | MatchOp::NotRe => Some(
                RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(MAX_REGEX_BYTES)
                    .build()?,
            ),
            MatchOp::Eq | MatchOp::Ne => None,
        };
        Ok(Matcher {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            regex,
        })
    }

    /// `name = "value"`: the one operator that cannot fail to build.
    pub fn equal(name: &str, value: &str) -> Matcher {
        Matcher {
            name: name.to_owned(),
            op: MatchOp::Eq,
            value: value.to_owned(),
            regex: None,
        }
    }

    /// Matches like Prometheus: a missing label has the empty value.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(&self.name).unwrap_or(""))
    }

    /// True when the label's value `v` (empty when absent) satisfies the matcher.
    pub fn matches_value(&self, v: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Eq, _) => v == self.value,
            (MatchOp::Ne, _) => v != self.value,
            (MatchOp::Re, Some(re)) => re.is_match(v),
            (MatchOp::NotRe, Some(re)) => !re.is_match(v),
            // `new` always compiles a regex for the regex operators.
            (MatchOp::Re | MatchOp::NotRe, None) => false,
        }
    }
}

/// A conjunction of matchers; empty selects everything.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
    /// The `type:unit` sample type that profile-type matchers are evaluated against in
    /// [`Selector::matches`] (set by [`Selector::bind`]).
    bound: Option<Arc<str>>,
}

impl Selector {
    /// Selects every series.
    pub fn all() -> Selector {
        Selector::default()
    }

    /// The selector as a store filters series with it: every matcher on series labels, and the
    /// profile-type matchers against the bound sample type (unbound: not checked here, see the
    /// module docs).
    pub fn matches(&self, labels: &Labels) -> bool {
        match &self.bound {
            Some(t) => self.matches_type(labels, t),
            None => self
                .matchers
                .iter()
                .filter(|m| !is_type_label(&m.name))
                .all(|m| m.matches(labels)),
        }
    }

    /// Exactly: does the series `labels` with sample type `type_unit` match every matcher?
    pub fn matches_type(&self, labels: &Labels, type_unit: &str) -> bool {
        let mut typed: Option<TypeLabels> = None;
        self.matchers.iter().all(|m| {
            if is_type_label(&m.name) {
                let t = typed.get_or_insert_with(|| {
                    TypeLabels::new(labels.get("__name__").unwrap_or(""), type_unit)
                });
                m.matches_value(&t.get(&m.name).unwrap_or_default())
            } else {
                m.matches(labels)
            }
        })
    }

    /// True when some matcher is on a profile-type label.
    pub fn has_type_matchers(&self) -> bool {
        self.matchers.iter().any(|m| is_type_label(&m.name))
    }

    /// The selector for reading sample type `type_unit` (`cpu:nanoseconds`): its profile-type
    /// matchers are then evaluated by [`Selector::matches`] too.
    pub fn bind(mut self, type_unit: &str) -> Selector {
        self.bound = Some(Arc::from(type_unit));
        self
    }

    /// Parses `{a="b", c!~"d.*"}`. An empty string or `{}` selects everything; a leading bare name
    /// (`process_cpu{...}`) is shorthand for `__name__="process_cpu"`, as in PromQL.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        Parser {
            chars: input.chars().collect(),
            pos: 0,
        }
        .selector()
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            pos: self.pos,
            msg: msg.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn describe(&self) -> String {
        match self.peek() {
            Some(c) => format!("{c:?}"),
            None => "end of input".to_owned(),
        }
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut matchers = Vec::new();
        self.skip_ws();
        if self.peek().is_some_and(is_name_start) {
            let name = self.name()?;
            matchers.push(Matcher::new("__name__", MatchOp::Eq, &name).map_err(|e| {
                SelectorError {
                    pos: 0,
                    msg: e.to_string(),
                }
            })?);
            self.skip_ws();
        }
        if self.peek() == Some('{') {
            self.pos += 1;
            loop {
                self.skip_ws();
                match self.peek() {
                    Some('}') => {
                        self.pos += 1;
                        break;
                    }
                    None => return self.err("unclosed '{': expected a matcher or '}'"),
                    _ => {}
                }
                matchers.push(self.matcher()?);
                self.skip_ws();
                match self.peek() {
                    Some(',') => self.pos += 1,
                    Some('}') => {}
                    None => return self.err("unclosed '{': expected ',' or '}'"),
                    _ => {
                        return self
                            .err(format!("expected ',' or '}}', found {}", self.describe()));
                    }
                }
            }
        } else if self.peek().is_some() {
            return self.err(format!("expected '{{', found {}", self.describe()));
        }
        self.skip_ws();
        if self.peek().is_some() {
            return self.err(format!("unexpected {} after the selector", self.describe()));
        }
        Ok(Selector {
            matchers,
            bound: None,
        })
    }

    fn name(&mut self) -> Result<String, SelectorError> {
        if !self.peek().is_some_and(is_name_start) {
            return self.err(format!("expected a label name, found {}", self.describe()));
        }
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn matcher(&mut self) -> Result<Matcher, SelectorError> {
        let name_pos = self.pos;
        let name = if matches!(self.peek(), Some('"' | '\'' | '`')) {
            // A quoted (UTF-8) label name, or alone the metric name.
            let name = self.string()?;
            self.skip_ws();
            if matches!(self.peek(), Some(',' | '}')) {
                return Ok(Matcher::equal("__name__", &name));
            }
            if name.is_empty() {
                return Err(SelectorError {
                    pos: name_pos,
                    msg: "empty label name".into(),
                });
            }
            name
        } else {
            self.name()?
        };
        self.skip_ws();
        let op = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (Some('='), Some('~')) => MatchOp::Re,
            (Some('!'), Some('~')) => MatchOp::NotRe,
            (Some('!'), Some('=')) => MatchOp::Ne,
            (Some('='), _) => MatchOp::Eq,
            _ => {
                return self.err(format!(
                    "expected one of =, !=, =~, !~ after {name:?}, found {}",
                    self.describe()
                ));
            }
        };
        self.pos += if op == MatchOp::Eq { 1 } else { 2 };
        self.skip_ws();
        let value_pos = self.pos;
        let value = self.string()?;
        Matcher::new(&name, op, &value).map_err(|e| SelectorError {
            pos: value_pos,
            msg: format!("bad regex for {name:?}: {e}"),
        })
    }

    /// A double- or single-quoted string with Go-style escapes.
    fn string(&mut self) -> Result<String, SelectorError> {
        let quote = match self.peek() {
            Some(q @ ('"' | '\'' | '`')) => q,
            _ => {
                return self.err(format!(
                    "expected a quoted value, found {}",
                    self.describe()
                ));
            }
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return self.err("unterminated string");
            };
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                // Backquoted strings are raw, as in PromQL.
                '\\' if quote != '`' => {
                    let Some(e) = self.peek() else {
                        return self.err("unterminated string");
                    };
                    self.pos += 1;
                    out.push(match e {
                        '\\' => '\\',
                        '"' => '"',
                        '\'' => '\'',
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        _ => {
                            self.pos -= 1;
                            return self.err(format!("unknown escape sequence \\{e}"));
                        }
                    });
                }
                c => out.push(c),
            }
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn empty_selects_everything() {
        for q in ["", "  ", "{}", " { } "] {
            let s = Selector::parse(q).unwrap();
            assert!(s.matchers.is_empty(), "{q:?}");
            assert!(s.matches(&labels(&[("a", "b")])));
        }
    }

    #[test]
    fn all_operators() {
        let s =
            Selector::parse(r#"{service_name="nginx", pid!="1", comm=~"py.*",x!~'a|b',}"#).unwrap();
        assert_eq!(s.matchers.len(), 4);
        let ops: Vec<_> = s.matchers.iter().map(|m| m.op).collect();
        assert_eq!(ops, [MatchOp::Eq, MatchOp::Ne, MatchOp::Re, MatchOp::NotRe]);
        assert!(s.matches(&labels(&[("service_name", "nginx"), ("comm", "python3")])));
        assert!(!s.matches(&labels(&[("service_name", "nginx"), ("comm", "xpython")])));
        assert!(!s.matches(&labels(&[
            ("service_name", "nginx"),
            ("comm", "py"),
            ("pid", "1")
        ])));
        assert!(!s.matches(&labels(&[
            ("service_name", "nginx"),
            ("comm", "py"),
            ("x", "a")
        ])));
        assert!(!s.matches(&labels(&[("service_name", "apache"), ("comm", "py")])));
    }

    #[test]
    fn regexes_are_anchored_and_missing_labels_are_empty() {
        let s = Selector::parse(r#"{comm=~"py"}"#).unwrap();
        assert!(!s.matches(&labels(&[("comm", "python")])));
        let s = Selector::parse(r#"{pid=""}"#).unwrap();
        assert!(s.matches(&labels(&[("comm", "x")])));
        let s = Selector::parse(r#"{pid!~".+"}"#).unwrap();
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn metric_name_shorthand_and_escapes() {
        let s = Selector::parse(r#"process_cpu{a="x\"y\\z"}"#).unwrap();
        assert_eq!(s.matchers[0].name, "__name__");
        assert_eq!(s.matchers[0].value, "process_cpu");
        assert_eq!(s.matchers[1].value, "x\"y\\z");
        let s = Selector::parse("{a=`raw\\d`}").unwrap();
        assert_eq!(s.matchers[0].value, "raw\\d");
    }

    #[test]
    fn quoted_utf8_label_names() {
        let s = Selector::parse(r#"{"service.name"="api", "process_cpu", 'a b'!~"x.*"}"#).unwrap();
        assert_eq!(s.matchers[0].name, "service.name");
        assert_eq!(
            (s.matchers[1].name.as_str(), s.matchers[1].value.as_str()),
            ("__name__", "process_cpu")
        );
        assert_eq!(s.matchers[2].name, "a b");
        assert!(s.matches(&labels(&[
            ("service.name", "api"),
            ("__name__", "process_cpu"),
            ("a b", "y")
        ])));
        assert!(
            Selector::parse(r#"{""="x"}"#)
                .unwrap_err()
                .to_string()
                .contains("empty label name")
        );
    }

    #[test]
    fn profile_type_labels_are_matched_per_sample_type() {
        let series = labels(&[("__name__", "process_cpu"), ("service_name", "api")]);
        for op in ["=", "!=", "=~", "!~"] {
            let value = match op {
                "=" | "!=" => "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
                _ => "process_cpu:cpu:.*",
            };
            let s = Selector::parse(&format!(
                r#"{{__profile_type__{op}"{value}", service_name="api"}}"#
            ))
            .unwrap();
            assert!(s.has_type_matchers());
            let positive = op == "=" || op == "=~";
            assert_eq!(s.matches_type(&series, "cpu:nanoseconds"), positive, "{op}");
            assert_eq!(s.matches_type(&series, "samples:count"), !positive, "{op}");
            // Unbound, the series filter leaves the type matcher to the caller…
            assert!(s.matches(&series), "{op}");
            // …bound, it applies it.
            assert_eq!(
                s.clone().bind("cpu:nanoseconds").matches(&series),
                positive,
                "{op}"
            );
        }
        let s = Selector::parse(r#"{__type__="samples", __unit__="count", __period_type__="cpu", __period_unit__="nanoseconds"}"#).unwrap();
        assert!(s.matches_type(&series, "samples:count"));
        assert!(!s.matches_type(&series, "cpu:nanoseconds"));
        // Series labels still decide: another service does not match.
        let s = Selector::parse(r#"{__type__="cpu", service_name="db"}"#).unwrap();
        assert!(!s.matches_type(&series, "cpu:nanoseconds"));
        assert!(!s.matches(&series));
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("{a=\"b\"", "unclosed"),
            ("{a=b}", "expected a quoted value"),
            ("{a==\"b\"}", "expected a quoted value"),
            ("{a~\"b\"}", "expected one of =, !=, =~, !~"),
            ("{=\"b\"}", "expected a label name"),
            ("{a=\"b\" c=\"d\"}", "expected ',' or '}'"),
            ("{a=\"b}", "unterminated string"),
            ("{a=~\"(\"}", "bad regex"),
            ("{a=\"b\"} x", "after the selector"),
            ("{a=\"\\q\"}", "unknown escape"),
            ("\"x\"", "expected '{'"),
        ];
        for (q, want) in cases {
            let e = Selector::parse(q).unwrap_err();
            assert!(e.to_string().contains(want), "{q:?}: got {e}");
        }
        assert_eq!(Selector::parse("{a=b}").unwrap_err().pos, 3);
    }
}
