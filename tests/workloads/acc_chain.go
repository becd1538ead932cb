// Accuracy-matrix workload (tests/accuracy.rs), Go: main.main -> main.goAlpha -> main.goBeta ->
// main.goHot, where goHot burns nearly all of the CPU. //go:noinline keeps the functions apart (Go
// does no tail-call elimination). Go 1.19 on amd64 always keeps frame pointers: there is no
// GOEXPERIMENT or flag to turn them off (internal/buildcfg.FramePointerEnabled is a constant).
// Usage: acc_chain SECONDS
package main

import (
	"os"
	"strconv"
	"time"
)

var sink uint64

//go:noinline
func goHot(x uint64) uint64 {
	s := x
	for i := uint64(0); i < 2000000; i++ {
		s += i * x
	}
	sink += s
	return s
}

//go:noinline
func goBeta(x uint64) uint64 {
	r := goHot(x + 1)
	return r + sink
}

//go:noinline
func goAlpha(x uint64) uint64 {
	r := goBeta(x * 3)
	return r ^ x
}

func main() {
	secs := 5.0
	if len(os.Args) > 1 {
		if s, err := strconv.ParseFloat(os.Args[1], 64); err == nil {
			secs = s
		}
	}
	end := time.Now().Add(time.Duration(secs * float64(time.Second)))
	x := uint64(1)
	for time.Now().Before(end) {
		x += goAlpha(x)
	}
	os.Exit(int(x & 1))
}
