//! The legacy text formats: folded stacks (`a;b;c 123`, split at the last space) and `lines`
//! (one stack per line, count 1), turned into a pprof profile of one sample type.

use kiln_proto::ProfileBuilder;
use kiln_proto::pprof::Profile;

use super::name::TextType;
use crate::config::Limits;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("body is not UTF-8 text (at byte {0})")]
    NotUtf8(usize),
    #[error("line {line}: expected `<frame>;<frame>;… <count>`, found no count")]
    NoCount { line: usize },
    #[error("line {line}: count {count:?} is not a non-negative integer")]
    BadCount { line: usize, count: String },
    #[error("line {line}: empty stack")]
    EmptyStack { line: usize },
    #[error("line {line}: stack has {depth} frames, more than the limit of {limit}")]
    TooDeep {
        line: usize,
        depth: usize,
        limit: usize,
    },
    #[error("more than {limit} stacks")]
    TooManyStacks { limit: usize },
    #[error("line {line}: value overflows after scaling by the sample period")]
    Overflow { line: usize },
}

impl TextError {
    /// Whether the input is merely too big (413) rather than malformed (422).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            TextError::TooDeep { .. } | TextError::TooManyStacks { .. }
        )
    }
}

/// How one text body becomes a profile.
#[derive(Debug, Clone, Copy)]
pub struct TextOptions {
    pub ty: TextType,
    /// Samples per second (`sampleRate`): CPU and wall counts become nanoseconds at 1e9/rate each.
    pub sample_rate: u32,
    /// `true` for `format=lines`: every line is one stack with count 1.
    pub lines: bool,
    pub time_nanos: i64,
    pub duration_nanos: i64,
}

