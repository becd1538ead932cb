/* Mixed-unwinding workload, frame-pointer half (built with -O2 -fno-omit-frame-pointer):
 * main -> alpha (FP) -> beta (no FP, mixed_nofp.c) -> delta (FP) -> hot (no FP). */
#include <stdlib.h>
#include <time.h>

unsigned long beta(unsigned long x);
unsigned long hot(unsigned long x);

__attribute__((noinline)) unsigned long delta(unsigned long x)
{
	unsigned long r = hot(x);
	return r + 3;
}

__attribute__((noinline)) unsigned long alpha(unsigned long x)
{
	unsigned long r = beta(x);
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
	double end = now() + seconds;
	unsigned long x = 1;
	while (now() < end)
		x += alpha(x);
	return (int)(x & 1);
}
