package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Load says how hard and how long Run drives a target.
type Load struct {
	// Concurrency is the number of callers, each with one call in flight
	// (a closed loop, as the apiserver's request goroutines are).
	Concurrency int
	// Ops, if positive, is the total number of calls; otherwise Run stops
	// starting calls after Duration.
	Ops      int
	Duration time.Duration
}

// Op is one call. worker is the caller's index, i the call's index across
// all callers (0, 1, 2, … in the order calls start).
type Op func(ctx context.Context, worker, i int) error

// Sample is what one Run measured.
type Sample struct {
	Latencies []time.Duration
	Errors    int
	FirstErr  error
	Elapsed   time.Duration
	// ServerCPU and ClientCPU are CPU time spent during the run by the
	// server process and by this one, when the caller measured them.
	ServerCPU, ClientCPU time.Duration
}

// Summary summarises s (sorting its latencies).
func (s Sample) Summary() Summary {
	sum := Summarize(s.Latencies, s.Errors, s.Elapsed)
	if n := time.Duration(len(s.Latencies)); n > 0 {
		sum.ServerCPU, sum.ClientCPU = s.ServerCPU/n, s.ClientCPU/n
	}
	return sum
}

// Run drives op under l and records the latency of every successful call.
// Elapsed runs from the first call's start to the last call's end, so
// throughput is completed calls over wall time.
func Run(ctx context.Context, l Load, op Op) Sample {
	c := max(l.Concurrency, 1)
	var (
		next     atomic.Int64
		errs     atomic.Int64
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	lats := make([][]time.Duration, c)
	guess := 1024
	if l.Ops > 0 {
		guess = l.Ops/c + 1
	}
	start := time.Now()
	deadline := start.Add(l.Duration)
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, guess)
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if l.Ops > 0 && i >= l.Ops {
					break
				}
				t0 := time.Now()
				if l.Ops <= 0 && !t0.Before(deadline) {
					break
				}
				err := op(ctx, w, i)
				d := time.Since(t0)
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				mine = append(mine, d)
			}
			lats[w] = mine
		}()
	}
	wg.Wait()
	s := Sample{Elapsed: time.Since(start), Errors: int(errs.Load())}
	if p := firstErr.Load(); p != nil {
		s.FirstErr = *p
	}
	n := 0
	for _, l := range lats {
		n += len(l)
	}
	s.Latencies = make([]time.Duration, 0, n)
	for _, l := range lats {
		s.Latencies = append(s.Latencies, l...)
	}
	return s
}
