/* Mixed-unwinding workload, no-frame-pointer half (built with -O2 -fomit-frame-pointer). */
volatile unsigned long sink;

unsigned long delta(unsigned long x);

__attribute__((noinline)) unsigned long hot(unsigned long x)
{
	for (unsigned long i = 0; i < 2000000UL; i++)
		sink += i * x;
	return sink;
}

__attribute__((noinline)) unsigned long beta(unsigned long x)
{
	volatile char pad[48];
	pad[0] = (char)x;
	unsigned long r = delta(x);
	return r + pad[0];
}
