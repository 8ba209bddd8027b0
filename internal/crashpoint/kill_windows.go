package crashpoint

import "os"

func kill() { os.Exit(137) }
