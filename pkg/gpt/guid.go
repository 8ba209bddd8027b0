package gpt

import "github.com/layervisor/layervisor/pkg/winguid"

// GUID is a GUID in its on-disk form (see pkg/winguid).
type GUID = winguid.GUID

// ParseGUID parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", braces optional.
func ParseGUID(s string) (GUID, error) { return winguid.Parse(s) }

// MustParseGUID is ParseGUID for constants; it panics on a malformed GUID.
func MustParseGUID(s string) GUID { return winguid.MustParse(s) }

// NewGUID returns a random (version 4) GUID.
func NewGUID() GUID { return winguid.New() }
