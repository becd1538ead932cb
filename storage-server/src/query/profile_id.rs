//! Profile IDs: how an exemplar names one stored profile and how a query selects it again
//! (Pyroscope's `profile_id` on exemplars and `profile_id_selector` on `SelectMergeStacktraces`
//! and `SelectMergeProfile`: `profilecli query exemplars` then `query profile --profile-id`).
//!
//! Kiln does not keep the ID an SDK sends with a profile (the push API's `RawSample.ID`); a stored
//! profile is known by its series and its time instead. Its ID is derived from those two: a UUID
//! (RFC 9562 version 8, the custom layout) of a 128-bit hash of the series labels and the time in
//! nanoseconds. The hash is XXH3-128, a published algorithm with fixed output, so the same
//! profile gets the same ID from every Kiln build and version (an ID pasted into a ticket keeps
//! working after an upgrade); two profiles share one only if they share series and nanosecond —
//! then both are selected.

use std::collections::HashSet;

use kiln_proto::pprof::Profile;

use super::admission::QueryCtx;
use super::merge::Tree;
use super::pprof::PprofMerger;
use super::{Selection, read_each};
use crate::AppState;
use crate::error::ApiError;
use crate::store::Labels;

/// Most IDs one `profile_id_selector` may hold.
pub const MAX_IDS: usize = 10_000;

/// The ID of the profile of series `labels` stored at `time_nanos`, e.g.
/// `5f0c2c1e-93b1-8c4e-a7d2-0e4b9f6a1c3d`.
pub fn profile_id(labels: &Labels, time_nanos: i64) -> String {
    // Field by field, with separators no label contains.
    let mut bytes = Vec::with_capacity(64);
    for (k, v) in labels.iter() {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0xff);
    }
    bytes.extend_from_slice(&time_nanos.to_le_bytes());
    let mut x = twox_hash::XxHash3_128::oneshot(&bytes);
    // Version 8 in bits 76..80, variant 0b10 in bits 62..64.
    x = (x & !(0xf << 76)) | (0x8 << 76);
    x = (x & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A request's `profile_id_selector`: the profiles to read.
#[derive(Clone, Debug)]
pub struct ProfileIds(HashSet<String>);

impl ProfileIds {
    /// `None` when `ids` is empty (no selection); an error past [`MAX_IDS`].
    pub fn parse(ids: &[String]) -> Result<Option<ProfileIds>, String> {
        if ids.len() > MAX_IDS {
            return Err(format!(
                "profile_id_selector holds {} IDs, at most {MAX_IDS} are allowed",
                ids.len()
            ));
        }
        Ok((!ids.is_empty())
            .then(|| ProfileIds(ids.iter().map(|s| s.trim().to_ascii_lowercase()).collect())))
    }

    pub fn contains(&self, labels: &Labels, time_nanos: i64) -> bool {
        self.0.contains(&profile_id(labels, time_nanos))
    }
}

/// Merges the selected profiles named in `ids` into a tree (blocking: run it through
/// [`super::admission`]). The selection's other profiles are read and passed over.
pub fn build_tree(
    state: &AppState,
    sel: &Selection,
    ids: &ProfileIds,
    ctx: &QueryCtx,
) -> Result<Tree, ApiError> {
    let mut tree = Tree::new();
    read_each(state, sel, ctx, &mut |stored, resolver| {
        if ids.contains(&stored.labels, stored.time_nanos) {
            tree.merge_profile(&stored.profile, &sel.profile_type, resolver);
        }
    })?;
    Ok(tree)
}

/// Like [`build_tree`], into one symbolized pprof of the selection's sample type.
pub fn merged_pprof(
    state: &AppState,
    sel: &Selection,
    ids: &ProfileIds,
    ctx: &QueryCtx,
) -> Result<Profile, ApiError> {
    let mut merger = PprofMerger::new(std::slice::from_ref(&sel.profile_type));
    read_each(state, sel, ctx, &mut |stored, resolver| {
        if ids.contains(&stored.labels, stored.time_nanos) {
            merger.add(&stored.profile, stored.time_nanos, resolver);
        }
    })?;
    Ok(merger.finish(Some(&sel.profile_type)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_of_series_and_time() {
        let l = Labels::new(vec![("service_name".into(), "api".into())]);
        let id = profile_id(&l, 1_000);
        assert_eq!(id.len(), 36);
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('8'), "version 8: {id}");
        assert!("89ab".contains(&groups[3][..1]), "variant: {id}");
        assert_eq!(profile_id(&l, 1_000), id);
        assert_ne!(profile_id(&l, 1_001), id);
        let other = Labels::new(vec![("service_name".into(), "apj".into())]);
        assert_ne!(profile_id(&other, 1_000), id);

        let ids = ProfileIds::parse(&[id.to_uppercase()]).unwrap().unwrap();
        assert!(ids.contains(&l, 1_000));
        assert!(!ids.contains(&l, 2_000));
        assert!(ProfileIds::parse(&[]).unwrap().is_none());
        assert!(ProfileIds::parse(&vec![String::new(); MAX_IDS + 1]).is_err());
    }

    #[test]
    fn ids_do_not_change_between_builds() {
        // Pinned: an exemplar link or a `--profile-id` saved yesterday must select the same
        // profile after an upgrade. Changing the derivation breaks them: do not.
        let l = Labels::new(vec![("service_name".into(), "api".into())]);
        assert_eq!(
            profile_id(&l, 1_000),
            "d6ef48e3-d99a-80a5-ba43-5e5fffa10998"
        );
    }
}
