package layers

import (
	"os"
	"testing"

	"github.com/layervisor/layervisor/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }
