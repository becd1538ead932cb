//! A borrowing pprof scanner for the push fast path: it reads the protobuf wire format of a
//! decompressed `Profile` in place, makes exactly the checks of [`validate_profile`] and extracts
//! what ingest needs (the `type:unit` sample types, the time, the sample count, whether any sample
//! label must become a series label), without materializing the prost [`Profile`].
//!
//! Decoding a profile with prost allocates a `Vec` of location ids and one of values per sample
//! (then frees them all); for a profile that is stored as sent, that was most of a push's CPU.
//!
//! The scanner only ever says "valid, here is what you need" or "take the full path": whenever it
//! returns a [`Fallback`], the caller decodes with prost, validates with [`validate_profile`] and
//! splits with [`super::series::split`] as before, so error messages and rewritten profiles come
//! from exactly the code they always came from. The scanner must therefore never accept what prost
//! or `validate_profile` would reject (its unit tests and the `pprof_scan` fuzz target compare the
//! two), and should accept everything they accept (else a push is merely slower).
//!
//! [`validate_profile`]: super::validate_profile
//! [`Profile`]: kiln_proto::pprof::Profile

use super::series;
use super::validate::{IdSet, MAX_TOTAL};
use crate::config::Limits;

/// Why a profile must go through the full decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The bytes are not a well-formed `Profile` as prost reads it (prost reports why).
    Wire,
    /// Well-formed protobuf the scanner does not read: groups (prost skips them, nested up to its
    /// recursion limit).
    Unsupported,
    /// A check of `validate_profile` fails (it says which).
    Invalid,
    /// A sample label becomes a series label: the profile is split, i.e. rewritten.
    Split,
}

/// What ingest needs from a valid profile that is stored as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// `type:unit` of each sample type, as `validate_profile` returns them.
    pub profile_types: Vec<String>,
    /// The name (`type`) of each sample type.
    pub type_names: Vec<String>,
    /// `time_nanos` as sent (0 when absent).
    pub time_nanos: i64,
    pub samples: usize,
}

pub(crate) type R<T> = Result<T, Fallback>;

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// A LEB128 varint as prost reads it: at most 10 bytes, the 10th at most 1.
#[inline]
pub(crate) fn varint(buf: &mut &[u8]) -> R<u64> {
    let b = *buf;
    // One and two bytes: ids, string indices and lengths of small messages, i.e. nearly all.
    match *b {
        [b0, ..] if b0 < 0x80 => {
            *buf = &b[1..];
            return Ok(u64::from(b0));
        }
        [b0, b1, ..] if b1 < 0x80 => {
            *buf = &b[2..];
            return Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7);
        }
        [] => return Err(Fallback::Wire),
        _ => {}
    }
    let mut value = 0u64;
    for (i, &byte) in b.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte >= 2 {
                return Err(Fallback::Wire);
            }
            *buf = &b[i + 1..];
            return Ok(value);
        }
    }
    Err(Fallback::Wire)
}

/// A field key: (field number, wire type), with prost's checks.
#[inline]
fn key(buf: &mut &[u8]) -> R<(u32, u8)> {
    let key = varint(buf)?;
    let Ok(key) = u32::try_from(key) else {
        return Err(Fallback::Wire);
    };
    let wire_type = (key & 7) as u8;
    let tag = key >> 3;
    if wire_type > FIXED32 || tag == 0 {
        return Err(Fallback::Wire);
    }
    Ok((tag, wire_type))
}

/// A length-delimited payload.
#[inline]
pub(crate) fn delimited<'a>(buf: &mut &'a [u8]) -> R<&'a [u8]> {
    let len = varint(buf)?;
    let b = *buf;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= b.len())
        .ok_or(Fallback::Wire)?;
    let (head, rest) = b.split_at(len);
    *buf = rest;
    Ok(head)
}

fn advance(buf: &mut &[u8], n: usize) -> R<()> {
    let b = *buf;
    *buf = b.get(n..).ok_or(Fallback::Wire)?;
    Ok(())
}

