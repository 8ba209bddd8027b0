package wintar

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PAX record keys of Windows layer tars.
const (
	paxFileAttr     = "MSWINDOWS.fileattr"
	paxRawSD        = "MSWINDOWS.rawsd"
	paxSDDL         = "MSWINDOWS.sd"
	paxMountPoint   = "MSWINDOWS.mountpoint"
	paxXattrPrefix  = "MSWINDOWS.xattr."
	paxCreationTime = "LIBARCHIVE.creationtime"
)

// formatPAXTime writes t as "sec[.nsec]" with trailing zeros trimmed; a time
// before 1970 is written with a minus sign over both parts.
func formatPAXTime(t time.Time) string {
	sec, nsec := t.Unix(), int64(t.Nanosecond())
	if nsec == 0 {
		return strconv.FormatInt(sec, 10)
	}
	sign := ""
	if sec < 0 {
		sign, sec, nsec = "-", -(sec + 1), 1e9-nsec
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, sec, nsec), "0")
}

// parsePAXTime reads "[-]sec[.frac]"; digits beyond nanoseconds are
// dropped.
func parsePAXTime(s string) (time.Time, error) {
	neg := strings.HasPrefix(s, "-")
	body := strings.TrimPrefix(s, "-")
	secs, frac, hasFrac := strings.Cut(body, ".")
	if secs == "" || (hasFrac && frac == "") || strings.HasPrefix(secs, "+") {
		return time.Time{}, fmt.Errorf("time %q is not [-]seconds[.fraction]", s)
	}
	sec, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("time %q: %w", s, err)
	}
	var nsec int64
	for i, c := range frac {
		if c < '0' || c > '9' {
			return time.Time{}, fmt.Errorf("time %q: fraction is not decimal", s)
		}
		if i < 9 {
			nsec = nsec*10 + int64(c-'0')
		}
	}
	for i := len(frac); i < 9; i++ {
		nsec *= 10
	}
	if neg {
		sec, nsec = -sec, -nsec
	}
	return time.Unix(sec, nsec).UTC(), nil
}

// errBothSD is the ambiguity of a header carrying both forms of SD.
var errBothSD = errors.New(paxRawSD + " and " + paxSDDL + " both given")
