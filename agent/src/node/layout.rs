//! V8's object layout for one `node` binary, from the postmortem debug constants (`v8dbg_*`) the
//! binary exports: the same data llnode and the OpenTelemetry eBPF profiler read. Every offset
//! and type tag the agent uses comes from the running binary, so no version table is kept here;
//! a binary that lacks one of them (a V8 that renamed a field, a stripped build) is refused with
//! the missing constant's name, never read with a guessed layout.

/// The constants the agent needs, by their symbol names (without `v8dbg_`).
const NEEDED: &[&str] = &[
    "TaggedSize",
    "HeapObjectTag",
    "HeapObjectTagMask",
    "SmiTagMask",
    "SmiShiftSize",
    "off_fp_context",
    "off_fp_function",
    "class_HeapObject__map__Map",
    "class_Map__instance_type__uint16_t",
    "class_JSFunction__shared__SharedFunctionInfo",
    "class_SharedFunctionInfo__name_or_scope_info__Object",
    "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
    "class_Script__name__Object",
    "class_String__length__int32_t",
    "class_SeqOneByteString__chars__char",
    "class_SeqTwoByteString__chars__char",
    "class_ConsString__first__String",
    "class_ConsString__second__String",
    "class_ThinString__actual__String",
    "type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE",
    "type_Script__SCRIPT_TYPE",
    "type_ScopeInfo__SCOPE_INFO_TYPE",
    "FirstNonstringType",
    "StringRepresentationMask",
    "StringEncodingMask",
    "SeqStringTag",
    "ConsStringTag",
    "ThinStringTag",
    "OneByteStringTag",
    "scopeinfo_idx_ncontextlocals",
    "scopeinfo_idx_first_vars",
];

/// Where ScopeInfo's indexed slots start: ScopeInfo is a plain HeapObject since V8 9 (slot 0 right
/// after the map), a FixedArray before (slot 0 after the map and the length). The binary says
/// which through `v8dbg_parent_ScopeInfo__<parent>`.
pub const SCOPE_INFO_PARENT_HEAP_OBJECT: &str = "parent_ScopeInfo__HeapObject";
pub const SCOPE_INFO_PARENT_FIXED_ARRAY: &str = "parent_ScopeInfo__FixedArray";

/// V8's layout, as the agent uses it (offsets in bytes from an object's untagged address, or
/// from a frame pointer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub heap_object_tag: u64,
    pub heap_object_tag_mask: u64,
    pub smi_tag_mask: u64,
    /// A Smi's value is the word shifted right by this (32 on x86-64 without pointer compression).
    pub smi_shift: u32,
    pub fp_context: i64,
    pub fp_function: i64,
    pub object_map: u64,
    pub map_instance_type: u64,
    pub function_shared: u64,
    pub shared_name_or_scope_info: u64,
    pub shared_script: u64,
    pub script_name: u64,
    pub string_length: u64,
    pub seq_one_byte_chars: u64,
    pub seq_two_byte_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub type_shared: u16,
    pub type_script: u16,
    pub type_scope_info: u16,
    pub first_nonstring_type: u16,
    pub string_representation_mask: u16,
    pub string_encoding_mask: u16,
    pub seq_string_tag: u16,
    pub cons_string_tag: u16,
    pub thin_string_tag: u16,
    pub one_byte_string_tag: u16,
    /// Byte offset of ScopeInfo's slot `i` is `scope_info_slots + 8 * i`.
    pub scope_info_slots: u64,
    pub scope_info_context_locals: u64,
    pub scope_info_first_vars: u64,
}

