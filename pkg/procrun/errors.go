package procrun

import "github.com/layervisor/layervisor/internal/inroot"

// ErrCommandNotFound is wrapped by Run's error when the command is not in
// the image (callers outside the module cannot name internal/inroot's).
var ErrCommandNotFound = inroot.ErrCommandNotFound
