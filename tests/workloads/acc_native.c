/* A minimal CPython C extension for the accuracy test's native Python cell: kiln_native.spin(n)
 * burns CPU in kiln_native_spin, a native function called from Python code. Built by the test
 * with gcc against the running interpreter's own headers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

__attribute__((noinline)) unsigned long kiln_native_spin(unsigned long n)
{
	volatile unsigned long x = 0;
	for (unsigned long i = 0; i < n; i++)
		x = x * 31 + i;
	return x;
}

static PyObject *spin(PyObject *self, PyObject *arg)
{
	unsigned long n = PyLong_AsUnsignedLong(arg);
	if (PyErr_Occurred())
		return NULL;
	return PyLong_FromUnsignedLong(kiln_native_spin(n));
}

static PyMethodDef methods[] = {
	{"spin", spin, METH_O, "Burn CPU in native code."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kiln_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit_kiln_native(void)
{
	return PyModule_Create(&module);
}
