package cristack

import (
	"encoding/xml"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// Result is what a critest run reported (from ginkgo's JUnit report).
type Result struct {
	Passed, Failed, Pending int
	// Skipped counts specs that ran and skipped themselves (the runtime
	// lacks a feature); Filtered counts specs left out by focus/skip
	// (critest itself always skips the benchmarks).
	Skipped, Filtered int
	// FailedSpecs maps the name of each failed (or timed-out, aborted,
	// panicked, interrupted) spec to its failure message (on one line, cut at 300 bytes).
	FailedSpecs map[string]string
	// SkippedSpecs maps each self-skipped spec to its reason.
	SkippedSpecs map[string]string
	// Elapsed is critest's wall time; Log its output (ginkgo's verbose
	// log), Report its JUnit file.
	Elapsed     time.Duration
	Log, Report string
}

// Ran is the number of specs that ran (passed, failed or self-skipped).
func (r *Result) Ran() int { return r.Passed + r.Failed + r.Skipped }

// String is a one-line summary.
func (r *Result) String() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped, %d pending (%d filtered) in %s",
		r.Passed, r.Failed, r.Skipped, r.Pending, r.Filtered, r.Elapsed.Round(time.Second))
}

// Failures lists the failed specs with their reasons, sorted, one a line.
func (r *Result) Failures() string {
	var names []string
	for n := range r.FailedSpecs {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s: %s\n", n, r.FailedSpecs[n])
	}
	return b.String()
}

type junitSuites struct {
	Suites []struct {
		Cases []struct {
			Name    string `xml:"name,attr"`
			Status  string `xml:"status,attr"`
			Skipped *struct {
				Message string `xml:"message,attr"`
			} `xml:"skipped"`
			Failure *struct {
				Message string `xml:"message,attr"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// parseJUnit reads ginkgo's JUnit report. Suite set-up nodes
// ([BeforeSuite] and the like) count only when they fail.
func parseJUnit(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	r := &Result{FailedSpecs: map[string]string{}, SkippedSpecs: map[string]string{}, Report: path}
	for _, su := range s.Suites {
		for _, c := range su.Cases {
			name, isSpec := strings.CutPrefix(c.Name, "[It] ")
			switch c.Status {
			case "passed":
				if isSpec {
					r.Passed++
				}
			case "pending":
				r.Pending++
			case "skipped":
				msg := ""
				if c.Skipped != nil {
					msg = c.Skipped.Message
				}
				if reason, ok := strings.CutPrefix(msg, "skipped - "); ok {
					r.Skipped++
					r.SkippedSpecs[name] = brief(reason)
				} else {
					r.Filtered++
				}
			default: // failed, timedout, aborted, panicked, interrupted
				r.Failed++
				msg := c.Status
				if c.Failure != nil && c.Failure.Message != "" {
					msg = c.Failure.Message
				} else if c.Error != nil && c.Error.Message != "" {
					msg = c.Error.Message
				}
				r.FailedSpecs[name] = c.Status + ": " + brief(msg)
			}
		}
	}
	return r, nil
}

// brief is s on one line, at most 300 bytes.
func brief(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
