/* Workload for Kiln's vDSO test: main -> spin_clock -> clock_gettime (libc) -> the vDSO, in a loop,
 * built -O2 without frame pointers: most samples land inside the vDSO, which has no file behind it,
 * so naming them and unwinding out of them needs the agent's own copy of the vDSO image.
 * Usage: vdso_loop SECONDS. */
#include <stdlib.h>
#include <time.h>

volatile long sink;

__attribute__((noinline)) double spin_clock(double end)
{
	struct timespec ts;
	double t;
	do {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		t = ts.tv_sec + ts.tv_nsec / 1e9;
		sink += ts.tv_nsec;
	} while (t < end);
	return t;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 5;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	double t = spin_clock(ts.tv_sec + ts.tv_nsec / 1e9 + seconds);
	return (int)t & 1;
}
