package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/pkg/cimfs"
)

// cimEntry is how ls and stat print a file.
type cimEntry struct {
	Path           string            `json:"path"`
	FileID         uint32            `json:"file_id"`
	Dir            bool              `json:"dir"`
	Size           int64             `json:"size"`
	Attributes     uint32            `json:"attributes"`
	CreationTime   time.Time         `json:"creation_time"`
	LastWriteTime  time.Time         `json:"last_write_time"`
	ChangeTime     time.Time         `json:"change_time,omitempty"`
	LastAccessTime time.Time         `json:"last_access_time,omitempty"`
	ReparseTag     uint32            `json:"reparse_tag,omitempty"`
	Links          []cimfs.Link      `json:"links,omitempty"`
	SD             string            `json:"security_descriptor,omitempty"` // hex
	EAs            map[string]string `json:"eas,omitempty"`                 // name → hex value
	Reparse        string            `json:"reparse_data,omitempty"`        // hex
	Streams        []cimStream       `json:"streams,omitempty"`
}

type cimStream struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

func cimEntryOf(p string, f *cimfs.File, full bool) (cimEntry, error) {
	e := cimEntry{Path: p, FileID: f.ID, Dir: f.IsDir(), Size: f.Size, Attributes: f.Attributes,
		CreationTime: f.CreationTime, LastWriteTime: f.LastWriteTime, ReparseTag: f.ReparseTag}
	if !full {
		return e, nil
	}
	e.ChangeTime, e.LastAccessTime = f.ChangeTime, f.LastAccessTime
	info, err := f.Info()
	if err != nil {
		return e, err
	}
	if e.Links, err = f.Links(); err != nil {
		return e, err
	}
	e.SD, e.Reparse = hex.EncodeToString(info.SecurityDescriptor), hex.EncodeToString(info.ReparseData)
	e.EAs = parseEAs(info.EAs)
	ss, err := f.Streams()
	if err != nil {
		return e, err
	}
	for _, s := range ss {
		e.Streams = append(e.Streams, cimStream{s.Name, s.Size})
	}
	return e, nil
}

// parseEAs decodes a FILE_FULL_EA_INFORMATION chain for display.
func parseEAs(b []byte) map[string]string {
	if len(b) == 0 {
		return nil
	}
	m := map[string]string{}
	for off := 0; off+8 <= len(b); {
		e := b[off:]
		nl, vl := int(e[5]), int(binary.LittleEndian.Uint16(e[6:]))
		if 8+nl+1+vl > len(e) {
			break
		}
		m[string(e[8:8+nl])] = hex.EncodeToString(e[9+nl : 9+nl+vl])
		next := int(binary.LittleEndian.Uint32(e))
		if next == 0 {
			break
		}
		off += next
	}
	return m
}

func attrString(a uint32) string {
	s := []byte("------")
	for i, x := range []struct {
		bit uint32
		c   byte
	}{{cimfs.AttrDirectory, 'd'}, {cimfs.AttrReadonly, 'r'}, {cimfs.AttrHidden, 'h'}, {cimfs.AttrSystem, 's'}, {cimfs.AttrArchive, 'a'}, {cimfs.AttrReparsePoint, 'l'}} {
		if a&x.bit != 0 {
			s[i] = x.c
		}
	}
	return string(s)
}