/// Why a binary's layout cannot be used (becomes `[node: …]`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no v8dbg_{0} symbol")]
    Missing(&'static str),
    #[error("pointer compression (tagged size {0}) unsupported")]
    PointerCompression(i64),
    #[error("v8dbg_{0} = {1} out of range")]
    OutOfRange(&'static str, i64),
}

impl Layout {
    /// The layout from the binary's constants: `get("TaggedSize")` is the value of
    /// `v8dbg_TaggedSize` (`None` when the binary has no such symbol).
    pub fn from_constants(get: impl Fn(&str) -> Option<i64>) -> Result<Layout, LayoutError> {
        let mut values = std::collections::HashMap::with_capacity(NEEDED.len());
        for &name in NEEDED {
            values.insert(name, get(name).ok_or(LayoutError::Missing(name))?);
        }
        let v = |n: &'static str| values.get(n).copied().unwrap_or_default();
        let tagged = v("TaggedSize");
        if tagged != 8 {
            return Err(LayoutError::PointerCompression(tagged));
        }
        let offset = |n: &'static str| -> Result<u64, LayoutError> {
            let x = v(n);
            (0..=4096)
                .contains(&x)
                .then_some(x as u64)
                .ok_or(LayoutError::OutOfRange(n, x))
        };
        let frame = |n: &'static str| -> Result<i64, LayoutError> {
            let x = v(n);
            (-256..=256)
                .contains(&x)
                .then_some(x)
                .ok_or(LayoutError::OutOfRange(n, x))
        };
        let tag = |n: &'static str| -> Result<u16, LayoutError> {
            u16::try_from(v(n)).map_err(|_| LayoutError::OutOfRange(n, v(n)))
        };
        let scope_info_slots = if get(SCOPE_INFO_PARENT_HEAP_OBJECT).is_some() {
            8
        } else if get(SCOPE_INFO_PARENT_FIXED_ARRAY).is_some() {
            16
        } else {
            return Err(LayoutError::Missing(SCOPE_INFO_PARENT_HEAP_OBJECT));
        };
        let smi_shift = v("SmiShiftSize") + 1;
        if !(1..64).contains(&smi_shift) {
            return Err(LayoutError::OutOfRange("SmiShiftSize", v("SmiShiftSize")));
        }
        Ok(Layout {
            heap_object_tag: offset("HeapObjectTag")?,
            heap_object_tag_mask: offset("HeapObjectTagMask")?,
            smi_tag_mask: offset("SmiTagMask")?,
            smi_shift: smi_shift as u32,
            fp_context: frame("off_fp_context")?,
            fp_function: frame("off_fp_function")?,
            object_map: offset("class_HeapObject__map__Map")?,
            map_instance_type: offset("class_Map__instance_type__uint16_t")?,
            function_shared: offset("class_JSFunction__shared__SharedFunctionInfo")?,
            shared_name_or_scope_info: offset(
                "class_SharedFunctionInfo__name_or_scope_info__Object",
            )?,
            shared_script: offset("class_SharedFunctionInfo__script_or_debug_info__HeapObject")?,
            script_name: offset("class_Script__name__Object")?,
            string_length: offset("class_String__length__int32_t")?,
            seq_one_byte_chars: offset("class_SeqOneByteString__chars__char")?,
            seq_two_byte_chars: offset("class_SeqTwoByteString__chars__char")?,
            cons_first: offset("class_ConsString__first__String")?,
            cons_second: offset("class_ConsString__second__String")?,
            thin_actual: offset("class_ThinString__actual__String")?,
            type_shared: tag("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")?,
            type_script: tag("type_Script__SCRIPT_TYPE")?,
            type_scope_info: tag("type_ScopeInfo__SCOPE_INFO_TYPE")?,
            first_nonstring_type: tag("FirstNonstringType")?,
            string_representation_mask: tag("StringRepresentationMask")?,
            string_encoding_mask: tag("StringEncodingMask")?,
            seq_string_tag: tag("SeqStringTag")?,
            cons_string_tag: tag("ConsStringTag")?,
            thin_string_tag: tag("ThinStringTag")?,
            one_byte_string_tag: tag("OneByteStringTag")?,
            scope_info_slots,
            scope_info_context_locals: offset("scopeinfo_idx_ncontextlocals")?,
            scope_info_first_vars: offset("scopeinfo_idx_first_vars")?,
        })
    }

    /// The untagged address of a tagged heap-object pointer, `None` for a Smi or garbage.
    pub fn heap_object(&self, word: u64) -> Option<u64> {
        (word & self.heap_object_tag_mask == self.heap_object_tag && word > 0x1000)
            .then(|| word - self.heap_object_tag)
    }

    /// A Smi's value, `None` for a heap object.
    pub fn smi(&self, word: u64) -> Option<i64> {
        (word & self.smi_tag_mask == 0).then(|| (word as i64) >> self.smi_shift)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Node 20.20's constants (read from /usr/bin/node's `v8dbg_*` symbols).
    pub(crate) fn node20() -> HashMap<&'static str, i64> {
        [
            ("TaggedSize", 8),
            ("HeapObjectTag", 1),
            ("HeapObjectTagMask", 3),
            ("SmiTagMask", 1),
            ("SmiShiftSize", 31),
            ("off_fp_context", -8),
            ("off_fp_function", -16),
            ("class_HeapObject__map__Map", 0),
            ("class_Map__instance_type__uint16_t", 12),
            ("class_JSFunction__shared__SharedFunctionInfo", 24),
            ("class_SharedFunctionInfo__name_or_scope_info__Object", 16),
            (
                "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
                32,
            ),
            ("class_Script__name__Object", 16),
            ("class_String__length__int32_t", 12),
            ("class_SeqOneByteString__chars__char", 16),
            ("class_SeqTwoByteString__chars__char", 16),
            ("class_ConsString__first__String", 16),
            ("class_ConsString__second__String", 24),
            ("class_ThinString__actual__String", 16),
            ("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE", 262),
            ("type_Script__SCRIPT_TYPE", 167),
            ("type_ScopeInfo__SCOPE_INFO_TYPE", 261),
            ("FirstNonstringType", 128),
            ("StringRepresentationMask", 7),
            ("StringEncodingMask", 8),
            ("SeqStringTag", 0),
            ("ConsStringTag", 1),
            ("ThinStringTag", 5),
            ("OneByteStringTag", 8),
            ("scopeinfo_idx_ncontextlocals", 2),
            ("scopeinfo_idx_first_vars", 3),
            ("parent_ScopeInfo__HeapObject", 0),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn node20_layout_parses() {
        let c = node20();
        let l = Layout::from_constants(|n| c.get(n).copied()).unwrap();
        assert_eq!(l.fp_function, -16);
        assert_eq!(l.smi_shift, 32);
        assert_eq!(l.scope_info_slots, 8);
        assert_eq!(l.smi(42 << 32), Some(42));
        assert_eq!(l.smi(0x1001), None);
        assert_eq!(l.heap_object(0x5000_1001), Some(0x5000_1000));
        assert_eq!(l.heap_object(42 << 32), None);
    }

    #[test]
    fn a_missing_constant_or_pointer_compression_is_named() {
        let mut c = node20();
        c.remove("class_Script__name__Object");
        assert_eq!(
            Layout::from_constants(|n| c.get(n).copied()),
            Err(LayoutError::Missing("class_Script__name__Object"))
        );
        let mut c = node20();
        c.insert("TaggedSize", 4);
        assert_eq!(
            Layout::from_constants(|n| c.get(n).copied())
                .unwrap_err()
                .to_string(),
            "pointer compression (tagged size 4) unsupported"
        );
        // A V8 whose ScopeInfo is a FixedArray: its slots start after the length.
        let mut c = node20();
        c.remove("parent_ScopeInfo__HeapObject");
        c.insert("parent_ScopeInfo__FixedArray", 0);
        assert_eq!(
            Layout::from_constants(|n| c.get(n).copied())
                .unwrap()
                .scope_info_slots,
            16
        );
    }
}
