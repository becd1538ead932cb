//! HotSpot's own description of its data structures ("vmStructs"), read from a running JVM.
//!
//! `libjvm.so` exports tables meant for debuggers (the Serviceability Agent): `gHotSpotVMStructs`
//! (one entry per field: type name, field name, static flag, offset or address),
//! `gHotSpotVMTypes` (type sizes) and `gHotSpotVMIntConstants`, plus `gHotSpotVM…Offset` and
//! `…ArrayStride` symbols giving the layout of those entries. The agent reads the tables from the
//! process's memory and keeps only the offsets it needs ([`Offsets`]); a JVM whose tables lack one
//! of them is reported as unreadable with the missing name, never read with a guessed offset.

use std::collections::HashMap;

use super::mem::{Mem, Unreadable};

/// Entries read at most per table (JDK 17 has ~2,000 fields, ~700 types).
const MAX_ENTRIES: usize = 20_000;
/// Longest type or field name read.
const MAX_NAME: usize = 256;

/// Addresses (in the process) of the symbols that describe the tables: each points at a 64-bit
/// variable (the table pointer, an offset within an entry, or an entry stride).
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    pub addrs: HashMap<&'static str, u64>,
}

/// The symbols read from `libjvm.so`'s dynamic symbol table.
pub const SYMBOL_NAMES: &[&str] = &[
    "gHotSpotVMStructs",
    "gHotSpotVMStructEntryTypeNameOffset",
    "gHotSpotVMStructEntryFieldNameOffset",
    "gHotSpotVMStructEntryIsStaticOffset",
    "gHotSpotVMStructEntryOffsetOffset",
    "gHotSpotVMStructEntryAddressOffset",
    "gHotSpotVMStructEntryArrayStride",
    "gHotSpotVMTypes",
    "gHotSpotVMTypeEntryTypeNameOffset",
    "gHotSpotVMTypeEntrySizeOffset",
    "gHotSpotVMTypeEntryArrayStride",
    "gHotSpotVMIntConstants",
    "gHotSpotVMIntConstantEntryNameOffset",
    "gHotSpotVMIntConstantEntryValueOffset",
    "gHotSpotVMIntConstantEntryArrayStride",
];

/// Why a JVM's tables could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmStructsError {
    #[error("vmStructs not found")]
    NoSymbols,
    #[error("vmStructs unreadable")]
    Unreadable,
    #[error("vmStructs lack {0}")]
    Missing(String),
}

impl From<Unreadable> for VmStructsError {
    fn from(_: Unreadable) -> Self {
        VmStructsError::Unreadable
    }
}

/// The three tables, as read.
#[derive(Debug, Default)]
pub struct Tables {
    /// (type, field) → offset (instance fields) or address (static fields).
    pub fields: HashMap<(String, String), u64>,
    /// type → size in bytes.
    pub sizes: HashMap<String, u64>,
    pub ints: HashMap<String, i32>,
}

impl Tables {
    /// Reads the tables through the symbols' addresses.
    pub fn read(mem: &Mem, syms: &Symbols) -> Result<Tables, VmStructsError> {
        let sym = |n: &str| -> Result<u64, VmStructsError> {
            let a = *syms.addrs.get(n).ok_or(VmStructsError::NoSymbols)?;
            Ok(mem.u64(a)?)
        };
        let mut t = Tables::default();

        let base = sym("gHotSpotVMStructs")?;
        let (type_name, field_name, is_static, offset, address, stride) = (
            sym("gHotSpotVMStructEntryTypeNameOffset")?,
            sym("gHotSpotVMStructEntryFieldNameOffset")?,
            sym("gHotSpotVMStructEntryIsStaticOffset")?,
            sym("gHotSpotVMStructEntryOffsetOffset")?,
            sym("gHotSpotVMStructEntryAddressOffset")?,
            sym("gHotSpotVMStructEntryArrayStride")?,
        );
        check_stride(stride)?;
        for i in 0..MAX_ENTRIES as u64 {
            let e = base + i * stride;
            let tn = mem.u64(e + type_name)?;
            let fname = mem.u64(e + field_name)?;
            if tn == 0 || fname == 0 {
                break;
            }
            let value = if mem.u32(e + is_static)? != 0 {
                mem.u64(e + address)?
            } else {
                mem.u64(e + offset)?
            };
            t.fields.insert(
                (mem.c_string(tn, MAX_NAME)?, mem.c_string(fname, MAX_NAME)?),
                value,
            );
        }

        let base = sym("gHotSpotVMTypes")?;
        let (type_name, size, stride) = (
            sym("gHotSpotVMTypeEntryTypeNameOffset")?,
            sym("gHotSpotVMTypeEntrySizeOffset")?,
            sym("gHotSpotVMTypeEntryArrayStride")?,
        );
        check_stride(stride)?;
        for i in 0..MAX_ENTRIES as u64 {
            let e = base + i * stride;
            let tn = mem.u64(e + type_name)?;
            if tn == 0 {
                break;
            }
            t.sizes
                .insert(mem.c_string(tn, MAX_NAME)?, mem.u64(e + size)?);
        }

        let base = sym("gHotSpotVMIntConstants")?;
        let (name, value, stride) = (
            sym("gHotSpotVMIntConstantEntryNameOffset")?,
            sym("gHotSpotVMIntConstantEntryValueOffset")?,
            sym("gHotSpotVMIntConstantEntryArrayStride")?,
        );
        check_stride(stride)?;
        for i in 0..MAX_ENTRIES as u64 {
            let e = base + i * stride;
            let n = mem.u64(e + name)?;
            if n == 0 {
                break;
            }
            t.ints
                .insert(mem.c_string(n, MAX_NAME)?, mem.u32(e + value)? as i32);
        }
        Ok(t)
    }

