//! The legacy `/ingest` metadata: the `name` parameter (`app.type{k=v,…}`), profile-type
//! suffixes, and the `__name__` Pyroscope derives from a pprof's sample types.

/// `name` split into its application name and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKey {
    /// Everything before `{`, e.g. `my.app.cpu`.
    pub app: String,
    /// The labels inside `{}`, in order, `__`-prefixed ones dropped except `__session_id__`.
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is empty: expected <app>[.<type>]{{k=v,…}}")]
    Empty,
    #[error("name {0:?}: the application name before '{{' is empty")]
    EmptyApp(String),
    #[error("name {0:?}: missing closing '}}'")]
    Unclosed(String),
    #[error("name {0:?}: text after the closing '}}'")]
    Trailing(String),
    #[error("name {name:?}: label {pair:?} is not k=v")]
    BadPair { name: String, pair: String },
    #[error(
        "unknown profile type {0:?} in name: use cpu, wall, itimer, inuse_objects, inuse_space, alloc_objects, alloc_space, goroutines, mutex_count, mutex_duration, block_count, block_duration, lock_count, lock_duration, live, exceptions"
    )]
    UnknownType(String),
}

/// Parses `app.name{k=v,k2=v2}` the way Pyroscope's labelset parser does: values unquoted,
/// comma-separated, surrounding spaces trimmed.
pub fn parse_name(name: &str) -> Result<AppKey, NameError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let (app, rest) = match name.find('{') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    let app = app.trim();
    if app.is_empty() {
        return Err(NameError::EmptyApp(name.to_owned()));
    }
    let mut labels = Vec::new();
    if let Some(rest) = rest {
        let Some(end) = rest.find('}') else {
            return Err(NameError::Unclosed(name.to_owned()));
        };
        if !rest[end + 1..].trim().is_empty() {
            return Err(NameError::Trailing(name.to_owned()));
        }
        for pair in rest[..end].split(',') {
            if pair.trim().is_empty() {
                continue;
            }
            let Some((k, v)) = pair.split_once('=') else {
                return Err(NameError::BadPair {
                    name: name.to_owned(),
                    pair: pair.to_owned(),
                });
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(NameError::BadPair {
                    name: name.to_owned(),
                    pair: pair.to_owned(),
                });
            }
            // Reserved names (`__name__`, `__tenant__`, …) are the server's to set.
            if k.starts_with("__") && k != "__session_id__" {
                continue;
            }
            labels.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok(AppKey {
        app: app.to_owned(),
        labels,
    })
}

/// What a text-format profile's type suffix stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextType {
    /// Series `__name__`.
    pub metric: &'static str,
    /// pprof sample type and unit.
    pub sample_type: &'static str,
    pub unit: &'static str,
}

impl TextType {
    /// Whether counts are samples at `sampleRate` Hz, to be scaled to nanoseconds.
    pub fn is_sampled_time(&self) -> bool {
        self.metric == "process_cpu" || self.metric == "wall"
    }
}

/// Splits `app.type` into the application name and its profile type (`cpu` when there is no dot,
/// so `name=myapp` means CPU as it always did).
pub fn split_text_type(app: &str) -> Result<(String, TextType), NameError> {
    let (service, suffix) = match app.rsplit_once('.') {
        Some((s, t)) if !s.is_empty() => (s, t),
        _ => (app, "cpu"),
    };
    let t = |metric, sample_type, unit| TextType {
        metric,
        sample_type,
        unit,
    };
    let tt = match suffix {
        "cpu" | "itimer" => t("process_cpu", "samples", "count"),
        "wall" => t("wall", "samples", "count"),
        "inuse_objects" => t("memory", "inuse_objects", "count"),
        "inuse_space" => t("memory", "inuse_space", "bytes"),
        "alloc_objects" => t("memory", "alloc_objects", "count"),
        "alloc_space" => t("memory", "alloc_space", "bytes"),
        "goroutines" => t("goroutine", "goroutines", "count"),
        "mutex_count" => t("mutex", "contentions", "count"),
        "mutex_duration" => t("mutex", "delay", "nanoseconds"),
        "block_count" | "lock_count" => t("block", "contentions", "count"),
        "block_duration" | "lock_duration" => t("block", "delay", "nanoseconds"),
        "live" => t("memory", "live", "count"),
        "exceptions" => t("exceptions", "samples", "count"),
        other => return Err(NameError::UnknownType(other.to_owned())),
    };
    Ok((service.to_owned(), tt))
}

