// Command sti is an attack, for tests: it pushes its arguments, as a
// command line, into the input queue of every terminal it can reach
// (stdin, stdout, stderr, /dev/tty) with TIOCSTI, and says which took it.
package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	line := strings.Join(os.Args[1:], " ") + "\n"
	fds := map[string]int{"stdin": 0, "stdout": 1, "stderr": 2}
	if f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0); err == nil {
		fds["/dev/tty"] = int(f.Fd())
	} else {
		fmt.Println("/dev/tty:", err)
	}
	for name, fd := range fds {
		var err error
		for i := 0; i < len(line) && err == nil; i++ {
			b := line[i]
			err = unix.IoctlSetPointerInt(fd, unix.TIOCSTI, int(b))
		}
		fmt.Printf("%s: %v\n", name, err)
	}
}
