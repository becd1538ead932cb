//! Struct layouts of the CPython versions Kiln reads (3.8–3.13, x86-64, release builds without
//! free threading), as data: no CPython code is copied, only the byte offsets of the fields the
//! sampler and the agent read.
//!
//! Every number comes from CPython's own headers, compiled: `tests/workloads/py_offsets.c` prints
//! `offsetof`/`sizeof` of each field against a version's `Include/` (internal headers included),
//! and the test `python_layouts_match_the_installed_headers` compares this table with every
//! CPython whose headers are installed (Debian's python3.11-dev and pyenv's 3.8–3.13 here). The
//! headers, per field (paths in the CPython repository):
//!
//! | field | header |
//! |---|---|
//! | `_PyRuntimeState.interpreters.head` | `Include/internal/pycore_runtime.h` (3.8: `pycore_pystate.h`) |
//! | `PyInterpreterState.next`, `.threads.head` (≤3.10 `.tstate_head`) | `Include/internal/pycore_interp.h` (3.8: `pycore_pystate.h`) |
//! | `PyThreadState.next`, `.thread_id`, `.frame` (≤3.10) / `.cframe` (3.11–3.12) / `.current_frame` (3.13) | `Include/cpython/pystate.h` |
//! | `_PyCFrame.current_frame` (3.11–3.12) | `Include/cpython/pystate.h` |
//! | `_PyInterpreterFrame.f_code` (3.11–3.12) / `.f_executable` (3.13), `.previous`, `.prev_instr` (3.11–3.12) / `.instr_ptr` (3.13), `.is_entry` (3.11) / `.owner` (3.12+) | `Include/internal/pycore_frame.h` |
//! | `PyFrameObject.f_code`, `.f_back`, `.f_lasti` (≤3.10) | `Include/cpython/frameobject.h` (3.8: `Include/frameobject.h`) |
//! | `PyCodeObject.co_firstlineno`, `.co_filename`, `.co_qualname` (3.11+) / `.co_name`, `.co_linetable` (3.10+) / `.co_lnotab`, `.co_code_adaptive` (3.11+) | `Include/cpython/code.h` (3.8: `Include/code.h`) |
//! | `PyASCIIObject`, `PyCompactUnicodeObject` | `Include/cpython/unicodeobject.h` |
//! | `PyBytesObject.ob_sval` | `Include/cpython/bytesobject.h` |

use kiln_sampler_bpf::{
    PY_ENTRY_CSTACK, PY_ENTRY_EVERY, PY_ENTRY_FLAG, PY_INSTR_LASTI, PY_INSTR_PTR, PY_NO_OFFSET,
    PyProc,
};

/// How a code object maps instruction positions to lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTableFormat {
    /// 3.8–3.9 `co_lnotab`: (byte increment, signed line increment) pairs.
    Lnotab,
    /// 3.10 `co_linetable`: (byte delta, signed line delta, -128 = no line) pairs.
    Linetable310,
    /// 3.11+ `co_linetable`: the location table of `Objects/locations.md`.
    Locations,
}

/// How the sampled instruction position is expressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrUnit {
    /// `f_lasti` in bytes (3.8–3.9).
    LastiBytes,
    /// `f_lasti` in 2-byte code units (3.10).
    LastiUnits,
    /// A pointer into the code object (3.11+): the sampler records its distance from the object,
    /// and the instruction index is (distance - `co_code_adaptive`) / 2.
    PointerFromCode,
}

