// Package mountinfo reads the kernel's mount table.
package mountinfo

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Mountpoint string
	FSType     string
	Source     string
	Options    string // super-block options
}

// Read returns the mounts of the calling process's mount namespace.
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+3 > len(fields) {
			continue
		}
		m := Mount{Mountpoint: unescape(fields[4]), FSType: fields[sep+1], Source: unescape(fields[sep+2])}
		if sep+3 < len(fields) {
			m.Options = fields[sep+3]
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// Mountpoints returns the set of mount points, for membership tests.
func Mountpoints() (map[string]bool, error) {
	ms, err := Read()
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(ms))
	for _, m := range ms {
		set[m.Mountpoint] = true
	}
	return set, nil
}

// unescape decodes the octal escapes (\040 for space) mountinfo uses.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
