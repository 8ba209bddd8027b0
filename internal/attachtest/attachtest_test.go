package attachtest

import (
	"errors"
	"fmt"
	"testing"
)

// recorder keeps what the table reports instead of failing this test.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestTableReportsMisuseAndCounts(t *testing.T) {
	r := &recorder{TB: t}
	tab := New[string, int](r, "guest mount")
	if err := tab.Add("/a", 1); err != nil {
		t.Fatal(err)
	}
	tab.Add("/a", 2)
	tab.Remove("/b")
	if len(r.errs) != 2 || r.errs[0] != "guest mount /a added twice" || r.errs[1] != "removal of guest mount /b which is not there" {
		t.Fatalf("reports %q", r.errs)
	}
	if v, ok := tab.Get("/a"); !ok || v != 2 {
		t.Fatalf("get /a: %d %v", v, ok)
	}
	boom := errors.New("boom")
	tab.AddHook = func(string) error { return boom }
	if err := tab.Add("/c", 3); err != boom {
		t.Fatalf("hook error not returned: %v", err)
	}
	if n, adds, removes := tab.Counts(); n != 1 || adds != 2 || removes != 1 || tab.Count() != 1 {
		t.Fatalf("counts %d %d %d", n, adds, removes)
	}
}