    fn field(&self, ty: &str, field: &str) -> Result<u64, VmStructsError> {
        self.fields
            .get(&(ty.to_string(), field.to_string()))
            .copied()
            .ok_or_else(|| VmStructsError::Missing(format!("{ty}::{field}")))
    }

    fn size(&self, ty: &str) -> Result<u64, VmStructsError> {
        self.sizes
            .get(ty)
            .copied()
            .ok_or_else(|| VmStructsError::Missing(format!("sizeof({ty})")))
    }
}

fn check_stride(stride: u64) -> Result<(), VmStructsError> {
    if (8..=1024).contains(&stride) {
        Ok(())
    } else {
        Err(VmStructsError::Unreadable)
    }
}

/// The offsets (bytes within an object) and static addresses the agent uses, all from the
/// tables. Names follow HotSpot's.
#[derive(Clone, Debug)]
pub struct Offsets {
    /// Address of the static `CodeCache::_heaps` (a `GrowableArray<CodeHeap*>*`).
    pub code_cache_heaps: u64,
    /// Addresses of the statics `CodeCache::_low_bound` / `_high_bound`.
    pub code_cache_low: u64,
    pub code_cache_high: u64,
    pub growable_len: u64,
    pub growable_data: u64,
    pub heap_memory: u64,
    pub heap_segmap: u64,
    pub heap_log2_segment_size: u64,
    pub vs_low: u64,
    pub vs_high: u64,
    /// `sizeof(HeapBlock)`: a code blob starts this far after its heap block.
    pub heap_block_size: u64,
    pub blob_name: u64,
    pub blob_size: u64,
    pub blob_frame_size: u64,
    pub blob_code_begin: u64,
    pub blob_code_end: u64,
    pub compiled_method: u64,
    pub compiled_scopes_data_begin: u64,
    pub nmethod_compile_id: u64,
    pub nmethod_scopes_pcs_offset: u64,
    pub nmethod_dependencies_offset: u64,
    pub nmethod_metadata_offset: u64,
    pub pc_desc_size: u64,
    pub pc_desc_pc_offset: u64,
    pub pc_desc_scope_decode_offset: u64,
    pub method_const_method: u64,
    pub const_method_size: u64,
    pub const_method_constants: u64,
    pub const_method_name_index: u64,
    pub const_method_flags: u64,
    pub const_method_code_size: u64,
    /// `ConstMethod::_has_linenumber_table`, the flag bit.
    pub has_line_table: u16,
    pub constant_pool_size: u64,
    pub constant_pool_holder: u64,
    pub klass_name: u64,
    pub symbol_length: u64,
    pub symbol_body: u64,
}

impl Offsets {
    pub fn from_tables(t: &Tables) -> Result<Offsets, VmStructsError> {
        Ok(Offsets {
            code_cache_heaps: t.field("CodeCache", "_heaps")?,
            code_cache_low: t.field("CodeCache", "_low_bound")?,
            code_cache_high: t.field("CodeCache", "_high_bound")?,
            growable_len: t.field("GrowableArrayBase", "_len")?,
            growable_data: t.field("GrowableArray<int>", "_data")?,
            heap_memory: t.field("CodeHeap", "_memory")?,
            heap_segmap: t.field("CodeHeap", "_segmap")?,
            heap_log2_segment_size: t.field("CodeHeap", "_log2_segment_size")?,
            vs_low: t.field("VirtualSpace", "_low")?,
            vs_high: t.field("VirtualSpace", "_high")?,
            heap_block_size: t.size("HeapBlock")?,
            blob_name: t.field("CodeBlob", "_name")?,
            blob_size: t.field("CodeBlob", "_size")?,
            blob_frame_size: t.field("CodeBlob", "_frame_size")?,
            blob_code_begin: t.field("CodeBlob", "_code_begin")?,
            blob_code_end: t.field("CodeBlob", "_code_end")?,
            compiled_method: t.field("CompiledMethod", "_method")?,
            compiled_scopes_data_begin: t.field("CompiledMethod", "_scopes_data_begin")?,
            nmethod_compile_id: t.field("nmethod", "_compile_id")?,
            nmethod_scopes_pcs_offset: t.field("nmethod", "_scopes_pcs_offset")?,
            nmethod_dependencies_offset: t.field("nmethod", "_dependencies_offset")?,
            nmethod_metadata_offset: t.field("nmethod", "_metadata_offset")?,
            pc_desc_size: t.size("PcDesc")?,
            pc_desc_pc_offset: t.field("PcDesc", "_pc_offset")?,
            pc_desc_scope_decode_offset: t.field("PcDesc", "_scope_decode_offset")?,
            method_const_method: t.field("Method", "_constMethod")?,
            const_method_size: t.size("ConstMethod")?,
            const_method_constants: t.field("ConstMethod", "_constants")?,
            const_method_name_index: t.field("ConstMethod", "_name_index")?,
            const_method_flags: t.field("ConstMethod", "_flags")?,
            const_method_code_size: t.field("ConstMethod", "_code_size")?,
            has_line_table: t
                .ints
                .get("ConstMethod::_has_linenumber_table")
                .map(|&v| v as u16)
                .ok_or_else(|| {
                    VmStructsError::Missing("ConstMethod::_has_linenumber_table".into())
                })?,
            constant_pool_size: t.size("ConstantPool")?,
            constant_pool_holder: t.field("ConstantPool", "_pool_holder")?,
            klass_name: t.field("Klass", "_name")?,
            symbol_length: t.field("Symbol", "_length")?,
            symbol_body: t.field("Symbol", "_body")?,
        })
    }
}
