//! Pyroscope's profile types as Kiln answers them: the ID `name:sample_type:sample_unit:
//! period_type:period_unit`, and the labels Pyroscope derives from it (`__profile_type__`,
//! `__type__`, `__unit__`, `__period_type__`, `__period_unit__`).
//!
//! Pyroscope stores one series per profile type, so those labels are series labels there. A Kiln
//! series holds profiles with several sample types (a pprof carries all of them), so these labels
//! exist only for a (series, sample type) pair: [`TypeLabels`] computes them from the series'
//! `__name__` and the `type:unit`, and the selector evaluates matchers on them against that pair
//! (see [`super::selector::Selector::matches_type`]). Kiln does not index periods; the period is
//! the one Pyroscope pairs with the sample type ([`period_for`]), on every surface alike.

/// The labels that belong to a profile type, not to a series.
pub const TYPE_LABELS: [&str; 5] = [
    "__profile_type__",
    "__type__",
    "__unit__",
    "__period_type__",
    "__period_unit__",
];

/// True for a label of [`TYPE_LABELS`].
pub fn is_type_label(name: &str) -> bool {
    TYPE_LABELS.contains(&name)
}

/// The period Pyroscope reports with a sample type of profile `name` (Kiln stores periods but
/// does not index them).
pub fn period_for(name: &str, sample_type: &str, unit: &str) -> (String, String) {
    let (t, u) = match (sample_type, unit) {
        // Wall-clock profiles (Node.js) count samples per wall-time period.
        ("samples", "count") if name == "wall" => ("wall", "nanoseconds"),
        ("cpu", "nanoseconds") | ("samples", "count") => ("cpu", "nanoseconds"),
        ("wall", _) => ("wall", "nanoseconds"),
        ("alloc_objects" | "alloc_space" | "inuse_objects" | "inuse_space", _) => {
            ("space", "bytes")
        }
        ("contentions" | "delay", _) => ("contentions", "count"),
        ("goroutine" | "goroutines", _) => ("goroutine", "count"),
        (t, u) => (t, u),
    };
    (t.to_owned(), u.to_owned())
}

/// The type labels of one (series `__name__`, `type:unit`) pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TypeLabels {
    pub name: String,
    pub sample_type: String,
    pub sample_unit: String,
    pub period_type: String,
    pub period_unit: String,
}

impl TypeLabels {
    /// `name` is the series' `__name__` (may be empty), `type_unit` a stored `type:unit`.
    pub fn new(name: &str, type_unit: &str) -> TypeLabels {
        let (ty, unit) = type_unit.split_once(':').unwrap_or((type_unit, ""));
        let (period_type, period_unit) = period_for(name, ty, unit);
        TypeLabels {
            name: name.to_owned(),
            sample_type: ty.to_owned(),
            sample_unit: unit.to_owned(),
            period_type,
            period_unit,
        }
    }

    /// `name:sample_type:sample_unit:period_type:period_unit`.
    pub fn id(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.name, self.sample_type, self.sample_unit, self.period_type, self.period_unit
        )
    }

    /// The value of type label `label` (one of [`TYPE_LABELS`]); `None` for any other name.
    pub fn get(&self, label: &str) -> Option<String> {
        Some(match label {
            "__profile_type__" => self.id(),
            "__type__" => self.sample_type.clone(),
            "__unit__" => self.sample_unit.clone(),
            "__period_type__" => self.period_type.clone(),
            "__period_unit__" => self.period_unit.clone(),
            _ => return None,
        })
    }

    /// All type labels, in [`TYPE_LABELS`] order.
    pub fn pairs(&self) -> [(&'static str, String); 5] {
        TYPE_LABELS.map(|l| (l, self.get(l).unwrap_or_default()))
    }
}

/// A parsed profile type ID: the `__name__` it selects and the `type:unit` sample type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileTypeId {
    pub name: String,
    pub type_unit: String,
}

/// `name:sample_type:sample_unit:period_type:period_unit` → (`name`, `sample_type:sample_unit`).
/// The period is accepted and not checked: Kiln does not index it.
pub fn parse_id(id: &str) -> Result<ProfileTypeId, String> {
    let parts: Vec<&str> = id.split(':').collect();
    match parts.as_slice() {
        [name, ty, unit, _period_type, _period_unit] if !ty.is_empty() && !unit.is_empty() => {
            Ok(ProfileTypeId {
                name: (*name).to_owned(),
                type_unit: format!("{ty}:{unit}"),
            })
        }
        _ => Err(format!(
            "profile type ID {id:?} must be name:sample_type:sample_unit:period_type:period_unit, \
             e.g. process_cpu:cpu:nanoseconds:cpu:nanoseconds"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_type_labels() {
        let id = parse_id("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
        assert_eq!(
            (id.name.as_str(), id.type_unit.as_str()),
            ("process_cpu", "cpu:nanoseconds")
        );
        assert!(parse_id("cpu:nanoseconds").is_err());
        assert!(parse_id("a::b:c:d").is_err());
        let t = TypeLabels::new("memory", "inuse_space:bytes");
        assert_eq!(t.id(), "memory:inuse_space:bytes:space:bytes");
        assert_eq!(t.get("__type__").as_deref(), Some("inuse_space"));
        assert_eq!(t.get("__unit__").as_deref(), Some("bytes"));
        assert_eq!(t.get("service_name"), None);
        assert_eq!(
            TypeLabels::new("wall", "samples:count").id(),
            "wall:samples:count:wall:nanoseconds"
        );
        assert_eq!(
            TypeLabels::new("process_cpu", "samples:count").id(),
            "process_cpu:samples:count:cpu:nanoseconds"
        );
        assert_eq!(
            period_for("x", "odd", "units"),
            ("odd".into(), "units".into())
        );
    }
}
