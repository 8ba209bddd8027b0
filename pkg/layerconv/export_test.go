package layerconv

import (
	"context"
	"os"
)

// ConvertOnePass is Convert without the two-pass fallback: a layer that
// needs it fails with ErrTwoPass.
func ConvertOnePass(ctx context.Context, open Opener, out *os.File) (Stats, error) {
	return convertLayer(ctx, open, out, false, defaultLimits)
}

var ErrTwoPass = errTwoPass
