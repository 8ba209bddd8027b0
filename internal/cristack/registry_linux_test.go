package cristack

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layervisor/layervisor/internal/imagebuild"
)

// TestRegistry checks the loopback registry's pull API: manifests by tag
// and by digest (GET and HEAD, with the digest header), blobs, and 404s
// for what it does not hold.
func TestRegistry(t *testing.T) {
	r, err := newRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	im := imagebuild.Image{Cmd: []string{"sh"}, Layers: []imagebuild.Layer{{Compression: imagebuild.Gzip,
		Entries: []imagebuild.Entry{imagebuild.File("hello", "hi\n", 0o644)}}}}
	d, err := r.add("lv/demo", "1", im)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r)
	defer srv.Close()
	get := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, _ := get("GET", "/v2/"); resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("/v2/: %d %v", resp.StatusCode, resp.Header)
	}
	for _, ref := range []string{"1", d.String()} {
		for _, m := range []string{"GET", "HEAD"} {
			resp, body := get(m, "/v2/lv/demo/manifests/"+ref)
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() ||
				resp.Header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" {
				t.Errorf("%s manifest %s: %d %v", m, ref, resp.StatusCode, resp.Header)
			}
			if m == "GET" && !strings.Contains(body, `"layers"`) {
				t.Errorf("manifest body %q", body)
			}
		}
	}
	// Every blob the manifest names is served.
	blobs, _ := os.ReadDir(filepath.Join(r.dir, "blobs", "sha256"))
	if len(blobs) != 3 {
		t.Errorf("%d blobs, want 3 (manifest, config, layer)", len(blobs))
	}
	for _, b := range blobs {
		if resp, _ := get("GET", "/v2/lv/demo/blobs/sha256:"+b.Name()); resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != "sha256:"+b.Name() {
			t.Errorf("blob %s: %d", b.Name(), resp.StatusCode)
		}
	}
	for _, p := range []string{"/v2/lv/demo/manifests/2", "/v2/lv/other/manifests/1", "/v2/lv/other/manifests/" + d.String(),
		"/v2/lv/demo/blobs/sha256:" + strings.Repeat("0", 64), "/v3/x"} {
		if resp, _ := get("GET", p); resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	if resp, _ := get("GET", "/v2/lv/demo/blobs/sha256:../../x"); resp.StatusCode != 400 {
		t.Errorf("bad digest: %d, want 400", resp.StatusCode)
	}
	if resp, _ := get("PUT", "/v2/lv/demo/manifests/1"); resp.StatusCode != 405 {
		t.Errorf("PUT: %d, want 405", resp.StatusCode)
	}
	if _, err := r.add("lv/demo", "a:b", im); err == nil {
		t.Error("tag with ':' accepted")
	}
}

// TestParseJUnit reads a ginkgo JUnit report: specs by state, suite
// nodes left out, self-skips told from filtered specs.
func TestParseJUnit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.xml")
	report := `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="0" errors="0" failures="1" time="1">
  <testsuite name="CRI validation" package="/x" tests="6" disabled="0" skipped="2" errors="0" failures="1" time="1" timestamp="2026-12-06T11:00:00">
    <testcase name="[BeforeSuite]" classname="CRI validation" status="passed" time="0"></testcase>
    <testcase name="[It] [k8s.io] A works" classname="CRI validation" status="passed" time="1"></testcase>
    <testcase name="[It] [k8s.io] B fails" classname="CRI validation" status="failed" time="1">
      <failure message="Expected&#xA;    &lt;int&gt;: 1&#xA;to equal 2" type="failed">details</failure>
    </testcase>
    <testcase name="[It] [k8s.io] C skips" classname="CRI validation" status="skipped" time="0"><skipped message="skipped - AppArmor is disabled on this host"></skipped></testcase>
    <testcase name="[It] [k8s.io] D benchmark" classname="CRI validation" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [k8s.io] E times out" classname="CRI validation" status="timedout" time="0"><failure message="" type="timedout"></failure></testcase>
  </testsuite>
</testsuites>`
	if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := parseJUnit(p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Passed != 1 || r.Failed != 2 || r.Skipped != 1 || r.Filtered != 1 || r.Pending != 0 || r.Ran() != 4 {
		t.Errorf("counts: %s", r)
	}
	if got := r.FailedSpecs["[k8s.io] B fails"]; got != "failed: Expected <int>: 1 to equal 2" {
		t.Errorf("failure of B: %q", got)
	}
	if got := r.FailedSpecs["[k8s.io] E times out"]; got != "timedout: timedout" {
		t.Errorf("failure of E: %q", got)
	}
	if got := r.SkippedSpecs["[k8s.io] C skips"]; got != "AppArmor is disabled on this host" {
		t.Errorf("skip of C: %q", got)
	}
	if !strings.Contains(r.Failures(), "[k8s.io] B fails: failed:") {
		t.Errorf("Failures: %q", r.Failures())
	}
}
