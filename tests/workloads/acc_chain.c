/* Accuracy-matrix workload (tests/accuracy.rs), C: main -> c_alpha -> c_beta -> c_hot, where c_hot
 * burns nearly all of the CPU. `noipa` keeps gcc from inlining, cloning (c_hot.constprop.0) or
 * merging the functions, and each caller works on the callee's result, so no call is a tail call:
 * the chain is real at -O2 with and without frame pointers. Usage: acc_chain SECONDS */
#include <stdlib.h>
#include <time.h>

volatile unsigned long c_sink;

__attribute__((noipa)) unsigned long c_hot(unsigned long x)
{
	for (unsigned long i = 0; i < 2000000UL; i++)
		c_sink += i * x;
	return c_sink;
}

__attribute__((noipa)) unsigned long c_beta(unsigned long x)
{
	volatile char pad[48];
	pad[0] = (char)x;
	unsigned long r = c_hot(x + 1);
	return r + pad[0];
}

__attribute__((noipa)) unsigned long c_alpha(unsigned long x)
{
	unsigned long r = c_beta(x * 3);
	return r ^ x;
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
	double end = now() + seconds;
	unsigned long x = 1;
	while (now() < end)
		x += c_alpha(x);
	return (int)(x & 1);
}
