/* Prints the CPython struct offsets Kiln's Python unwinder uses, from the headers it is compiled
 * against (the version's own Include/, internal headers included). Used by the agent's test
 * `python_layouts_match_the_installed_headers` to check agent/src/python/layouts.rs against every
 * CPython whose headers are installed. Output: `name value` lines. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX >= 0x030b0000
#include "internal/pycore_frame.h"
#endif
#if PY_VERSION_HEX >= 0x03090000
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#else
#include "internal/pycore_pystate.h"
#endif
#if PY_VERSION_HEX < 0x030b0000
#include "frameobject.h"
#endif

#define P(name, v) printf("%s %ld\n", name, (long)(v))

int main(void)
{
	P("version_hex", PY_VERSION_HEX);
	P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
	P("interp_next", offsetof(PyInterpreterState, next));
#if PY_VERSION_HEX >= 0x030b0000
	P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#else
	P("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
	P("tstate_next", offsetof(PyThreadState, next));
	P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030d0000
	P("tstate_frame", offsetof(PyThreadState, current_frame));
	P("cframe_current_frame", -1);
#elif PY_VERSION_HEX >= 0x030b0000
	P("tstate_frame", offsetof(PyThreadState, cframe));
	P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
	P("tstate_frame", offsetof(PyThreadState, frame));
	P("cframe_current_frame", -1);
#endif
#if PY_VERSION_HEX >= 0x030d0000
	P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
	P("frame_previous", offsetof(_PyInterpreterFrame, previous));
	P("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
	P("frame_owner", offsetof(_PyInterpreterFrame, owner));
#elif PY_VERSION_HEX >= 0x030c0000
	P("frame_code", offsetof(_PyInterpreterFrame, f_code));
	P("frame_previous", offsetof(_PyInterpreterFrame, previous));
	P("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
	P("frame_owner", offsetof(_PyInterpreterFrame, owner));
#elif PY_VERSION_HEX >= 0x030b0000
	P("frame_code", offsetof(_PyInterpreterFrame, f_code));
	P("frame_previous", offsetof(_PyInterpreterFrame, previous));
	P("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
	P("frame_owner", offsetof(_PyInterpreterFrame, is_entry));
#else
	P("frame_code", offsetof(PyFrameObject, f_code));
	P("frame_previous", offsetof(PyFrameObject, f_back));
	P("frame_instr", offsetof(PyFrameObject, f_lasti));
	P("frame_owner", -1);
#endif
	P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
	P("code_filename", offsetof(PyCodeObject, co_filename));
#if PY_VERSION_HEX >= 0x030b0000
	P("code_name", offsetof(PyCodeObject, co_qualname));
	P("code_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
#else
	P("code_name", offsetof(PyCodeObject, co_name));
	P("code_code_adaptive", -1);
#endif
#if PY_VERSION_HEX >= 0x030a0000
	P("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
	P("code_linetable", offsetof(PyCodeObject, co_lnotab));
#endif
	P("unicode_state", offsetof(PyASCIIObject, state));
	P("unicode_length", offsetof(PyASCIIObject, length));
	P("unicode_ascii_data", sizeof(PyASCIIObject));
	P("unicode_compact_data", sizeof(PyCompactUnicodeObject));
	P("bytes_size", offsetof(PyVarObject, ob_size));
	P("bytes_data", offsetof(PyBytesObject, ob_sval));
	P("object_type", offsetof(PyObject, ob_type));
	return 0;
}
