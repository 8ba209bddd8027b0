package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/layervisor/layervisor/internal/atomicfile"
	"github.com/layervisor/layervisor/internal/crashpoint"
	"github.com/layervisor/layervisor/internal/flock"
	"github.com/layervisor/layervisor/pkg/layerconv"
	"github.com/layervisor/layervisor/pkg/layers"
)

// HasLayer reports whether the layer is stored verified (see PutLayer) in
// the current format: only such a layer may be shared by chain ID.
func (s *Store) HasLayer(chainID digest.Digest) bool {
	li, ok := s.currentLayer(chainID)
	return ok && li.Verified
}

// LayerImage is the path of the layer's image (layer.vhd).
func (s *Store) LayerImage(chainID digest.Digest) string {
	return filepath.Join(s.LayerDir(chainID), layers.LayerFile)
}

// ErrChainMismatch: a layer's content does not hash to the chain ID it was
// offered under.
var ErrChainMismatch = errors.New("layer content does not match its chain ID")

// ChainID is the OCI chain ID of a layer with the given diff ID over the
// layer whose chain ID is parent ("" for a base layer):
// ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
func ChainID(parent, diffID digest.Digest) digest.Digest {
	if parent == "" {
		return diffID
	}
	return digest.FromString(parent.String() + " " + diffID.String())
}

// PutLayer converts the layer tar read through open into the layer with the
// given chain ID, unless the store has it verified already; it reports
// whether it converted. The layer is verified on the way: the tar's digest
// (its diff ID) is computed from the very bytes converted, and the layer is
// published only if chainID = ChainID(parent, that digest) and, when diffID
// is not empty, the digest is diffID. Since the hash binds the diff ID,
// what is stored under a chain ID is then what anyone computing that chain
// ID from an image means, whoever called and whatever parent they named.
// A layer stored under chainID without that check (by an older layervisor)
// is replaced. Like Import, concurrent callers for one chain ID do the work
// once and a failure leaves nothing behind.
func (s *Store) PutLayer(ctx context.Context, chainID, parent, diffID digest.Digest, open layerconv.Opener) (bool, error) {
	if err := chainID.Validate(); err != nil {
		return false, fmt.Errorf("layer chain ID %q: %w", chainID, err)
	}
	if err := validOptional(parent); err != nil {
		return false, fmt.Errorf("layer %s: parent chain ID %q: %w", chainID, parent, err)
	}
	if err := validOptional(diffID); err != nil {
		return false, fmt.Errorf("layer %s: diff ID %q: %w", chainID, diffID, err)
	}
	return s.putLayer(ctx, chainID, parent, diffID, open)
}

func validOptional(d digest.Digest) error {
	if d == "" {
		return nil
	}
	return d.Validate()
}

// PutPrivateLayer converts content that nobody verified (a directory a
// snapshot client filled) under a new key of its own, which it returns.
// The key is random: it is no chain ID, so no lookup by chain ID (image
// import, a snapshot Prepare naming a layer, the differ) can ever find the
// layer, and only the caller, who records the key, uses it. Its record
// says Private and not Verified. reserve is called with the key before
// the layer is written: the caller records its reference there, so that
// a concurrent gc never takes the layer for garbage.
func (s *Store) PutPrivateLayer(ctx context.Context, open layerconv.Opener, reserve func(key digest.Digest) error) (digest.Digest, error) {
	key, err := privateKey()
	if err != nil {
		return "", err
	}
	// Held while converting, as for PutLayer, so that gc leaves the
	// temp directory alone.
	lk, err := flock.Acquire(s.layerLockPath(key))
	if err != nil {
		return "", err
	}
	defer lk.Release()
	if err := reserve(key); err != nil {
		return "", err
	}
	if err := s.writeLayer(ctx, key, &verifier{}, open); err != nil {
		return "", fmt.Errorf("private layer: %w", err)
	}
	return key, nil
}