/// One CPython minor version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub major: u8,
    pub minor: u8,
    pub runtime_interpreters_head: u32,
    pub interp_next: u32,
    pub interp_threads_head: u32,
    pub tstate_next: u32,
    pub tstate_thread_id: u32,
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame` (3.11–3.12), where `tstate_frame` points at a `_PyCFrame`.
    pub cframe_current_frame: Option<u32>,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    /// `is_entry` (3.11) or `owner` (3.12+).
    pub frame_owner: Option<u32>,
    pub code_firstlineno: u32,
    pub code_filename: u32,
    /// `co_qualname` where the version has it (3.11+), else `co_name`.
    pub code_name: u32,
    pub code_linetable: u32,
    pub code_code_adaptive: Option<u32>,
    /// `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`: where compact strings'
    /// characters start.
    pub unicode_ascii_data: u32,
    pub unicode_compact_data: u32,
    pub line_table: LineTableFormat,
    pub instr: InstrUnit,
}

/// Offsets shared by every supported version (checked by the same test).
pub const OBJECT_TYPE: u64 = 8;
pub const UNICODE_LENGTH: u64 = 16;
pub const UNICODE_STATE: u64 = 32;
pub const BYTES_SIZE: u64 = 16;
pub const BYTES_DATA: u64 = 32;

const V3_8: Layout = Layout {
    major: 3,
    minor: 8,
    runtime_interpreters_head: 32,
    interp_next: 0,
    interp_threads_head: 8,
    tstate_next: 8,
    tstate_thread_id: 176,
    tstate_frame: 24,
    cframe_current_frame: None,
    frame_code: 32,
    frame_previous: 24,
    frame_instr: 104,
    frame_owner: None,
    code_firstlineno: 40,
    code_filename: 104,
    code_name: 112,
    code_linetable: 120,
    code_code_adaptive: None,
    unicode_ascii_data: 48,
    unicode_compact_data: 72,
    line_table: LineTableFormat::Lnotab,
    instr: InstrUnit::LastiBytes,
};

/// The supported versions.
pub const LAYOUTS: &[Layout] = &[
    V3_8,
    Layout { minor: 9, ..V3_8 },
    Layout {
        minor: 10,
        frame_instr: 96,
        line_table: LineTableFormat::Linetable310,
        instr: InstrUnit::LastiUnits,
        ..V3_8
    },
    Layout {
        major: 3,
        minor: 11,
        runtime_interpreters_head: 40,
        interp_next: 0,
        interp_threads_head: 16,
        tstate_next: 8,
        tstate_thread_id: 152,
        tstate_frame: 56,
        cframe_current_frame: Some(8),
        frame_code: 32,
        frame_previous: 48,
        frame_instr: 56,
        frame_owner: Some(68),
        code_firstlineno: 72,
        code_filename: 112,
        code_name: 128,
        code_linetable: 136,
        code_code_adaptive: Some(184),
        unicode_ascii_data: 48,
        unicode_compact_data: 72,
        line_table: LineTableFormat::Locations,
        instr: InstrUnit::PointerFromCode,
    },
    Layout {
        major: 3,
        minor: 12,
        runtime_interpreters_head: 40,
        interp_next: 0,
        interp_threads_head: 72,
        tstate_next: 8,
        tstate_thread_id: 136,
        tstate_frame: 56,
        cframe_current_frame: Some(0),
        frame_code: 0,
        frame_previous: 8,
        frame_instr: 56,
        frame_owner: Some(70),
        code_firstlineno: 68,
        code_filename: 112,
        code_name: 128,
        code_linetable: 136,
        code_code_adaptive: Some(192),
        unicode_ascii_data: 40,
        unicode_compact_data: 56,
        line_table: LineTableFormat::Locations,
        instr: InstrUnit::PointerFromCode,
    },
    Layout {
        major: 3,
        minor: 13,
        runtime_interpreters_head: 632,
        interp_next: 7264,
        interp_threads_head: 7344,
        tstate_next: 8,
        tstate_thread_id: 152,
        tstate_frame: 72,
        cframe_current_frame: None,
        frame_code: 0,
        frame_previous: 8,
        frame_instr: 56,
        frame_owner: Some(70),
        code_firstlineno: 68,
        code_filename: 112,
        code_name: 128,
        code_linetable: 136,
        code_code_adaptive: Some(200),
        unicode_ascii_data: 40,
        unicode_compact_data: 56,
        line_table: LineTableFormat::Locations,
        instr: InstrUnit::PointerFromCode,
    },
];

/// The layout of `major.minor`, if supported.
pub fn layout(major: u8, minor: u8) -> Option<&'static Layout> {
    LAYOUTS
        .iter()
        .find(|l| l.major == major && l.minor == minor)
}

impl Layout {
    /// What the sampler needs, for a process whose `_PyRuntime` is at `runtime`.
    pub fn bpf_config(&self, runtime: u64) -> PyProc {
        let entry_kind = match (self.minor, self.frame_owner) {
            (_, None) => PY_ENTRY_EVERY,
            (11, Some(_)) => PY_ENTRY_FLAG,
            (_, Some(_)) => PY_ENTRY_CSTACK,
        };
        PyProc {
            runtime,
            runtime_interpreters_head: self.runtime_interpreters_head,
            interp_next: self.interp_next,
            interp_threads_head: self.interp_threads_head,
            tstate_next: self.tstate_next,
            tstate_thread_id: self.tstate_thread_id,
            tstate_frame: self.tstate_frame,
            cframe_current_frame: self.cframe_current_frame.unwrap_or(PY_NO_OFFSET),
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_instr: self.frame_instr,
            frame_owner: self.frame_owner.unwrap_or(PY_NO_OFFSET),
            code_firstlineno: self.code_firstlineno,
            entry_kind,
            instr_kind: match self.instr {
                InstrUnit::PointerFromCode => PY_INSTR_PTR,
                _ => PY_INSTR_LASTI,
            },
        }
    }

    /// The byte offset into the bytecode of a sampled instruction position.
    pub fn instr_byte_offset(&self, instr: u32) -> Option<u64> {
        let instr = u64::from(instr);
        match self.instr {
            InstrUnit::LastiBytes => Some(instr),
            InstrUnit::LastiUnits => Some(instr * 2),
            InstrUnit::PointerFromCode => instr.checked_sub(u64::from(self.code_code_adaptive?)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Include directories of the CPython headers installed here: Debian's (python3.11-dev) and
    /// pyenv's versions.
    fn installed_headers() -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for base in ["/usr/include", "/usr/local/include"] {
            for minor in 8..=13 {
                let d = PathBuf::from(format!("{base}/python3.{minor}"));
                if d.join("internal").is_dir() {
                    dirs.push(d);
                }
            }
        }
        for root in ["/root/.pyenv/versions", "/opt/pyenv/versions"] {
            let Ok(rd) = std::fs::read_dir(root) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(inc) = std::fs::read_dir(e.path().join("include")) else {
                    continue;
                };
                for i in inc.flatten() {
                    if i.path().join("internal").is_dir() {
                        dirs.push(i.path());
                    }
                }
            }
        }
        dirs
    }

    fn probe(include: &Path, out: &Path) -> Option<HashMap<String, i64>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/py_offsets.c");
        let built = Command::new("gcc")
            .arg(format!("-I{}", include.display()))
            .arg("-o")
            .arg(out)
            .arg(&src)
            .output()
            .unwrap();
        if !built.status.success() {
            // Headers of a version without internal headers we use (3.7 and older): not ours.
            eprintln!(
                "{}: probe does not compile: {}",
                include.display(),
                String::from_utf8_lossy(&built.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            );
            return None;
        }
        let run = Command::new(out).output().unwrap();
        Some(
            String::from_utf8_lossy(&run.stdout)
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Every layout in the table equals what the version's own headers say, for every CPython
    /// whose headers are installed (at least Debian's 3.11, which .ci/run installs).
    #[test]
    fn python_layouts_match_the_installed_headers() {
        let dirs = installed_headers();
        let tmp = tempfile::tempdir().unwrap();
        let mut checked = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let Some(m) = probe(dir, &tmp.path().join(format!("probe{i}"))) else {
                continue;
            };
            let hex = m["version_hex"];
            let (major, minor) = (((hex >> 24) & 0xff) as u8, ((hex >> 16) & 0xff) as u8);
            if (major, minor) < (3, 8) {
                continue;
            }
            let l = layout(major, minor)
                .unwrap_or_else(|| panic!("{}: 3.{minor} has no layout", dir.display()));
            let opt = |o: Option<u32>| o.map_or(-1, i64::from);
            let want: [(&str, i64); 20] = [
                (
                    "runtime_interpreters_head",
                    l.runtime_interpreters_head.into(),
                ),
                ("interp_next", l.interp_next.into()),
                ("interp_threads_head", l.interp_threads_head.into()),
                ("tstate_next", l.tstate_next.into()),
                ("tstate_thread_id", l.tstate_thread_id.into()),
                ("tstate_frame", l.tstate_frame.into()),
                ("cframe_current_frame", opt(l.cframe_current_frame)),
                ("frame_code", l.frame_code.into()),
                ("frame_previous", l.frame_previous.into()),
                ("frame_instr", l.frame_instr.into()),
                ("frame_owner", opt(l.frame_owner)),
                ("code_firstlineno", l.code_firstlineno.into()),
                ("code_filename", l.code_filename.into()),
                ("code_name", l.code_name.into()),
                ("code_linetable", l.code_linetable.into()),
                ("code_code_adaptive", opt(l.code_code_adaptive)),
                ("unicode_ascii_data", l.unicode_ascii_data.into()),
                ("unicode_compact_data", l.unicode_compact_data.into()),
                ("unicode_state", UNICODE_STATE as i64),
                ("bytes_data", BYTES_DATA as i64),
            ];
            for (k, v) in want {
                assert_eq!(m[k], v, "{}: {k}", dir.display());
            }
            assert_eq!(m["unicode_length"], UNICODE_LENGTH as i64);
            assert_eq!(m["bytes_size"], BYTES_SIZE as i64);
            assert_eq!(m["object_type"], OBJECT_TYPE as i64);
            checked.push(format!("{major}.{minor} ({})", dir.display()));
        }
        eprintln!("layouts checked against: {checked:?}");
        assert!(
            checked.iter().any(|c| c.starts_with("3.11")),
            "no CPython 3.11 headers found (Debian: apt-get install python3.11-dev); checked {checked:?}"
        );
    }

    #[test]
    fn instruction_positions_become_byte_offsets() {
        let l311 = layout(3, 11).unwrap();
        assert_eq!(l311.instr_byte_offset(184 + 10), Some(10));
        assert_eq!(l311.instr_byte_offset(3), None);
        assert_eq!(layout(3, 10).unwrap().instr_byte_offset(7), Some(14));
        assert_eq!(layout(3, 9).unwrap().instr_byte_offset(7), Some(7));
        assert!(layout(3, 14).is_none());
        let c = layout(3, 12).unwrap().bpf_config(0x1000);
        assert_eq!((c.entry_kind, c.cframe_current_frame), (PY_ENTRY_CSTACK, 0));
        let c = layout(3, 13).unwrap().bpf_config(0x1000);
        assert_eq!(c.cframe_current_frame, PY_NO_OFFSET);
    }
}
