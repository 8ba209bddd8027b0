package inflight

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestWaitersSeeTheOutcome(t *testing.T) {
	o := New()
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.Wait(context.Background()); err != nil {
				errs[i] = err
				return
			}
			errs[i] = o.Err()
		}()
	}
	o.Finish(boom)
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, boom) {
			t.Errorf("waiter %d: %v, want %v", i, err, boom)
		}
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	o := New()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := o.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait on an unfinished op: %v, want DeadlineExceeded", err)
	}
	o.Finish(nil)
	if err := o.Wait(context.Background()); err != nil || o.Err() != nil {
		t.Fatalf("after Finish(nil): wait %v, err %v", err, o.Err())
	}
}