/// Parses folded or `lines` text into a profile.
pub fn parse(body: &[u8], opts: &TextOptions, limits: &Limits) -> Result<Profile, TextError> {
    let text = std::str::from_utf8(body).map_err(|e| TextError::NotUtf8(e.valid_up_to()))?;
    let (sample_type, unit, scale) = if opts.ty.is_sampled_time() {
        let period = 1_000_000_000 / i64::from(opts.sample_rate.max(1));
        let ty = if opts.ty.metric == "wall" {
            "wall"
        } else {
            "cpu"
        };
        (ty, "nanoseconds", period)
    } else {
        (opts.ty.sample_type, opts.ty.unit, 1)
    };
    let mut b = ProfileBuilder::new(&[(sample_type, unit)]);
    if opts.ty.is_sampled_time() {
        b.period("cpu", "nanoseconds", scale);
    }
    b.time(opts.time_nanos, opts.duration_nanos);

    let mut stacks = 0usize;
    // The builder sums repeated stacks; a bounded grand total keeps every such sum in range.
    let mut total: i64 = 0;
    let mut locations = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.trim().is_empty() {
            continue;
        }
        let (stack, count) = if opts.lines {
            (raw, 1)
        } else {
            let (stack, count) = raw.rsplit_once(' ').ok_or(TextError::NoCount { line })?;
            let count: i64 = count.trim().parse().map_err(|_| TextError::BadCount {
                line,
                count: count.to_owned(),
            })?;
            if count < 0 {
                return Err(TextError::BadCount {
                    line,
                    count: count.to_string(),
                });
            }
            (stack, count)
        };
        if count == 0 {
            continue;
        }
        let value = count
            .checked_mul(scale)
            .ok_or(TextError::Overflow { line })?;
        total = total
            .checked_add(value)
            .ok_or(TextError::Overflow { line })?;
        let frames: Vec<&str> = stack.split(';').filter(|f| !f.is_empty()).collect();
        if frames.is_empty() {
            return Err(TextError::EmptyStack { line });
        }
        if frames.len() > limits.max_stack_depth {
            return Err(TextError::TooDeep {
                line,
                depth: frames.len(),
                limit: limits.max_stack_depth,
            });
        }
        stacks += 1;
        if stacks > limits.max_samples_per_profile {
            return Err(TextError::TooManyStacks {
                limit: limits.max_samples_per_profile,
            });
        }
        locations.clear();
        // Folded stacks are root first; pprof wants the leaf first.
        for frame in frames.iter().rev() {
            let f = b.function(frame, "");
            locations.push(b.symbolized_location(0, 0, &[(f, 0)]));
        }
        b.add_sample(&locations, &[value], &[]);
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::name::split_text_type;

    fn opts(name: &str, lines: bool) -> TextOptions {
        TextOptions {
            ty: split_text_type(name).unwrap().1,
            sample_rate: 100,
            lines,
            time_nanos: 1,
            duration_nanos: 10,
        }
    }

    /// (stack root-first joined by ';', value) for every sample, sorted.
    fn stacks(p: &Profile) -> Vec<(String, i64)> {
        let name = |loc: u64| {
            let l = p.location.iter().find(|l| l.id == loc).unwrap();
            let f = p
                .function
                .iter()
                .find(|f| f.id == l.line[0].function_id)
                .unwrap();
            p.str(f.name).to_owned()
        };
        let mut v: Vec<_> = p
            .sample
            .iter()
            .map(|s| {
                let names: Vec<_> = s.location_id.iter().rev().map(|&l| name(l)).collect();
                (names.join(";"), s.value[0])
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn folded_cpu_scaled_to_nanoseconds() {
        let body = b"main;work;leaf 3\nmain;idle 1\r\n\nmain;with space;x 2\n";
        let p = parse(body, &opts("app.cpu", false), &Limits::default()).unwrap();
        assert_eq!(p.str(p.sample_type[0].r#type), "cpu");
        assert_eq!(p.str(p.sample_type[0].unit), "nanoseconds");
        assert_eq!(p.period, 10_000_000);
        assert_eq!(
            stacks(&p),
            vec![
                ("main;idle".into(), 10_000_000),
                ("main;with space;x".into(), 20_000_000),
                ("main;work;leaf".into(), 30_000_000),
            ]
        );
    }

    #[test]
    fn lines_count_one_each_and_memory_not_scaled() {
        let p = parse(
            b"a;b\na;b\na;c\n",
            &opts("app.wall", true),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(p.str(p.sample_type[0].r#type), "wall");
        assert_eq!(
            stacks(&p),
            vec![("a;b".into(), 20_000_000), ("a;c".into(), 10_000_000)]
        );
        let p = parse(
            b"a;b 4096\n",
            &opts("app.alloc_space", false),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(p.str(p.sample_type[0].r#type), "alloc_space");
        assert_eq!(stacks(&p), vec![("a;b".into(), 4096)]);
    }

    #[test]
    fn bad_text_named() {
        let l = Limits::default();
        let o = opts("app", false);
        assert_eq!(parse(b"a;b\n", &o, &l), Err(TextError::NoCount { line: 1 }));
        assert!(matches!(
            parse(b"a 1\na;b x1\n", &o, &l),
            Err(TextError::BadCount { line: 2, .. })
        ));
        assert!(matches!(
            parse(b"a -1", &o, &l),
            Err(TextError::BadCount { .. })
        ));
        assert_eq!(
            parse(b";; 1", &o, &l),
            Err(TextError::EmptyStack { line: 1 })
        );
        assert_eq!(parse(b"a \xff 1", &o, &l), Err(TextError::NotUtf8(2)));
        assert_eq!(
            parse(b"a 9223372036854775807", &o, &l),
            Err(TextError::Overflow { line: 1 })
        );
        let mem = opts("app.inuse_space", false);
        assert_eq!(
            parse(b"a 9223372036854775807\na 1", &mem, &l),
            Err(TextError::Overflow { line: 2 })
        );
        let small = Limits {
            max_stack_depth: 2,
            max_samples_per_profile: 1,
            ..Limits::default()
        };
        assert!(parse(b"a;b;c 1", &o, &small).unwrap_err().is_too_large());
        assert!(parse(b"a 1\nb 1", &o, &small).unwrap_err().is_too_large());
    }
}