/// Skips an unknown field.
pub(crate) fn skip(wire_type: u8, buf: &mut &[u8]) -> R<()> {
    match wire_type {
        VARINT => varint(buf).map(drop),
        FIXED64 => advance(buf, 8),
        LEN => delimited(buf).map(drop),
        FIXED32 => advance(buf, 4),
        START_GROUP => Err(Fallback::Unsupported),
        // An end-group key without its start: prost refuses it.
        END_GROUP => Err(Fallback::Wire),
        _ => Err(Fallback::Wire),
    }
}

/// A singular varint field (integers, bools).
#[inline]
fn scalar(wire_type: u8, buf: &mut &[u8]) -> R<u64> {
    if wire_type != VARINT {
        return Err(Fallback::Wire);
    }
    varint(buf)
}

/// A message or string field.
#[inline]
fn message<'a>(wire_type: u8, buf: &mut &'a [u8]) -> R<&'a [u8]> {
    if wire_type != LEN {
        return Err(Fallback::Wire);
    }
    delimited(buf)
}

/// A repeated varint field, packed or not (prost accepts both, in any mix).
#[inline]
fn repeated(wire_type: u8, buf: &mut &[u8], mut each: impl FnMut(u64) -> R<()>) -> R<()> {
    match wire_type {
        VARINT => each(varint(buf)?),
        LEN => {
            let mut packed = delimited(buf)?;
            while !packed.is_empty() {
                each(varint(&mut packed)?)?;
            }
            Ok(())
        }
        _ => Err(Fallback::Wire),
    }
}

/// `ValueType`: (type, unit).
fn value_type(mut m: &[u8]) -> R<(i64, i64)> {
    let (mut ty, mut unit) = (0, 0);
    while !m.is_empty() {
        let (tag, wt) = key(&mut m)?;
        match tag {
            1 => ty = scalar(wt, &mut m)? as i64,
            2 => unit = scalar(wt, &mut m)? as i64,
            _ => skip(wt, &mut m)?,
        }
    }
    Ok((ty, unit))
}

/// `period_type`, a singular message: prost merges repeated occurrences field by field.
fn value_type_merge(mut m: &[u8], into: &mut (i64, i64)) -> R<()> {
    while !m.is_empty() {
        let (tag, wt) = key(&mut m)?;
        match tag {
            1 => into.0 = scalar(wt, &mut m)? as i64,
            2 => into.1 = scalar(wt, &mut m)? as i64,
            _ => skip(wt, &mut m)?,
        }
    }
    Ok(())
}

/// `Mapping`: (id, filename, build_id).
fn mapping(mut m: &[u8]) -> R<(u64, i64, i64)> {
    let (mut id, mut filename, mut build_id) = (0, 0, 0);
    while !m.is_empty() {
        let (tag, wt) = key(&mut m)?;
        match tag {
            1 => id = scalar(wt, &mut m)?,
            5 => filename = scalar(wt, &mut m)? as i64,
            6 => build_id = scalar(wt, &mut m)? as i64,
            2..=4 | 7..=10 => {
                scalar(wt, &mut m)?;
            }
            _ => skip(wt, &mut m)?,
        }
    }
    Ok((id, filename, build_id))
}

/// `Function`: (id, [name, system_name, filename]).
fn function(mut m: &[u8]) -> R<(u64, [i64; 3])> {
    let mut id = 0;
    let mut strings = [0i64; 3];
    while !m.is_empty() {
        let (tag, wt) = key(&mut m)?;
        match tag {
            1 => id = scalar(wt, &mut m)?,
            2..=4 => strings[tag as usize - 2] = scalar(wt, &mut m)? as i64,
            5 => {
                scalar(wt, &mut m)?;
            }
            _ => skip(wt, &mut m)?,
        }
    }
    Ok((id, strings))
}

