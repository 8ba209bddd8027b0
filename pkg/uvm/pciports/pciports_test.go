package pciports

import (
	"errors"
	"sync"
	"testing"
)

func TestLowestFirstAndExhaustion(t *testing.T) {
	a := New(3)
	for want := 0; want < 3; want++ {
		got, err := a.Allocate()
		if err != nil || got != want {
			t.Fatalf("Allocate = %d, %v; want %d", got, err, want)
		}
	}
	if _, err := a.Allocate(); !errors.Is(err, ErrNoFreePort) {
		t.Fatalf("Allocate on full allocator: %v, want ErrNoFreePort", err)
	}
	if err := a.Free(1); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.Allocate(); got != 1 {
		t.Fatalf("after Free(1) Allocate = %d, want 1", got)
	}
	if err := a.Free(7); err == nil {
		t.Fatal("Free of an out-of-range port succeeded")
	}
	_ = a.Free(2)
	if err := a.Free(2); err == nil {
		t.Fatal("double Free succeeded")
	}
	if Name(4) != "rp4" {
		t.Fatalf("Name(4) = %q", Name(4))
	}
}

func TestConcurrentUnique(t *testing.T) {
	const n = 32
	a := New(n)
	var wg sync.WaitGroup
	got := make(chan int, n+8)
	for i := 0; i < n+8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p, err := a.Allocate(); err == nil {
				got <- p
			}
		}()
	}
	wg.Wait()
	close(got)
	seen := map[int]bool{}
	for p := range got {
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	if len(seen) != n || a.InUse() != n {
		t.Fatalf("allocated %d ports (InUse %d), want %d", len(seen), a.InUse(), n)
	}
}