func init() {
	cimCmd := &cobra.Command{Use: "cim", Short: "Read CimFS images (.cim + region/objectid files)",
		Long: `CimFS images, the read-only file systems Windows containers use for layers,
are read in pure Go: a .cim file names its region and objectid files, which
must sit in the same directory (a forked layer's CIM also reads its parents'
region files there). Paths inside the image use / or \ and compare
case-insensitively, as on Windows; "" or / is the root.`}

	var recursive bool
	lsCmd := &cobra.Command{
		Use:     "ls CIM [PATH]",
		Short:   "List a directory of the image (or the whole tree with -r)",
		Example: "  layervisor cim ls layer.cim Files/Windows\n  layervisor --json cim ls -r layer.cim",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := cimfs.Open(args[0])
			if err != nil {
				return err
			}
			defer img.Close()
			var out []cimEntry
			add := func(p string, f *cimfs.File) error {
				e, err := cimEntryOf(p, f, false)
				out = append(out, e)
				return err
			}
			base := strings.Trim(strings.ReplaceAll(optArg(args, 1), `\`, "/"), "/")
			if recursive {
				err = img.Walk(func(p string, f *cimfs.File) error {
					if p == "" || (base != "" && !strings.EqualFold(p, base) && !hasPrefixFold(p, base+"/")) {
						return nil
					}
					return add(p, f)
				})
			} else {
				var d *cimfs.File
				if d, err = img.Stat(base); err == nil && !d.IsDir() {
					err = add(base, d)
				} else if err == nil {
					var kids []*cimfs.File
					if kids, err = img.ReadDir(base); err == nil {
						for _, k := range kids {
							if err = add(strings.TrimPrefix(base+"/"+k.Name, "/"), k); err != nil {
								break
							}
						}
					}
				}
			}
			if err != nil {
				return err
			}
			if g.json {
				if out == nil {
					out = []cimEntry{}
				}
				return printJSON(out)
			}
			w := bufio.NewWriter(os.Stdout)
			for _, e := range out {
				fmt.Fprintf(w, "%s %12d %s %s\n", attrString(e.Attributes), e.Size, e.LastWriteTime.Format(time.RFC3339), e.Path)
			}
			return w.Flush()
		},
	}
	lsCmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "list the whole tree below PATH")

	statCmd := &cobra.Command{
		Use:   "stat CIM PATH",
		Short: "Print everything the image stores about one file",
		Long: `Print a file's FileID, attributes, times, size, names (hard links), security
descriptor, extended attributes, reparse data and alternate streams.`,
		Example: "  layervisor cim stat layer.cim Files/hello.txt",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := cimfs.Open(args[0])
			if err != nil {
				return err
			}
			defer img.Close()
			f, err := img.Stat(args[1])
			if err != nil {
				return err
			}
			e, err := cimEntryOf(args[1], f, true)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(e)
			}
			w := bufio.NewWriter(os.Stdout)
			fmt.Fprintf(w, "path:        %s\nfile id:     %d\ntype:        %s\nsize:        %d\nattributes:  %#x (%s)\n",
				e.Path, e.FileID, map[bool]string{true: "directory", false: "file"}[e.Dir], e.Size, e.Attributes, attrString(e.Attributes))
			for _, t := range []struct {
				n string
				t time.Time
			}{{"created", e.CreationTime}, {"written", e.LastWriteTime}, {"changed", e.ChangeTime}, {"accessed", e.LastAccessTime}} {
				fmt.Fprintf(w, "%-12s %s\n", t.n+":", t.t.Format(time.RFC3339Nano))
			}
			for _, l := range e.Links {
				fmt.Fprintf(w, "link:        parent %d name %q\n", l.Parent, l.Name)
			}
			if e.SD != "" {
				fmt.Fprintf(w, "security:    %s\n", e.SD)
			}
			for n, v := range e.EAs {
				fmt.Fprintf(w, "ea:          %s = %s\n", n, v)
			}
			if e.ReparseTag != 0 {
				fmt.Fprintf(w, "reparse:     tag %#x data %s\n", e.ReparseTag, e.Reparse)
			}
			for _, s := range e.Streams {
				fmt.Fprintf(w, "stream:      %s (%d bytes)\n", s.Name, s.Size)
			}
			return w.Flush()
		},
	}

	var streamName string
	catCmd := &cobra.Command{
		Use:     "cat CIM PATH",
		Short:   "Write a file's content (or one alternate stream's) to stdout",
		Example: "  layervisor cim cat layer.cim Files/hello.txt\n  layervisor cim cat --stream Zone.Identifier layer.cim Files/setup.exe",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := cimfs.Open(args[0])
			if err != nil {
				return err
			}
			defer img.Close()
			f, err := img.Stat(args[1])
			if err != nil {
				return err
			}
			var r *io.SectionReader
			if streamName != "" {
				r, err = f.OpenStream(streamName)
			} else {
				r, err = f.Open()
			}
			if err != nil {
				return err
			}
			_, err = io.Copy(os.Stdout, r)
			return err
		},
	}
	catCmd.Flags().StringVar(&streamName, "stream", "", "print this alternate data stream instead")

	extractCmd := &cobra.Command{
		Use:   "extract CIM DIR [PATH]",
		Short: "Copy the image's tree (or the subtree at PATH) into a new directory",
		Long: `Copy directories and file contents into DIR, which must not exist. Hard links
stay hard links, alternate streams become files named FILE:STREAM, last-write
times are kept. Reparse points (symlinks, junctions) are skipped with a
warning; security descriptors and EAs have no Linux equivalent and are not
copied (see cim stat). The tree is built beside DIR and renamed into place
only when complete: on any error nothing is left.`,
		Example: "  layervisor cim extract layer.cim ./out Files",
		Args:    cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := cimfs.Open(args[0])
			if err != nil {
				return err
			}
			defer img.Close()
			n, err := extractCim(img, args[1], optArg(args, 2))
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(map[string]any{"dir": args[1], "entries": n})
			}
			if !g.quiet {
				fmt.Fprintf(os.Stderr, "extracted %d entries to %s\n", n, args[1])
			}
			return nil
		},
	}
	cimCmd.AddCommand(lsCmd, statCmd, catCmd, extractCmd)
	rootCmd.AddCommand(cimCmd)
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// extractCim writes the subtree at sub into a temp directory beside dest
// and renames it to dest when everything is written.
func extractCim(img *cimfs.Image, dest, sub string) (n int, err error) {
	if _, err := os.Lstat(dest); err == nil {
		return 0, fmt.Errorf("extract to %s: already exists", dest)
	}
	top, err := img.Stat(sub)
	if err != nil {
		return 0, err
	}
	if !top.IsDir() {
		return 0, fmt.Errorf("extract %s: %q is not a directory", img.Path(), sub)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dest)), ".cim-extract-*")
	if err != nil {
		return 0, fmt.Errorf("extract to %s: %w", dest, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	base := strings.Trim(strings.ReplaceAll(sub, `\`, "/"), "/")
	first := map[uint32]string{} // FileID → first extracted path, for hard links
	var dirs []struct {
		path string
		t    time.Time
	}
	err = img.Walk(func(p string, f *cimfs.File) error {
		if base != "" && !strings.EqualFold(p, base) && !hasPrefixFold(p, base+"/") {
			return nil
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, base), "/")
		if strings.EqualFold(p, base) {
			rel = ""
		}
		if f.Name != "" && (strings.ContainsAny(f.Name, `/\:`+"\x00") || f.Name == "." || f.Name == "..") {
			return fmt.Errorf("extract %s: unsafe name %q at %q", img.Path(), f.Name, p)
		}
		target := filepath.Join(tmp, filepath.FromSlash(rel))
		n++
		switch {
		case f.IsDir():
			if rel != "" {
				if err := os.Mkdir(target, 0o755); err != nil {
					return err
				}
			}
			dirs = append(dirs, struct {
				path string
				t    time.Time
			}{target, f.LastWriteTime})
			return nil
		case f.ReparseTag != 0:
			slog.Warn("cim extract: skipping reparse point", "path", p, "tag", fmt.Sprintf("%#x", f.ReparseTag))
			return nil
		}
		if prev, ok := first[f.ID]; ok {
			return os.Link(prev, target)
		}
		first[f.ID] = target
		r, err := f.Open()
		if err != nil {
			return err
		}
		if err := writeNew(target, r, f.LastWriteTime); err != nil {
			return err
		}
		ss, err := f.Streams()
		if err != nil {
			return err
		}
		for _, s := range ss {
			if strings.ContainsAny(s.Name, `/\`+"\x00") {
				return fmt.Errorf("extract %s: unsafe stream name %q on %q", img.Path(), s.Name, p)
			}
			sr, err := f.OpenStream(s.Name)
			if err != nil {
				return err
			}
			if err := writeNew(target+":"+s.Name, sr, f.LastWriteTime); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	// Directory times last, deepest first, once their contents are written.
	for i := len(dirs) - 1; i >= 0; i-- {
		if !dirs[i].t.IsZero() {
			os.Chtimes(dirs[i].path, dirs[i].t, dirs[i].t)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, dest); err != nil {
		return 0, fmt.Errorf("extract to %s: %w", dest, err)
	}
	return n, nil
}

func writeNew(path string, r io.Reader, mtime time.Time) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	if !mtime.IsZero() {
		return os.Chtimes(path, mtime, mtime)
	}
	return nil
}
