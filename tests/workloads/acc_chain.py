"""Accuracy workload (tests/accuracy.rs): burns CPU in py_hot, called through
py_main -> py_alpha -> py_beta -> py_hot, for argv[1] seconds. With argv[2] == "native", py_hot
spends its time in a C extension's kiln_native_spin instead (the module built from
acc_native.c by the test), so the native frame must appear under the Python chain."""
import sys
import time


def py_hot(n, native):
    if native is not None:
        return native.spin(n * 40)
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def py_beta(n, native):
    return py_hot(n, native)


def py_alpha(n, native):
    return py_beta(n, native)


def py_main():
    seconds = float(sys.argv[1])
    native = None
    if len(sys.argv) > 2 and sys.argv[2] == "native":
        import kiln_native

        native = kiln_native
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        py_alpha(20000, native)


if __name__ == "__main__":
    py_main()
