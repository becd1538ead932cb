/* A JIT stand-in for agent/tests/container_files.rs: one thread spins in anonymous executable
 * memory (a `jmp .` written into an RWX page, as a JIT's compiled code would be); the main thread
 * prints "PID PAGE", then on each "grow" line from stdin appends a million lines to its perf map
 * /tmp/perf-PID.map, the last of which renames the spinning page, and prints "grown". */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned char *page;

static void *spin(void *arg) {
	(void)arg;
	((void (*)(void))page)();
	return 0;
}

static void grow(void) {
	char path[64];
	snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
	FILE *f = fopen(path, "a");
	if (!f) {
		perror(path);
		return;
	}
	/* Fillers name addresses well past the page, so only the last line names it. */
	for (long i = 0; i < 1000000; i++)
		fprintf(f, "%lx 10 jit_filler_%ld\n", (unsigned long)page + 0x100000 + i * 0x10, i);
	fprintf(f, "%lx 1000 jit_spin_final\n", (unsigned long)page);
	fclose(f);
	printf("grown\n");
	fflush(stdout);
}

int main(void) {
	page = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		return 1;
	page[0] = 0xeb; /* jmp . */
	page[1] = 0xfe;
	pthread_t t;
	if (pthread_create(&t, 0, spin, 0))
		return 1;
	printf("%d %lx\n", getpid(), (unsigned long)page);
	fflush(stdout);
	char line[64];
	while (fgets(line, sizeof line, stdin))
		if (!strncmp(line, "grow", 4))
			grow();
	return 0;
}
