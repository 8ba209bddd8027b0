package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/pkg/cimfs"
	"github.com/layervisor/layervisor/pkg/wclayer/wintar"
)

// cimEntry is how ls and stat print a file.
type cimEntry struct {
	Path           string            `json:"path"`
	FileID         uint32            `json:"fileID"`
	Dir            bool              `json:"dir"`
	Size           int64             `json:"size"`
	Attributes     uint32            `json:"attributes"`
	CreationTime   time.Time         `json:"creationTime"`
	LastWriteTime  time.Time         `json:"lastWriteTime"`
	ChangeTime     time.Time         `json:"changeTime,omitempty"`
	LastAccessTime time.Time         `json:"lastAccessTime,omitempty"`
	ReparseTag     uint32            `json:"reparseTag,omitempty"`
	Links          []cimfs.Link      `json:"links,omitempty"`
	SD             string            `json:"securityDescriptor,omitempty"` // hex
	EAs            map[string]string `json:"eas,omitempty"`                // name → hex value
	Reparse        string            `json:"reparseData,omitempty"`        // hex
	Streams        []cimStream       `json:"streams,omitempty"`
}

type cimStream struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// cimEntryOf describes f, at p in img; full adds what only stat prints.
func cimEntryOf(img *cimfs.Image, p string, f *cimfs.File, full bool) (cimEntry, error) {
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
	eas, err := wintar.DecodeEAs(info.EAs)
	if err != nil {
		return e, fmt.Errorf("%s: %s: extended attributes: %w", img.Path(), p, err)
	}
	for _, ea := range eas {
		if e.EAs == nil {
			e.EAs = map[string]string{}
		}
		e.EAs[ea.Name] = hex.EncodeToString(ea.Value)
	}
	ss, err := f.Streams()
	if err != nil {
		return e, err
	}
	for _, s := range ss {
		e.Streams = append(e.Streams, cimStream{s.Name, s.Size})
	}
	return e, nil
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

func newCimCmd() *cobra.Command {
	return &cobra.Command{Use: "cim", Short: "Read CimFS images (.cim + region/objectid files)",
		Long: `CimFS images, the read-only file systems Windows containers use for layers,
are read in pure Go: a .cim file names its region and objectid files, which
must sit in the same directory (a forked layer's CIM also reads its parents'
region files there). Paths inside the image use / or \ and compare
case-insensitively, as on Windows; "" or / is the root.`}
}

// withCim opens the image args[0] for run.
func withCim(args []string, run func(img *cimfs.Image) error) error {
	img, err := cimfs.Open(args[0])
	if err != nil {
		return err
	}
	defer img.Close()
	return run(img)
}

func newCimLsCmd(o *options) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:     "ls CIM [PATH]",
		Short:   "List a directory of the image (or the whole tree with -r)",
		Example: "  layervisor cim ls layer.cim Files/Windows\n  layervisor --json cim ls -r layer.cim",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCim(args, func(img *cimfs.Image) error {
				out, err := cimList(img, optArg(args, 1), recursive)
				if err != nil {
					return err
				}
				if o.json {
					return printJSON(out)
				}
				w := bufio.NewWriter(os.Stdout)
				for _, e := range out {
					fmt.Fprintf(w, "%s %12d %s %s\n", attrString(e.Attributes), e.Size, e.LastWriteTime.Format(time.RFC3339), e.Path)
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "list the whole tree below PATH")
	return cmd
}

// cimList lists the directory at sub (or the file sub), or with recursive
// the whole tree below sub.
func cimList(img *cimfs.Image, sub string, recursive bool) ([]cimEntry, error) {
	out := []cimEntry{}
	add := func(p string, f *cimfs.File) error {
		e, err := cimEntryOf(img, p, f, false)
		out = append(out, e)
		return err
	}
	if recursive {
		err := img.WalkTree(sub, func(p, _ string, f *cimfs.File) error {
			if p == "" {
				return nil
			}
			return add(p, f)
		})
		return out, err
	}
	base := strings.Trim(strings.ReplaceAll(sub, `\`, "/"), "/")
	d, err := img.Stat(base)
	if err != nil {
		return nil, err
	}
	if !d.IsDir() {
		return out, add(base, d)
	}
	kids, err := img.ReadDir(base)
	if err != nil {
		return nil, err
	}
	for _, k := range kids {
		if err := add(strings.TrimPrefix(base+"/"+k.Name, "/"), k); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func newCimStatCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "stat CIM PATH",
		Short: "Print everything the image stores about one file",
		Long: `Print a file's FileID, attributes, times, size, names (hard links), security
descriptor, extended attributes, reparse data and alternate streams.`,
		Example: "  layervisor cim stat layer.cim Files/hello.txt",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCim(args, func(img *cimfs.Image) error {
				f, err := img.Stat(args[1])
				if err != nil {
					return err
				}
				e, err := cimEntryOf(img, args[1], f, true)
				if err != nil {
					return err
				}
				if o.json {
					return printJSON(e)
				}
				return printCimStat(e)
			})
		},
	}
}

func printCimStat(e cimEntry) error {
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
}

func newCimCatCmd() *cobra.Command {
	var streamName string
	cmd := &cobra.Command{
		Use:     "cat CIM PATH",
		Short:   "Write a file's content (or one alternate stream's) to stdout",
		Example: "  layervisor cim cat layer.cim Files/hello.txt\n  layervisor cim cat --stream Zone.Identifier layer.cim Files/setup.exe",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCim(args, func(img *cimfs.Image) error {
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
			})
		},
	}
	cmd.Flags().StringVar(&streamName, "stream", "", "print this alternate data stream instead")
	return cmd
}

// cimExtractResult is what cim extract prints with --json.
type cimExtractResult struct {
	Dir     string `json:"dir"`
	Entries int    `json:"entries"`
}

func newCimExtractCmd(o *options) *cobra.Command {
	return &cobra.Command{
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
			return withCim(args, func(img *cimfs.Image) error {
				n, err := img.Extract(args[1], optArg(args, 2), cimfs.ExtractOptions{
					Skipped: func(p string, tag uint32) {
						slog.Warn("cim extract: skipping reparse point", "path", p, "tag", fmt.Sprintf("%#x", tag))
					},
				})
				if err != nil {
					return err
				}
				if o.json {
					return printJSON(cimExtractResult{Dir: args[1], Entries: n})
				}
				if !o.quiet {
					fmt.Fprintf(os.Stderr, "extracted %d entries to %s\n", n, args[1])
				}
				return nil
			})
		},
	}
}
