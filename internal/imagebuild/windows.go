package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"

	"github.com/layervisor/layervisor/pkg/wclayer/synth"
)

// Windows is a synthetic Windows image (windows/amd64): a base layer with
// config hives, files with security descriptors, EAs, streams and links,
// and a utility VM (build 26100, new enough for CIM boot), then two
// layers with rewritten and deleted files and delta hives
// (pkg/wclayer/synth). The layers keep their PAX records as they are.
func Windows(name string) (Image, error) {
	base := synth.Options{Seed: 7, Files: 120, Bytes: 1 << 20, UtilityVM: true, Build: 26100}
	var layers []Layer
	for i, gen := range []func(io.Writer) (synth.Stats, error){
		func(w io.Writer) (synth.Stats, error) { return synth.Base(w, base) },
		func(w io.Writer) (synth.Stats, error) { return synth.Child(w, base, 1) },
		func(w io.Writer) (synth.Stats, error) { return synth.Child(w, base, 2) },
	} {
		var b bytes.Buffer
		if _, err := gen(&b); err != nil {
			return Image{}, fmt.Errorf("windows layer %d: %w", i, err)
		}
		l, err := LayerFromTar(&b)
		if err != nil {
			return Image{}, fmt.Errorf("windows layer %d: %w", i, err)
		}
		l.Compression = Gzip
		layers = append(layers, l)
	}
	return Image{Name: name, OS: "windows", Arch: "amd64", Layers: layers}, nil
}

// LayerFromTar reads a layer tar into entries, headers (PAX records
// included) as they are.
func LayerFromTar(r io.Reader) (Layer, error) {
	var l Layer
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return l, nil
		}
		if err != nil {
			return Layer{}, err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return Layer{}, err
		}
		l.Entries = append(l.Entries, Entry{Header: *h, Content: data})
	}
}
