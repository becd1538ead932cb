/* The workload of tests/privileges.rs: user CPU in a known call chain (main -> alpha -> beta -> hot)
 * and kernel CPU in a known kernel path (reading /dev/zero: ksys_read -> vfs_read -> read_zero),
 * so that one profile shows whether user frames and kernel frames are named. Built at -O0 with
 * frame pointers (see callchain.c). Usage: privileges SECONDS */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;
static char buf[1 << 20];

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

/* About as long in the kernel as hot is in user space. */
__attribute__((noinline)) void zeroes(int fd)
{
	for (int i = 0; i < 64; i++)
		sink += read(fd, buf, sizeof buf);
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
	int fd = open("/dev/zero", O_RDONLY);
	if (fd < 0)
		return 1;
	while (now() < end) {
		alpha();
		zeroes(fd);
	}
	return 0;
}