func privateKey() (digest.Digest, error) {
	var nonce [32]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("private layer key: %w", err)
	}
	return digest.FromBytes(append([]byte("layervisor private layer\x00"), nonce[:]...)), nil
}

// PrivatizeLayer gives the content stored under chainID a private key of
// its own (see PutPrivateLayer), sharing its image file (a hard link): for
// snapshots an older layervisor committed under a chain ID it never
// verified. They keep their content, while the chain ID counts as absent
// until verified content replaces it. reassign is called once the image
// is linked and before the private layer appears, to point the users at
// the key; a concurrent gc sees either the link in a locked temp directory
// or the referenced layer.
func (s *Store) PrivatizeLayer(chainID digest.Digest, reassign func(key digest.Digest) error) (key digest.Digest, err error) {
	li, err := s.Layer(chainID)
	if err != nil {
		return "", err
	}
	if key, err = privateKey(); err != nil {
		return "", err
	}
	lk, err := flock.Acquire(s.layerLockPath(key))
	if err != nil {
		return "", err
	}
	defer lk.Release()
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "import-"+key.Encoded()+"-")
	if err != nil {
		return "", err
	}
	published := false
	defer func() {
		if !published {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Link(s.LayerImage(chainID), filepath.Join(tmp, layers.LayerFile)); err != nil {
		return "", fmt.Errorf("privatize layer %s: %w", chainID, err)
	}
	info := LayerInfo{ChainID: key, Format: li.Format, Size: li.Size, Entries: li.Entries, Created: time.Now().UTC(), Private: true}
	if err := atomicfile.WriteJSON(filepath.Join(tmp, "layer.json"), info, true); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	// Published even if reassign fails part way: some users may point at it.
	rerr := reassign(key)
	if err := os.Rename(tmp, s.LayerDir(key)); err != nil {
		return "", errors.Join(rerr, fmt.Errorf("publish layer %s: %w", key, err))
	}
	published = true
	if err := atomicfile.SyncDir(filepath.Join(s.root, "layers")); err != nil {
		return key, errors.Join(rerr, err)
	}
	slog.Info("layer stored unverified by an older version: its snapshots keep it as a private layer", "chainID", chainID, "key", key)
	return key, rerr
}

// putLayer is the one way a layer enters the store under a chain ID (image
// import, the snapshotter's Commit and differ): under the layer's lock,
// convert and verify into a temp dir, then publish (writeLayer).
func (s *Store) putLayer(ctx context.Context, chainID, parent, diffID digest.Digest, open layerconv.Opener) (bool, error) {
	if s.HasLayer(chainID) {
		return false, nil
	}
	lk, err := flock.Acquire(s.layerLockPath(chainID))
	if err != nil {
		return false, err
	}
	defer lk.Release()
	if s.HasLayer(chainID) {
		return false, nil
	}
	if li, _ := s.currentLayer(chainID); li.Private {
		// Random keys are no chain IDs: whoever offers one is guessing.
		return false, fmt.Errorf("layer %s: %w: the key is a private layer's", chainID, ErrChainMismatch)
	}
	if err := s.removeStaleLayer(chainID); err != nil {
		return false, err
	}
	v := &verifier{check: true, chain: chainID, parent: parent, want: diffID}
	if err := s.writeLayer(ctx, chainID, v, open); err != nil {
		return false, err
	}
	return true, nil
}

// writeLayer converts into a temp dir whose "import-<hex>-" name lets GC
// tell a live conversion (the caller holds the key's lock) from a dead one,
// then fsyncs and renames it into place as layers/<key>.
func (s *Store) writeLayer(ctx context.Context, key digest.Digest, v *verifier, open layerconv.Opener) error {
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "import-"+key.Encoded()+"-")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	f, err := os.OpenFile(filepath.Join(tmp, layers.LayerFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	// The verifier fails the read at the end of the stream on a mismatch
	// (as the opener's own digest checks do): the partly written image is
	// discarded with tmp.
	st, err := layerconv.Convert(ctx, v.opener(open), f)
	if err != nil {
		return fmt.Errorf("convert layer %s: %w", key, err)
	}
	got, ok := v.result()
	if !ok {
		return fmt.Errorf("convert layer %s: the tar was not read to its end, so its diff ID is unknown", key)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	info := LayerInfo{ChainID: key, DiffID: got, Format: layerconv.FormatVersion, Size: fi.Size(), Entries: st.Entries, Created: time.Now().UTC(),
		Verified: v.check, Private: !v.check}
	if v.check {
		info.Parent = v.parent
	}
	if err := atomicfile.WriteJSON(filepath.Join(tmp, "layer.json"), info, true); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	crashpoint.Hit("import.layer-converted")
	if err := os.Rename(tmp, s.LayerDir(key)); err != nil {
		return fmt.Errorf("publish layer %s: %w", key, err)
	}
	done = true
	if err := atomicfile.SyncDir(filepath.Join(s.root, "layers")); err != nil {
		return err
	}
	crashpoint.Hit("import.layer-published")
	slog.Debug("stored layer", "chainID", key, "diffID", got, "verified", v.check, "entries", st.Entries, "bytes", st.FileBytes)
	return nil
}

// verifier, with check, hashes every stream of a layer tar as the
// converter reads it and fails the read at the end of the stream unless
// the digest is want (when set) and chain = ChainID(parent, digest).
// Without check (a private layer) it does nothing.
type verifier struct {
	check               bool
	chain, parent, want digest.Digest

	mu  sync.Mutex
	got digest.Digest // of the last stream read to its end
	ok  bool          // that stream passed
}

func (v *verifier) opener(open layerconv.Opener) layerconv.Opener {
	if !v.check {
		return open // nothing to verify: a private layer
	}
	return func() (io.ReadCloser, error) {
		rc, err := open()
		if err != nil {
			return nil, err
		}
		v.mu.Lock()
		v.ok = false // a second pass is checked again
		v.mu.Unlock()
		return &verifyReader{rc: rc, h: sha256.New(), v: v}, nil
	}
}

// end checks a stream's digest at its end.
func (v *verifier) end(got digest.Digest) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.got, v.ok = got, false
	if v.want != "" && got != v.want {
		return fmt.Errorf("%w: the tar's digest is %s, want diff ID %s", ErrChainMismatch, got, v.want)
	}
	if c := ChainID(v.parent, got); c != v.chain {
		return fmt.Errorf("%w: a tar with diff ID %s over parent %q has chain ID %s, not %s", ErrChainMismatch, got, v.parent, c, v.chain)
	}
	v.ok = true
	return nil
}

func (v *verifier) result() (digest.Digest, bool) {
	if !v.check {
		return "", true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.got, v.ok
}

type verifyReader struct {
	rc  io.ReadCloser
	h   hash.Hash
	v   *verifier
	err error
}

func (r *verifyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.rc.Read(p)
	r.h.Write(p[:n])
	if err == io.EOF {
		if verr := r.v.end(digest.NewDigest(digest.SHA256, r.h)); verr != nil {
			err = verr
		}
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *verifyReader) Close() error { return r.rc.Close() }

// currentLayer reads a layer's record and says whether it is in the format
// this version writes.
func (s *Store) currentLayer(chainID digest.Digest) (LayerInfo, bool) {
	var li LayerInfo
	if err := atomicfile.ReadJSON(filepath.Join(s.LayerDir(chainID), "layer.json"), &li); err != nil {
		return li, false
	}
	return li, li.Format == layerconv.FormatVersion
}

// Layer returns the record of a stored layer.
func (s *Store) Layer(chainID digest.Digest) (LayerInfo, error) {
	var li LayerInfo
	if err := atomicfile.ReadJSON(filepath.Join(s.LayerDir(chainID), "layer.json"), &li); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return li, fmt.Errorf("layer %s: %w", chainID, ErrNotFound)
		}
		return li, fmt.Errorf("layer %s: %w", chainID, err)
	}
	return li, nil
}