/// The `__name__` Pyroscope gives a pprof upload, from its sample types (after `display-name`
/// renames from `sample_type_config`): `wall` wins, then the first type that names cpu, memory,
/// mutex, block or goroutines.
pub fn pprof_metric_name<'a>(sample_types: impl Iterator<Item = &'a str> + Clone) -> String {
    if sample_types.clone().any(|t| t == "wall") {
        return "wall".to_owned();
    }
    let mut last = "";
    for st in sample_types {
        last = st;
        if st.contains("cpu") {
            return "process_cpu".to_owned();
        }
        if st.contains("alloc_") || st.contains("inuse_") || st == "space" || st == "objects" {
            return "memory".to_owned();
        }
        if st.contains("mutex_") {
            return "mutex".to_owned();
        }
        if st.contains("block_") {
            return "block".to_owned();
        }
        if st.contains("goroutines") {
            return "goroutines".to_owned();
        }
    }
    if last.is_empty() {
        "unknown".to_owned()
    } else {
        last.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn names_parsed() {
        assert_eq!(
            parse_name("my.app.cpu{env=prod, region = eu-1,__name__=x,__session_id__=s,}").unwrap(),
            AppKey {
                app: "my.app.cpu".into(),
                labels: pairs(&[("env", "prod"), ("region", "eu-1"), ("__session_id__", "s")]),
            }
        );
        assert_eq!(parse_name("app").unwrap().labels, vec![]);
        assert_eq!(parse_name("app{}").unwrap().app, "app");
        assert_eq!(parse_name(""), Err(NameError::Empty));
        assert!(matches!(parse_name("{a=b}"), Err(NameError::EmptyApp(_))));
        assert!(matches!(parse_name("app{a=b"), Err(NameError::Unclosed(_))));
        assert!(matches!(
            parse_name("app{a=b}x"),
            Err(NameError::Trailing(_))
        ));
        assert!(matches!(
            parse_name("app{ab}"),
            Err(NameError::BadPair { .. })
        ));
        assert!(matches!(
            parse_name("app{=b}"),
            Err(NameError::BadPair { .. })
        ));
    }

    #[test]
    fn text_types() {
        let (app, t) = split_text_type("my.app.wall").unwrap();
        assert_eq!(app, "my.app");
        assert_eq!(t.metric, "wall");
        assert!(t.is_sampled_time());
        let (app, t) = split_text_type("plain").unwrap();
        assert_eq!((app.as_str(), t.metric), ("plain", "process_cpu"));
        let (_, t) = split_text_type("x.alloc_space").unwrap();
        assert_eq!(
            (t.metric, t.sample_type, t.unit),
            ("memory", "alloc_space", "bytes")
        );
        assert!(!t.is_sampled_time());
        assert_eq!(
            split_text_type("x.bogus"),
            Err(NameError::UnknownType("bogus".into()))
        );
    }

    #[test]
    fn pprof_metric_names() {
        let n = |t: &[&str]| pprof_metric_name(t.iter().copied());
        assert_eq!(n(&["samples", "cpu"]), "process_cpu");
        assert_eq!(n(&["samples", "wall", "cpu"]), "wall");
        assert_eq!(n(&["inuse_objects", "inuse_space"]), "memory");
        assert_eq!(n(&["contentions", "mutex_delay"]), "mutex");
        assert_eq!(n(&["samples"]), "samples");
        assert_eq!(n(&[]), "unknown");
    }
}
