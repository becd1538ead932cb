"""agent_overhead workload (benches/benches/agent_overhead.rs): a CPython process burning CPU in
pure Python under a deep-ish call chain, main -> alpha -> level x DEPTH -> beta -> hot, until
killed. argv[1]: DEPTH (default 20)."""
import sys


def hot(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def beta(n):
    return hot(n)


def level(n, depth):
    if depth == 0:
        return beta(n)
    return level(n, depth - 1)


def alpha(n, depth):
    return level(n, depth)


def main():
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    while True:
        alpha(20000, depth)


if __name__ == "__main__":
    main()
