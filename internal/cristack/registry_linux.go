package cristack

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layervisor/layervisor/internal/imagebuild"
)

// registry is a read-only OCI distribution server (the pull half of the
// distribution spec: /v2/, manifests and blobs by tag or digest, GET and
// HEAD) over images built with imagebuild. Blobs live in one directory;
// a manifest is found by repository and tag, or by digest.
type registry struct {
	dir string // blobs/sha256/<hex>

	mu        sync.Mutex
	tags      map[string]map[string]digest.Digest // repository → tag → manifest
	manifests map[digest.Digest]string            // manifest → media type
	srv       *http.Server
}

func newRegistry(dir string) (*registry, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	return &registry{dir: dir, tags: map[string]map[string]digest.Digest{}, manifests: map[digest.Digest]string{}}, nil
}

// add writes im and serves it as repo:tag; it returns the manifest's digest.
func (r *registry) add(repo, tag string, im imagebuild.Image) (digest.Digest, error) {
	if repo == "" || tag == "" || strings.ContainsAny(tag, "/@:") {
		return "", fmt.Errorf("registry: bad repository or tag %q:%q", repo, tag)
	}
	tmp, err := os.MkdirTemp(r.dir, "add-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	im.Name = ""
	if err := im.Write(imagebuild.OCIDir, tmp); err != nil {
		return "", fmt.Errorf("registry: write %s:%s: %w", repo, tag, err)
	}
	b, err := os.ReadFile(filepath.Join(tmp, "index.json"))
	if err != nil {
		return "", err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil || len(idx.Manifests) != 1 {
		return "", fmt.Errorf("registry: index of %s:%s: %v", repo, tag, err)
	}
	blobs, err := os.ReadDir(filepath.Join(tmp, "blobs", "sha256"))
	if err != nil {
		return "", err
	}
	for _, e := range blobs {
		dst := filepath.Join(r.dir, "blobs", "sha256", e.Name())
		if _, err := os.Stat(dst); err == nil {
			continue // content-addressed: the same bytes
		}
		if err := os.Rename(filepath.Join(tmp, "blobs", "sha256", e.Name()), dst); err != nil {
			return "", err
		}
	}
	m := idx.Manifests[0]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tags[repo] == nil {
		r.tags[repo] = map[string]digest.Digest{}
	}
	r.tags[repo][tag] = m.Digest
	r.manifests[m.Digest] = m.MediaType
	return m.Digest, nil
}

// serve serves the registry on l until close.
func (r *registry) serve(l net.Listener) {
	r.srv = &http.Server{Handler: r}
	go r.srv.Serve(l)
}

func (r *registry) close() error {
	if r.srv == nil {
		return nil
	}
	return r.srv.Close()
}

func (r *registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "read-only registry")
		return
	}
	p := req.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
		return
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		regError(w, http.StatusNotFound, "NAME_UNKNOWN", "not a /v2/ path")
		return
	}
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		r.manifest(w, req, rest[:i], rest[i+len("/manifests/"):])
		return
	}
	if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		d, err := digest.Parse(rest[i+len("/blobs/"):])
		if err != nil || d.Algorithm() != digest.SHA256 {
			regError(w, http.StatusBadRequest, "DIGEST_INVALID", "bad digest")
			return
		}
		r.blob(w, req, d, "application/octet-stream")
		return
	}
	regError(w, http.StatusNotFound, "NAME_UNKNOWN", "unknown path")
}

func (r *registry) manifest(w http.ResponseWriter, req *http.Request, repo, ref string) {
	r.mu.Lock()
	d, err := digest.Parse(ref)
	if err != nil {
		d = r.tags[repo][ref]
	} else if _, ok := r.tags[repo]; !ok {
		d = ""
	}
	mt, ok := r.manifests[d]
	r.mu.Unlock()
	if d == "" || !ok {
		regError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown: "+repo+":"+ref)
		return
	}
	r.blob(w, req, d, mt)
}

func (r *registry) blob(w http.ResponseWriter, req *http.Request, d digest.Digest, mediaType string) {
	f, err := os.Open(filepath.Join(r.dir, "blobs", "sha256", d.Encoded()))
	if err != nil {
		regError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown: "+d.String())
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		regError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Etag", `"`+d.String()+`"`)
	http.ServeContent(w, req, "", st.ModTime(), f)
}

func regError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
