package ociimage

import (
	"context"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// layerReader decompresses a blob while hashing both the compressed and the
// uncompressed bytes.
type layerReader struct {
	ctx     context.Context
	name    string
	l       Layer
	blob    io.ReadCloser
	blobVer digest.Verifier // nil when the archive gives no blob digest
	counted *countReader
	decomp  io.Reader
	closeFn func()
	diffVer digest.Verifier
	err     error // sticky
}

type countReader struct {
	r io.Reader
	n int64
	h io.Writer
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.h != nil && n > 0 {
		c.h.Write(p[:n])
	}
	return n, err
}

func newLayerReader(ctx context.Context, blob io.ReadCloser, l Layer, name string) (io.ReadCloser, error) {
	lr := &layerReader{ctx: ctx, name: name, l: l, blob: blob, diffVer: l.DiffID.Verifier()}
	lr.counted = &countReader{r: blob}
	if l.Digest != "" {
		lr.blobVer = l.Digest.Verifier()
		lr.counted.h = lr.blobVer
	}
	switch l.Compression {
	case Gzip:
		zr, err := gzip.NewReader(lr.counted)
		if err != nil {
			blob.Close()
			return nil, fmt.Errorf("%s: gzip: %w", name, err)
		}
		lr.decomp, lr.closeFn = zr, func() { zr.Close() }
	case Zstd:
		zr, err := zstd.NewReader(lr.counted, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30), zstd.WithDecoderLowmem(true))
		if err != nil {
			blob.Close()
			return nil, fmt.Errorf("%s: zstd: %w", name, err)
		}
		lr.decomp, lr.closeFn = zr, zr.Close
	default:
		lr.decomp = lr.counted
	}
	return lr, nil
}

func (lr *layerReader) Read(p []byte) (int, error) {
	if lr.err != nil {
		return 0, lr.err
	}
	if err := lr.ctx.Err(); err != nil {
		lr.err = err
		return 0, err
	}
	n, err := lr.decomp.Read(p)
	if n > 0 {
		lr.diffVer.Write(p[:n])
	}
	if err == io.EOF {
		err = lr.finish()
	} else if err != nil {
		err = fmt.Errorf("%s: %s stream is corrupt or truncated: %w", lr.name, lr.l.Compression, err)
	}
	if err != nil {
		lr.err = err
	}
	return n, err
}

// finish runs at the end of the uncompressed stream: the rest of the blob
// must be consumed for its digest, and both digests must match.
func (lr *layerReader) finish() error {
	if _, err := io.Copy(io.Discard, lr.counted); err != nil {
		return fmt.Errorf("%s: %w", lr.name, err)
	}
	if lr.blobVer != nil && !lr.blobVer.Verified() {
		return fmt.Errorf("%s: %w: blob content does not match %s", lr.name, ErrDigestMismatch, lr.l.Digest)
	}
	if lr.l.Size > 0 && lr.counted.n != lr.l.Size {
		return fmt.Errorf("%s: blob is %d bytes, manifest says %d", lr.name, lr.counted.n, lr.l.Size)
	}
	if !lr.diffVer.Verified() {
		return fmt.Errorf("%s: %w: uncompressed content does not match diffID %s", lr.name, ErrDigestMismatch, lr.l.DiffID)
	}
	return io.EOF
}

func (lr *layerReader) Close() error {
	if lr.closeFn != nil {
		lr.closeFn()
	}
	return lr.blob.Close()
}