/// `Location`: (id, mapping_id); `function_id` is called with each line's function id.
fn location(mut m: &[u8], mut function_id: impl FnMut(u64) -> R<()>) -> R<(u64, u64)> {
    let (mut id, mut mapping_id) = (0, 0);
    while !m.is_empty() {
        let (tag, wt) = key(&mut m)?;
        match tag {
            1 => id = scalar(wt, &mut m)?,
            2 => mapping_id = scalar(wt, &mut m)?,
            3 | 5 => {
                scalar(wt, &mut m)?;
            }
            4 => {
                let mut line = message(wt, &mut m)?;
                let mut function = 0;
                while !line.is_empty() {
                    let (tag, wt) = key(&mut line)?;
                    match tag {
                        1 => function = scalar(wt, &mut line)?,
                        2 => {
                            scalar(wt, &mut line)?;
                        }
                        _ => skip(wt, &mut line)?,
                    }
                }
                function_id(function)?;
            }
            _ => skip(wt, &mut m)?,
        }
    }
    Ok((id, mapping_id))
}

/// The tables a sample is checked against.
struct Tables<'a> {
    strings: Vec<&'a str>,
    locations: IdSet,
    sample_types: usize,
    max_depth: usize,
}

impl Tables<'_> {
    fn string(&self, index: i64) -> Option<&str> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.strings.get(i))
            .copied()
    }

    /// One `Sample`: value count, signs and totals, depth, location ids, label string indices; a
    /// liftable label means a split.
    fn sample(&self, mut m: &[u8], totals: &mut [i64]) -> R<()> {
        let (mut values, mut depth) = (0usize, 0usize);
        while !m.is_empty() {
            let (tag, wt) = key(&mut m)?;
            match tag {
                1 => repeated(wt, &mut m, |id| {
                    depth += 1;
                    if self.locations.contains(id) {
                        Ok(())
                    } else {
                        Err(Fallback::Invalid)
                    }
                })?,
                2 => repeated(wt, &mut m, |v| {
                    let v = v as i64;
                    if v < 0 {
                        return Err(Fallback::Invalid);
                    }
                    // More values than types fail the count check below.
                    if let Some(total) = totals.get_mut(values) {
                        *total = total
                            .checked_add(v)
                            .filter(|&t| t <= MAX_TOTAL)
                            .ok_or(Fallback::Invalid)?;
                    }
                    values += 1;
                    Ok(())
                })?,
                3 => {
                    let mut label = message(wt, &mut m)?;
                    let (mut k, mut s, mut num_unit) = (0i64, 0i64, 0i64);
                    while !label.is_empty() {
                        let (tag, wt) = key(&mut label)?;
                        match tag {
                            1 => k = scalar(wt, &mut label)? as i64,
                            2 => s = scalar(wt, &mut label)? as i64,
                            3 => {
                                scalar(wt, &mut label)?;
                            }
                            4 => num_unit = scalar(wt, &mut label)? as i64,
                            _ => skip(wt, &mut label)?,
                        }
                    }
                    if [k, s, num_unit].iter().any(|&i| self.string(i).is_none()) {
                        return Err(Fallback::Invalid);
                    }
                    // As `series::split` decides: numeric labels (str 0) stay on the sample.
                    if s != 0
                        && let (Some(k), Some(v)) = (self.string(k), self.string(s))
                        && series::lifts(k, v)
                    {
                        return Err(Fallback::Split);
                    }
                }
                _ => skip(wt, &mut m)?,
            }
        }
        if values != self.sample_types || depth > self.max_depth {
            return Err(Fallback::Invalid);
        }
        Ok(())
    }
}

