// Accuracy-matrix workload (tests/accuracy.rs), C++: main -> cpp_chain::Chain::alpha ->
// cpp_chain::Chain::beta -> cpp_chain::hot<unsigned long>, where hot burns nearly all of the CPU.
// Member functions and a template make the mangled names non-trivial; `noipa` keeps g++ from
// inlining, cloning or merging them, and each caller works on the callee's result (no tail calls).
// Usage: acc_chain SECONDS
#include <chrono>
#include <cstdlib>

namespace cpp_chain {

volatile unsigned long sink;

template <typename T> __attribute__((noipa)) T hot(T x)
{
	for (T i = 0; i < 2000000; i++)
		sink += i * x;
	return sink;
}

struct Chain {
	unsigned long seed;
	__attribute__((noipa)) unsigned long beta(unsigned long x);
	__attribute__((noipa)) unsigned long alpha(unsigned long x);
};

unsigned long Chain::beta(unsigned long x)
{
	volatile char pad[48];
	pad[0] = static_cast<char>(x);
	unsigned long r = hot<unsigned long>(x + seed);
	return r + pad[0];
}

unsigned long Chain::alpha(unsigned long x)
{
	unsigned long r = beta(x * 3);
	return r ^ x;
}

} // namespace cpp_chain

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? std::atof(argv[1]) : 5;
	auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
	cpp_chain::Chain chain{1};
	unsigned long x = 1;
	while (std::chrono::steady_clock::now() < end)
		x += chain.alpha(x);
	return static_cast<int>(x & 1);
}
