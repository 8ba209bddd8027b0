package undo

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
)

func TestRunReverseAndJoin(t *testing.T) {
	var s Stack
	var order []string
	errB := errors.New("b failed")
	s.Push("a", func(context.Context) error { order = append(order, "a"); return nil })
	s.Push("b", func(context.Context) error { order = append(order, "b"); return errB })
	s.Push("c", func(context.Context) error { order = append(order, "c"); return nil })
	err := s.Run(context.Background())
	if !reflect.DeepEqual(order, []string{"c", "b", "a"}) {
		t.Fatalf("order %v", order)
	}
	if !errors.Is(err, errB) {
		t.Fatalf("want joined errB, got %v", err)
	}
	if s.Len() != 0 {
		t.Fatal("stack not emptied")
	}
}

func TestRunUnlessCommitted(t *testing.T) {
	ran := 0
	f := func(commit bool, fail bool) (err error) {
		var s Stack
		defer s.RunUnlessCommitted(context.Background(), &err)
		s.Push("x", func(context.Context) error { ran++; return nil })
		if fail {
			return errors.New("boom")
		}
		if commit {
			s.Commit()
		}
		return nil
	}
	_ = f(true, false)
	_ = f(false, false)
	if ran != 0 {
		t.Fatalf("undo ran on success: %d", ran)
	}
	if err := f(false, true); err == nil || ran != 1 {
		t.Fatalf("undo did not run on failure: ran=%d err=%v", ran, err)
	}
}

func TestRunIgnoresCancelledContext(t *testing.T) {
	var s Stack
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var sawErr error
	s.Push("x", func(ctx context.Context) error { sawErr = ctx.Err(); return nil })
	_ = s.Run(ctx)
	if sawErr != nil {
		t.Fatalf("undo saw cancelled context: %v", sawErr)
	}
}

func TestConcurrentPush(t *testing.T) {
	var s Stack
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); s.Push("p", func(context.Context) error { return nil }) }()
	}
	wg.Wait()
	if s.Len() != 50 {
		t.Fatalf("len %d", s.Len())
	}
}
