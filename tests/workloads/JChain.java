// The Java accuracy workload: main -> alpha -> beta -> hot, hot spinning in Java or (with
// `native`) in a JNI function of libjchain.so (jchain_native.c). Runs for args[0] seconds.
public class JChain {
    static volatile long sink;

    static native long nativeSpin(long n);

    static long hot(long n, boolean nat) {
        if (nat) {
            return nativeSpin(n);
        }
        long s = 0;
        for (long i = 0; i < n; i++) {
            s += i * i ^ (s >>> 3);
        }
        return s;
    }

    static long beta(long n, boolean nat) {
        return hot(n, nat) + 1;
    }

    static long alpha(long n, boolean nat) {
        return beta(n, nat) + 1;
    }

    public static void main(String[] args) {
        long seconds = Long.parseLong(args[0]);
        boolean nat = args.length > 1 && args[1].equals("native");
        if (nat) {
            System.loadLibrary("jchain");
        }
        long end = System.nanoTime() + seconds * 1_000_000_000L;
        while (System.nanoTime() < end) {
            sink += alpha(2_000_000, nat);
        }
    }
}
