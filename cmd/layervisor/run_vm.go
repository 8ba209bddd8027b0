package main

import (
	"context"
	"errors"

	"github.com/layervisor/layervisor/pkg/store"
)

// runInUVM is wired up once the utility VM path lands.
func runInUVM(ctx context.Context, s *store.Store, o runOptions, cname string, argv []string) (int, error) {
	return 0, errors.New("--isolation vm: not available yet")
}
