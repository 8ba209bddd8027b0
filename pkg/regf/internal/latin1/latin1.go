// Package latin1 decodes ISO 8859-1 text: compressed registry names, and
// the lines hivexregedit prints as Latin-1.
package latin1

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

// Decode maps each byte to the code point of the same value.
func Decode(b []byte) string {
	rs := make([]rune, len(b))
	for i, c := range b {
		rs[i] = rune(c)
	}
	return string(rs)
}

// DecodeLines decodes the lines of b that are not valid UTF-8 as Latin-1
// and keeps the others: hivexregedit prints names without wide characters
// as Latin-1 bytes and the rest as UTF-8.
func DecodeLines(b []byte) string {
	var out strings.Builder
	for i, l := range bytes.Split(b, []byte("\n")) {
		if i > 0 {
			out.WriteByte('\n')
		}
		if utf8.Valid(l) {
			out.Write(l)
		} else {
			out.WriteString(Decode(l))
		}
	}
	return out.String()
}
