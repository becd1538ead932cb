/* Workload for Kiln's DWARF-unwinding tests: main -> alpha -> deep^DEPTH -> beta -> hot, every function
 * noinline and followed by work after each call (no tail calls), built by the tests with
 * gcc -O2 -fomit-frame-pointer: a frame-pointer walk loses hot's callers, .eh_frame does not.
 * Each deep/beta frame holds PAD bytes of locals so the stack's byte depth can be set for measuring
 * stack-copy sizes. Usage: nofp_chain SECONDS [DEPTH]. */
#include <stdlib.h>
#include <time.h>

#ifndef PAD
#define PAD 64
#endif

volatile unsigned long sink;

__attribute__((noinline)) unsigned long hot(unsigned long x)
{
	for (unsigned long i = 0; i < 2000000UL; i++)
		sink += i * x;
	return sink;
}

__attribute__((noinline)) unsigned long beta(unsigned long x)
{
	volatile char pad[PAD];
	pad[0] = (char)x;
	unsigned long r = hot(x);
	return r + pad[0];
}

__attribute__((noinline)) unsigned long deep(int n, unsigned long x)
{
	volatile char pad[PAD];
	pad[0] = (char)x;
	unsigned long r = n > 0 ? deep(n - 1, x + 1) : beta(x);
	return r + pad[0];
}

__attribute__((noinline)) unsigned long alpha(int depth, unsigned long x)
{
	unsigned long r = depth > 0 ? deep(depth - 1, x) : beta(x);
	return r + 1;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 5;
	int depth = argc > 2 ? atoi(argv[2]) : 0;
	double end = now() + seconds;
	unsigned long x = 1;
	while (now() < end)
		x += alpha(depth, x);
	return (int)(x & 1);
}
