// agent_overhead workload (benches/benches/agent_overhead.rs): a JVM whose THREADS threads burn
// CPU in Java under a deep-ish call chain, main -> alpha -> level x DEPTH -> beta -> hot, until
// killed. Arguments: DEPTH (default 20), THREADS (default 2).
public final class OhChain {
    static volatile long sink;

    static long hot(int n) {
        long x = 0;
        for (int i = 0; i < n; i++) {
            x = (x * 31 + i) % 1000003;
        }
        return x;
    }

    static long beta(int n) {
        return hot(n);
    }

    static long level(int n, int depth) {
        if (depth == 0) {
            return beta(n);
        }
        return level(n, depth - 1);
    }

    static long alpha(int n, int depth) {
        return level(n, depth);
    }

    public static void main(String[] args) throws InterruptedException {
        int depth = args.length > 0 ? Integer.parseInt(args[0]) : 20;
        int threads = args.length > 1 ? Integer.parseInt(args[1]) : 2;
        Thread[] workers = new Thread[threads];
        for (int t = 0; t < threads; t++) {
            workers[t] = new Thread(() -> {
                for (;;) {
                    sink ^= alpha(200000, depth);
                }
            }, "oh-worker-" + t);
            workers[t].start();
        }
        for (Thread w : workers) {
            w.join();
        }
    }
}
