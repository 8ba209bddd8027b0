package regtext

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/layervisor/layervisor/internal/utf16le"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/internal/latin1"
)

// Options adjust how Apply maps .reg key paths onto the hive.
type Options struct {
	// Prefix is removed from every key path (case-insensitive), e.g.
	// `HKEY_LOCAL_MACHINE\SOFTWARE`; a key outside it is an error. Without
	// a prefix, paths are taken relative to the hive root.
	Prefix string
}

// SyntaxError reports a line of .reg text that cannot be applied.
type SyntaxError struct {
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Apply merges .reg text into h: [Key] creates the key (and missing parents)
// and sets the values listed under it, [-Key] deletes a subtree, "v"=- and
// @=- delete values. It accepts regedit's version 5 and REGEDIT4 files,
// UTF-16LE with a BOM or UTF-8, continuation lines, and every value form:
// "string", dword:, hex:, hex(N):, str(N):"...". On error h may be partly
// changed: apply to a copy when that matters.
func Apply(h *regf.Hive, r io.Reader, opt Options) error {
	text, err := readText(r)
	if err != nil {
		return err
	}
	var cur *regf.Key // nil: outside a key, or in a deleted one
	inKey := false
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		lineNo := i + 1
		line := strings.TrimRight(lines[i], "\r")
		// A trailing backslash continues the value on the next line.
		for strings.HasSuffix(strings.TrimRight(line, " \t"), `\`) && i+1 < len(lines) && !isKeyLine(line) {
			line = strings.TrimSuffix(strings.TrimRight(line, " \t"), `\`)
			i++
			line += strings.TrimLeft(strings.TrimRight(lines[i], "\r"), " \t")
		}
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, ";"):
			continue
		case lineNo == 1 && (strings.HasPrefix(trimmed, Header) || trimmed == "REGEDIT4"):
			continue
		case strings.HasPrefix(trimmed, "["):
			if !strings.HasSuffix(trimmed, "]") {
				return &SyntaxError{lineNo, fmt.Sprintf("unterminated key line %q", trimmed)}
			}
			body := trimmed[1 : len(trimmed)-1]
			del := strings.HasPrefix(body, "-")
			path, err := relPath(strings.TrimPrefix(body, "-"), opt.Prefix)
			if err != nil {
				return &SyntaxError{lineNo, err.Error()}
			}
			inKey = true
			if del {
				cur = nil
				if path == "" {
					return &SyntaxError{lineNo, "cannot delete the root key"}
				}
				if err := h.DeleteKey(path); err != nil && !errors.Is(err, regf.ErrNotFound) {
					return &SyntaxError{lineNo, err.Error()}
				}
				continue
			}
			if cur, err = h.CreateKey(path); err != nil {
				return &SyntaxError{lineNo, err.Error()}
			}
		default:
			if !inKey {
				return &SyntaxError{lineNo, fmt.Sprintf("value outside a key: %q", trimmed)}
			}
			name, rest, err := valueName(trimmed)
			if err != nil {
				return &SyntaxError{lineNo, err.Error()}
			}
			if cur == nil {
				continue // values of a deleted key
			}
			if strings.TrimSpace(rest) == "-" {
				cur.DeleteValue(name)
				continue
			}
			typ, data, err := parseData(rest)
			if err != nil {
				return &SyntaxError{lineNo, fmt.Sprintf("value %q: %v", name, err)}
			}
			if err := cur.SetValue(name, typ, data); err != nil {
				return &SyntaxError{lineNo, err.Error()}
			}
		}
	}
	return nil
}

func isKeyLine(line string) bool {
	t := strings.TrimSpace(line)
	return strings.HasPrefix(t, "[") && strings.HasSuffix(t, "]")
}

// readText decodes the file: UTF-16LE when it starts with a BOM, else UTF-8
// (lines that are not UTF-8 as Latin-1).
func readText(r io.Reader) (string, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	if u, ok := bytes.CutPrefix(b, []byte{0xFF, 0xFE}); ok {
		return utf16le.Decode(u), nil
	}
	b = bytes.TrimPrefix(b, []byte("\xEF\xBB\xBF"))
	if utf8.Valid(b) {
		return string(b), nil
	}
	return latin1.DecodeLines(b), nil // as hivexregedit may print it
}

// relPath turns a .reg key path into a path below the hive root.
func relPath(p, prefix string) (string, error) {
	prefix = strings.Trim(prefix, `\`)
	if prefix != "" {
		t := strings.TrimPrefix(p, `\`)
		if len(t) < len(prefix) || !strings.EqualFold(t[:len(prefix)], prefix) ||
			(len(t) > len(prefix) && t[len(prefix)] != '\\') {
			return "", fmt.Errorf("key %q is not under the prefix %q", p, prefix)
		}
		p = t[len(prefix):]
	}
	return strings.Join(regf.SplitPath(p), `\`), nil
}

// valueName splits `"name"=rest` or `@=rest`.
func valueName(s string) (name, rest string, err error) {
	if strings.HasPrefix(s, "@") {
		rest, ok := strings.CutPrefix(strings.TrimLeft(s[1:], " \t"), "=")
		if !ok {
			return "", "", fmt.Errorf("expected = after @ in %q", s)
		}
		return "", rest, nil
	}
	name, after, err := quoted(s)
	if err != nil {
		return "", "", err
	}
	rest, ok := strings.CutPrefix(strings.TrimLeft(after, " \t"), "=")
	if !ok {
		return "", "", fmt.Errorf("expected = after the value name in %q", s)
	}
	return name, rest, nil
}

// quoted reads a "..." string with \\ and \" escapes at the start of s.
func quoted(s string) (string, string, error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", fmt.Errorf("expected a quoted string in %q", s)
	}
	var out strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return out.String(), s[i+1:], nil
		case '\\':
			if i+1 < len(s) {
				i++
				out.WriteByte(s[i])
			}
		default:
			out.WriteByte(c)
		}
	}
	return "", "", fmt.Errorf("unterminated string in %q", s)
}

// parseData decodes the part after `=`.
func parseData(s string) (regf.ValueType, []byte, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(s, `"`):
		str, rest, err := quoted(s)
		if err != nil {
			return 0, nil, err
		}
		if strings.TrimSpace(rest) != "" {
			return 0, nil, fmt.Errorf("unexpected %q after the string", rest)
		}
		return regf.RegSZ, regf.StringData(str), nil
	case hasPrefixFold(s, "dword:"):
		n, err := strconv.ParseUint(strings.TrimSpace(s[6:]), 16, 32)
		if err != nil {
			return 0, nil, fmt.Errorf("bad dword %q", s[6:])
		}
		return regf.RegDWord, regf.DWordData(uint32(n)), nil
	case hasPrefixFold(s, "hex:"):
		data, err := hexBytes(s[4:])
		return regf.RegBinary, data, err
	case hasPrefixFold(s, "hex("), hasPrefixFold(s, "str("):
		end := strings.Index(s, "):")
		if end < 0 {
			return 0, nil, fmt.Errorf("expected ): in %q", s)
		}
		n, err := strconv.ParseUint(s[4:end], 16, 32)
		if err != nil {
			return 0, nil, fmt.Errorf("bad type number %q", s[4:end])
		}
		body := s[end+2:]
		if hasPrefixFold(s, "hex(") {
			data, err := hexBytes(body)
			return regf.ValueType(n), data, err
		}
		str, rest, err := quoted(strings.TrimSpace(body))
		if err != nil {
			return 0, nil, err
		}
		if strings.TrimSpace(rest) != "" {
			return 0, nil, fmt.Errorf("unexpected %q after the string", rest)
		}
		return regf.ValueType(n), regf.StringData(str), nil
	}
	return 0, nil, fmt.Errorf("unrecognised data %q", s)
}

func hasPrefixFold(s, p string) bool {
	return len(s) >= len(p) && strings.EqualFold(s[:len(p)], p)
}

func hexBytes(s string) ([]byte, error) {
	clean := strings.Map(func(r rune) rune {
		if r == ',' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, s)
	if len(clean)%2 != 0 {
		return nil, fmt.Errorf("odd number of hex digits in %q", s)
	}
	data, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("bad hex bytes: %v", err)
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}
