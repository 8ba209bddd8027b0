package regtext

import (
	"fmt"
	"os"

	"github.com/layervisor/layervisor/pkg/regf"
)

// ApplyFile applies the .reg file at regPath to the hive file at hivePath
// (see Apply) and writes the hive back atomically. Nothing is written
// unless the whole file applies; an error in the .reg text names regPath.
func ApplyFile(hivePath, regPath string, opt Options) error {
	f, err := os.Open(regPath)
	if err != nil {
		return err
	}
	defer f.Close()
	return regf.EditFile(hivePath, func(h *regf.Hive) error {
		if err := Apply(h, f, opt); err != nil {
			return fmt.Errorf("%s: %w", regPath, err)
		}
		return nil
	})
}
