/* A workload with a known call chain for Kiln's end-to-end test: main -> alpha -> beta -> hot, where
 * hot burns nearly all of the CPU. Built by the test at -O0 with frame pointers: gcc 12 omits the
 * frame of a leaf function like hot even with -fno-omit-frame-pointer at -O1, and a frame-pointer
 * unwinder then skips its caller (beta). -O0 gives every function a frame. Usage: callchain SECONDS */
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

__attribute__((noinline)) void hot(void)
{
	for (unsigned long i = 0; i < 20000000UL; i++)
		sink += i * i;
}

__attribute__((noinline)) void beta(void)
{
	hot();
	sink++;
}

__attribute__((noinline)) void alpha(void)
{
	beta();
	sink++;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 5.0;
	double end = now() + seconds;
	while (now() < end)
		alpha();
	return 0;
}