/// Scans the decompressed pprof `raw`: `Ok` when it is valid and stays whole (stored as sent),
/// else why the full decode is needed.
pub fn scan_profile(raw: &[u8], limits: &Limits) -> Result<Scanned, Fallback> {
    // Pass 1: the wire structure of everything but samples' insides, the tables' ids, the strings.
    let mut sample_types: Vec<(i64, i64)> = Vec::new();
    let mut samples = 0usize;
    let mut mapping_ids = Vec::new();
    let mut function_ids = Vec::new();
    let mut location_ids = Vec::new();
    let mut strings: Vec<&str> = Vec::new();
    // The smallest and largest string index referenced by functions and mappings.
    let (mut str_min, mut str_max) = (0i64, -1i64);
    let mut time_nanos = 0i64;
    // Singular string references (last one wins, as in prost) and the comments.
    let (mut drop_frames, mut keep_frames, mut default_sample_type) = (0i64, 0i64, 0i64);
    let mut period_type = (0i64, 0i64);
    let mut buf = raw;
    while !buf.is_empty() {
        let (tag, wt) = key(&mut buf)?;
        match tag {
            1 => sample_types.push(value_type(message(wt, &mut buf)?)?),
            2 => {
                message(wt, &mut buf)?;
                samples += 1;
            }
            3 => {
                let (id, filename, build_id) = mapping(message(wt, &mut buf)?)?;
                mapping_ids.push(id);
                str_min = str_min.min(filename).min(build_id);
                str_max = str_max.max(filename).max(build_id);
            }
            4 => {
                let (id, _) = location(message(wt, &mut buf)?, |_| Ok(()))?;
                location_ids.push(id);
            }
            5 => {
                let (id, refs) = function(message(wt, &mut buf)?)?;
                function_ids.push(id);
                for r in refs {
                    str_min = str_min.min(r);
                    str_max = str_max.max(r);
                }
            }
            6 => {
                let s = message(wt, &mut buf)?;
                strings.push(std::str::from_utf8(s).map_err(|_| Fallback::Wire)?);
            }
            9 => time_nanos = scalar(wt, &mut buf)? as i64,
            7 => drop_frames = scalar(wt, &mut buf)? as i64,
            8 => keep_frames = scalar(wt, &mut buf)? as i64,
            14 => default_sample_type = scalar(wt, &mut buf)? as i64,
            10 | 12 => {
                scalar(wt, &mut buf)?;
            }
            11 => value_type_merge(message(wt, &mut buf)?, &mut period_type)?,
            13 => repeated(wt, &mut buf, |c| {
                let c = c as i64;
                str_min = str_min.min(c);
                str_max = str_max.max(c);
                Ok(())
            })?,
            _ => skip(wt, &mut buf)?,
        }
    }

    for i in [
        drop_frames,
        keep_frames,
        default_sample_type,
        period_type.0,
        period_type.1,
    ] {
        str_min = str_min.min(i);
        str_max = str_max.max(i);
    }
    // The checks of `validate_profile` that need only the tables.
    if sample_types.is_empty()
        || samples > limits.max_samples_per_profile
        || str_min < 0
        || str_max >= strings.len() as i64
    {
        return Err(Fallback::Invalid);
    }
    let string = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i))
            .copied()
            .ok_or(Fallback::Invalid)
    };
    let mut profile_types = Vec::with_capacity(sample_types.len());
    let mut type_names = Vec::with_capacity(sample_types.len());
    for &(ty, unit) in &sample_types {
        let (ty, unit) = (string(ty)?, string(unit)?);
        if ty.is_empty() {
            return Err(Fallback::Invalid);
        }
        profile_types.push(format!("{ty}:{unit}"));
        type_names.push(ty.to_owned());
    }
    let mappings = IdSet::new(mapping_ids.iter().copied(), mapping_ids.len());
    let functions = IdSet::new(function_ids.iter().copied(), function_ids.len());
    let tables = Tables {
        locations: IdSet::new(location_ids.iter().copied(), location_ids.len()),
        strings,
        sample_types: sample_types.len(),
        max_depth: limits.max_stack_depth,
    };

    // Pass 2: locations' references and every sample (pass 1 checked the framing of all fields).
    let mut totals = vec![0i64; tables.sample_types];
    let mut buf = raw;
    while !buf.is_empty() {
        let (tag, wt) = key(&mut buf)?;
        match tag {
            2 => tables.sample(message(wt, &mut buf)?, &mut totals)?,
            4 => {
                let (_, mapping_id) = location(message(wt, &mut buf)?, |f| {
                    if functions.contains(f) {
                        Ok(())
                    } else {
                        Err(Fallback::Invalid)
                    }
                })?;
                if mapping_id != 0 && !mappings.contains(mapping_id) {
                    return Err(Fallback::Invalid);
                }
            }
            _ => skip(wt, &mut buf)?,
        }
    }
    Ok(Scanned {
        profile_types,
        type_names,
        time_nanos,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::validate_profile;
    use kiln_proto::ProfileBuilder;
    use kiln_proto::pprof::Profile;
    use kiln_proto::push::PushRequest;
    use prost::Message;

    /// What the full path makes of `raw`, in the scanner's terms.
    fn reference(raw: &[u8], limits: &Limits) -> Result<Scanned, Fallback> {
        let p = Profile::decode(raw).map_err(|_| Fallback::Wire)?;
        let profile_types = validate_profile(&p, limits).map_err(|_| Fallback::Invalid)?;
        let (time_nanos, samples) = (p.time_nanos, p.sample.len());
        let type_names = p
            .sample_type
            .iter()
            .map(|st| p.string_table[st.r#type as usize].clone())
            .collect();
        match series::split(p, usize::MAX, usize::MAX) {
            Ok(series::Split::Whole(_)) => Ok(Scanned {
                profile_types,
                type_names,
                time_nanos,
                samples,
            }),
            _ => Err(Fallback::Split),
        }
    }

    /// Scans `raw` and checks the answer against the full path: the scanner accepts exactly what
    /// it accepts, with the same extraction, and finds no wire error where prost finds none.
    fn check(raw: &[u8], limits: &Limits) -> Result<Scanned, Fallback> {
        let got = scan_profile(raw, limits);
        let want = reference(raw, limits);
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{raw:02x?}"),
            (Err(Fallback::Unsupported), _) => {}
            // The scanner stops at the first reason; prost may find a wire error further on.
            (Err(Fallback::Wire), Err(Fallback::Wire))
            | (Err(Fallback::Invalid | Fallback::Split), Err(_)) => {}
            _ => panic!("scanner {got:?}, full decode {want:?} on {raw:02x?}"),
        }
        got
    }

    fn sample_profile() -> Profile {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
        b.period("cpu", "nanoseconds", 10_000_000);
        b.time(1_700_000_000_000_000_000, 10_000_000_000);
        let m = b.mapping(0x1000, 0x9000, 0, "/bin/app", "abcd");
        let f = b.function("main", "main.c");
        let g = b.function("work", "work.c");
        let l1 = b.symbolized_location(m, 0x1010, &[(g, 7), (f, 3)]);
        let l2 = b.raw_location(m, 0x2020);
        b.add_sample(&[l2, l1], &[1, 10], &[]);
        b.add_sample(&[l1], &[2, 20], &[("span_id", "42")]);
        b.finish()
    }

    // Hand-made protobuf for encodings the builder never makes.
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: u8) {
        put_varint(out, u64::from(tag) << 3 | u64::from(wire_type));
    }
    fn put_bytes(out: &mut Vec<u8>, tag: u32, data: &[u8]) {
        put_key(out, tag, LEN);
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
    fn put_int(out: &mut Vec<u8>, tag: u32, v: u64) {
        put_key(out, tag, VARINT);
        put_varint(out, v);
    }

    /// `raw` without its sample labels (as re-encoded by prost) scans as valid.
    fn unlabelled_agrees(raw: &[u8], lim: &Limits) {
        let mut p = Profile::decode(raw).unwrap();
        for s in &mut p.sample {
            s.label.clear();
        }
        let scanned = check(&p.encode_to_vec(), lim).unwrap();
        assert_eq!(scanned.samples, p.sample.len());
    }

    #[test]
    fn fixtures_agree_with_prost() {
        let lim = Limits::default();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pprof");
        // Go's runtime/pprof: stored as sent; Node's wall profile carries sample labels: split.
        for (name, want) in [
            ("go-runtime-pprof-cpu.pb.gz", None),
            (
                "pyroscope-nodejs-0.6.4-wall.pprof.gz",
                Some(Fallback::Split),
            ),
        ] {
            let gz = std::fs::read(dir.join(name)).unwrap();
            let raw = kiln_proto::maybe_gunzip(&gz, 1 << 30).unwrap();
            let scanned = check(&raw, &lim);
            assert_eq!(scanned.as_ref().err(), want.as_ref(), "{name}: {scanned:?}");
            unlabelled_agrees(&raw, &lim);
        }
        let body = std::fs::read(dir.join("pyroscope-io-1.4.0-push-request.bin.gz")).unwrap();
        let body = kiln_proto::maybe_gunzip(&body, 1 << 30).unwrap();
        let req = PushRequest::decode(body.as_ref()).unwrap();
        let mut profiles = 0;
        for s in &req.series {
            for x in &s.samples {
                let raw = kiln_proto::maybe_gunzip(&x.raw_profile, 1 << 30).unwrap();
                // The SDK sends its tags as sample labels: split.
                assert_eq!(check(&raw, &lim), Err(Fallback::Split));
                unlabelled_agrees(&raw, &lim);
                profiles += 1;
            }
        }
        assert!(profiles > 0);
    }

    #[test]
    fn builder_profiles_agree() {
        let lim = Limits::default();
        let p = sample_profile();
        let s = check(&p.encode_to_vec(), &lim).unwrap();
        assert_eq!(s.profile_types, vec!["samples:count", "cpu:nanoseconds"]);
        assert_eq!(s.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(s.samples, 2);

        // A liftable sample label means a split; numeric and kept labels do not.
        let mut labelled = p.clone();
        labelled.string_table.push("env".into());
        labelled.string_table.push("prod".into());
        let n = labelled.string_table.len() as i64;
        labelled.sample[0].label.push(kiln_proto::pprof::Label {
            key: n - 2,
            num: 5,
            ..Default::default()
        });
        assert!(check(&labelled.encode_to_vec(), &lim).is_ok());
        labelled.sample[0].label[0].str = n - 1;
        assert_eq!(check(&labelled.encode_to_vec(), &lim), Err(Fallback::Split));

        // Empty profile (no sample types) and an empty buffer are invalid, as validate says.
        assert_eq!(check(&[], &lim), Err(Fallback::Invalid));
        assert_eq!(
            check(&Profile::default().encode_to_vec(), &lim),
            Err(Fallback::Invalid)
        );
    }

    #[test]
    fn out_of_range_references_are_invalid() {
        let lim = Limits::default();
        let p = sample_profile();
        type Mutation = Box<dyn Fn(&mut Profile)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("location id", Box::new(|p| p.sample[0].location_id[0] = 99)),
            ("value count", Box::new(|p| p.sample[1].value.push(3))),
            (
                "function id",
                Box::new(|p| p.location[0].line[1].function_id = 9),
            ),
            (
                "function id 0",
                Box::new(|p| p.location[0].line[0].function_id = 0),
            ),
            ("mapping id", Box::new(|p| p.location[1].mapping_id = 5)),
            ("string index", Box::new(|p| p.function[0].name = 1000)),
            ("negative string", Box::new(|p| p.mapping[0].build_id = -1)),
            (
                "sample type unit",
                Box::new(|p| p.sample_type[1].unit = 1000),
            ),
            ("empty type", Box::new(|p| p.sample_type[0].r#type = 0)),
            ("no sample types", Box::new(|p| p.sample_type.clear())),
            (
                "sparse id missing",
                Box::new(|p| p.location[0].id = 1 << 40),
            ),
            (
                "label key",
                Box::new(|p| {
                    p.sample[1].label[0].key = 1000;
                }),
            ),
            (
                "label num_unit",
                Box::new(|p| p.sample[1].label[0].num_unit = 1000),
            ),
            (
                "period_type unit",
                Box::new(|p| p.period_type.as_mut().unwrap().unit = 1000),
            ),
            ("comment", Box::new(|p| p.comment = vec![1, 1000])),
            (
                "default_sample_type",
                Box::new(|p| p.default_sample_type = -1),
            ),
            ("drop_frames", Box::new(|p| p.drop_frames = 1000)),
            ("keep_frames", Box::new(|p| p.keep_frames = 1000)),
            ("negative value", Box::new(|p| p.sample[0].value[1] = -1)),
            ("i64::MIN", Box::new(|p| p.sample[0].value[0] = i64::MIN)),
            (
                "one huge value",
                Box::new(|p| p.sample[0].value[0] = i64::MAX),
            ),
            (
                "total over 2^53",
                Box::new(|p| {
                    p.sample[0].value[1] = MAX_TOTAL;
                    p.sample[1].value[1] = 1;
                }),
            ),
        ];
        for (what, mutate) in cases {
            let mut bad = p.clone();
            mutate(&mut bad);
            assert_eq!(
                check(&bad.encode_to_vec(), &lim),
                Err(Fallback::Invalid),
                "{what}"
            );
        }
        // A total of exactly 2^53 is fine.
        let mut edge = p.clone();
        edge.sample[0].value[1] = MAX_TOTAL - edge.sample[1].value[1];
        assert!(check(&edge.encode_to_vec(), &lim).is_ok());
        // Sparse ids that do resolve are fine.
        let mut sparse = p.clone();
        let id = sparse.location[0].id;
        sparse.location[0].id = 1 << 40;
        for s in &mut sparse.sample {
            for l in &mut s.location_id {
                if *l == id {
                    *l = 1 << 40;
                }
            }
        }
        assert!(check(&sparse.encode_to_vec(), &lim).is_ok());

        // Limits.
        let tight = Limits {
            max_samples_per_profile: 1,
            ..Limits::default()
        };
        assert_eq!(check(&p.encode_to_vec(), &tight), Err(Fallback::Invalid));
        let shallow = Limits {
            max_stack_depth: 1,
            ..Limits::default()
        };
        assert_eq!(check(&p.encode_to_vec(), &shallow), Err(Fallback::Invalid));
    }

    #[test]
    fn unusual_encodings() {
        let lim = Limits::default();
        // Tables: string table, one sample type, one location without mapping or lines.
        let mut tables = Vec::new();
        for s in ["", "cpu", "nanoseconds"] {
            put_bytes(&mut tables, 6, s.as_bytes());
        }
        let mut st = Vec::new();
        put_int(&mut st, 1, 1);
        put_int(&mut st, 2, 2);
        put_bytes(&mut tables, 1, &st);
        let mut loc = Vec::new();
        put_int(&mut loc, 1, 1);
        put_bytes(&mut tables, 4, &loc);

        // Unpacked repeated fields, mixed with packed ones.
        let mut sample = Vec::new();
        put_int(&mut sample, 1, 1);
        put_bytes(&mut sample, 1, &[1, 1]);
        put_int(&mut sample, 2, 5);
        let mut p = tables.clone();
        put_bytes(&mut p, 2, &sample);
        let s = check(&p, &lim).unwrap();
        assert_eq!(s.samples, 1);

        // Unknown fields of every wire type are skipped; singular fields: the last one wins.
        let mut q = p.clone();
        put_int(&mut q, 99, 7);
        put_key(&mut q, 98, FIXED32);
        q.extend_from_slice(&[1, 2, 3, 4]);
        put_key(&mut q, 97, FIXED64);
        q.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        put_bytes(&mut q, 96, b"junk");
        put_int(&mut q, 9, 5);
        put_int(&mut q, 9, 6);
        put_bytes(&mut q, 11, &st);
        put_bytes(&mut q, 11, &st);
        put_int(&mut q, 13, 1);
        put_bytes(&mut q, 13, &[1, 2]);
        assert_eq!(check(&q, &lim).unwrap().time_nanos, 6);

        // Groups: prost skips them; the scanner leaves them to prost.
        let mut g = p.clone();
        put_key(&mut g, 50, START_GROUP);
        put_int(&mut g, 1, 1);
        put_key(&mut g, 50, END_GROUP);
        assert_eq!(check(&g, &lim), Err(Fallback::Unsupported));
        let mut g = p.clone();
        put_key(&mut g, 50, END_GROUP);
        assert_eq!(check(&g, &lim), Err(Fallback::Wire));

        // Wrong wire types on known fields.
        for (tag, wt) in [
            (9, LEN),
            (1, VARINT),
            (2, VARINT),
            (6, FIXED32),
            (13, FIXED64),
        ] {
            let mut w = p.clone();
            put_key(&mut w, tag, wt);
            w.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 1, 1]);
            assert_eq!(check(&w, &lim), Err(Fallback::Wire), "tag {tag} wt {wt}");
        }
        // Field number 0, wire types 6 and 7, a key above u32.
        for key in [0u64, 6, 7 | 8, 1 << 35] {
            let mut w = p.clone();
            put_varint(&mut w, key);
            put_varint(&mut w, 0);
            assert_eq!(check(&w, &lim), Err(Fallback::Wire), "key {key}");
        }
        // Varints: 10 bytes ending in 1 is the largest; ending in 2, or 11 bytes, is refused.
        let mut ok = p.clone();
        put_key(&mut ok, 9, VARINT);
        ok.extend_from_slice(&[0xff; 9]);
        ok.push(1);
        assert_eq!(check(&ok, &lim).unwrap().time_nanos, -1);
        let mut over = p.clone();
        put_key(&mut over, 9, VARINT);
        over.extend_from_slice(&[0xff; 9]);
        over.push(2);
        assert_eq!(check(&over, &lim), Err(Fallback::Wire));
        let mut long = p.clone();
        put_key(&mut long, 9, VARINT);
        long.extend_from_slice(&[0x80; 10]);
        long.push(0);
        assert_eq!(check(&long, &lim), Err(Fallback::Wire));
        // Overlong but in-range encodings are accepted, as by prost.
        let mut pad = p.clone();
        put_key(&mut pad, 9, VARINT);
        pad.extend_from_slice(&[0x85, 0x80, 0x00]);
        assert_eq!(check(&pad, &lim).unwrap().time_nanos, 5);
        // A packed run whose last varint is cut by the packed length.
        let mut cut = tables.clone();
        let mut sample = Vec::new();
        put_bytes(&mut sample, 1, &[1, 0x81]);
        put_int(&mut sample, 2, 5);
        put_bytes(&mut cut, 2, &sample);
        assert_eq!(check(&cut, &lim), Err(Fallback::Wire));
        // A string that is not UTF-8.
        let mut utf = p.clone();
        put_bytes(&mut utf, 6, &[0xff, 0xfe]);
        assert_eq!(check(&utf, &lim), Err(Fallback::Wire));
        // A length past the end.
        let mut past = p.clone();
        put_key(&mut past, 2, LEN);
        put_varint(&mut past, 1000);
        assert_eq!(check(&past, &lim), Err(Fallback::Wire));
    }

    /// Every truncation and many single-byte corruptions of a real profile: whatever the scanner
    /// accepts, prost and validate accept with the same result, and the other way round.
    #[test]
    fn truncations_and_corruptions_agree() {
        let lim = Limits::default();
        let raw = sample_profile().encode_to_vec();
        for len in 0..raw.len() {
            check(&raw[..len], &lim).ok();
        }
        for i in 0..raw.len() {
            for mask in [0x01u8, 0x02, 0x04, 0x07, 0x08, 0x40, 0x80, 0xff] {
                let mut m = raw.clone();
                m[i] ^= mask;
                check(&m, &lim).ok();
            }
            let mut m = raw.clone();
            m.remove(i);
            check(&m, &lim).ok();
            let mut m = raw.clone();
            m.insert(i, 0x80);
            check(&m, &lim).ok();
        }
    }
}
