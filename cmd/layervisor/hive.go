package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/regf/cimboot"
	"github.com/layervisor/layervisor/pkg/regf/regtext"
)

func newHiveCmd() *cobra.Command {
	return &cobra.Command{Use: "hive", Short: "Read, edit, merge and diff Windows registry hive files",
		Long: `Registry hives (regf files such as SYSTEM, SOFTWARE or a layer's
Hives/*_DELTA) are read and written in pure Go. Key paths are written with
backslashes below the hive's root (quote them in the shell), e.g.
'ControlSet001\Services'; names compare case-insensitively as on Windows.

Every command that changes a hive writes a whole new file atomically (temp
file, fsync, rename): on any error the original is left as it was. A dirty
hive's transaction logs (HIVE.LOG1/.LOG2, or HIVE.LOG) are replayed in
memory when it is read; an edit then writes the recovered, clean hive.`}
}

func newHiveCreateCmd() *cobra.Command {
	var co regf.CreateOptions
	cmd := &cobra.Command{
		Use:   "create HIVE",
		Short: "Create an empty hive",
		Long: `Create an empty hive (version 1.5, or 1.6 with --layered for a delta hive)
whose root key carries a default security descriptor. An existing file is
not overwritten.`,
		Example: "  layervisor hive create SOFTWARE",
		Args:    cobra.ExactArgs(1),
		RunE:    func(cmd *cobra.Command, args []string) error { return regf.CreateFile(args[0], co) },
	}
	cmd.Flags().StringVar(&co.RootName, "root-name", "", `name of the root key (default "ROOT")`)
	cmd.Flags().BoolVar(&co.Layered, "layered", false, "create a delta (layered-keys) hive")
	return cmd
}

func newHiveDumpCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "dump HIVE [KEYPATH]",
		Short: "Print a hive (or a subtree) as a tree of keys and values",
		Long: `Print the keys below KEYPATH (default: the root) as an indented tree with
their values; --json prints the same tree as JSON (values with their type,
decoded data where the type has an obvious decoding, and raw hex).`,
		Example: "  layervisor hive dump SYSTEM 'ControlSet001\\Control'\n  layervisor --json hive dump SYSTEM",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, k, err := regf.ReadFileKey(args[0], optArg(args, 1))
			if err != nil {
				return err
			}
			if o.json {
				return printJSON(h.KeyJSON(k, true))
			}
			w := bufio.NewWriter(os.Stdout)
			switch {
			case h.Replayed > 0:
				fmt.Fprintf(w, "# %s is dirty: replayed %d transaction log entries in memory\n", args[0], h.Replayed)
			case h.Dirty:
				fmt.Fprintf(w, "# %s is dirty and no transaction log applied: newer data may be missing\n", args[0])
			}
			if err := h.Dump(w, k); err != nil {
				return err
			}
			return w.Flush()
		},
	}
}

func newHiveGetCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "get HIVE KEYPATH [VALUE]",
		Short: "Print a key's values and subkeys, or one value",
		Long: `Without VALUE, list the key's values and subkeys. With VALUE ("@" or "" for
the default value), print its data: strings as text, numbers in decimal,
multi-strings one per line, anything else as hex.`,
		Example: "  layervisor hive get SYSTEM 'Setup' BootPathOverride",
		Args:    cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, k, err := regf.ReadFileKey(args[0], args[1])
			if err != nil {
				return err
			}
			if len(args) == 2 {
				if o.json {
					return printJSON(h.KeyJSON(k, false))
				}
				w := bufio.NewWriter(os.Stdout)
				for _, v := range k.Values() {
					fmt.Fprintf(w, "%s %s %s\n", regf.DisplayName(v.Name), v.Type, v.Format())
				}
				for _, s := range k.Subkeys() {
					fmt.Fprintf(w, "%s\\\n", s.Name())
				}
				return w.Flush()
			}
			name := valueName(args[2])
			v := k.Value(name)
			if v == nil {
				return fmt.Errorf("%s: key %q has no value %s: %w", args[0], args[1], regf.DisplayName(name), regf.ErrNotFound)
			}
			if o.json {
				return printJSON(v.JSON())
			}
			fmt.Println(v.PlainText())
			return nil
		},
	}
}

func newHiveSetCmd() *cobra.Command {
	var typeName string
	var hexData bool
	cmd := &cobra.Command{
		Use:   "set HIVE KEYPATH [NAME [DATA...]]",
		Short: "Create a key, or set a value (creating its key)",
		Long: `Set value NAME ("@" or "" for the default value) of KEYPATH, creating missing
keys; with only KEYPATH, just create the key. --type picks the value type
(default REG_SZ) and how DATA is read:
  REG_SZ, REG_EXPAND_SZ, REG_LINK   one string (stored UTF-16LE, NUL-terminated)
  REG_MULTI_SZ                      one argument per string
  REG_DWORD, REG_DWORD_BIG_ENDIAN,
  REG_QWORD                         a number, decimal or 0x-prefixed hex
  anything else (REG_BINARY, REG_NONE, numeric types such as 0x20001)
                                    hex bytes: "de,ad,be,ef" or "deadbeef"
--hex takes DATA as raw hex bytes whatever the type.`,
		Example: "  layervisor hive set SYSTEM 'ControlSet001\\Services\\wcifs' Start --type REG_DWORD 4\n" +
			"  layervisor hive set SOFTWARE 'Vendor\\App' Paths --type REG_MULTI_SZ 'C:\\a' 'C:\\b'",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ, err := regf.ParseValueType(typeName)
			if err != nil {
				return fmt.Errorf("--type: %w", err)
			}
			if len(args) == 2 {
				return regf.CreateFileKey(args[0], args[1])
			}
			var data []byte
			if hexData {
				data, err = regf.ParseHexData(strings.Join(args[3:], ""))
			} else {
				data, err = regf.ParseValueData(typ, args[3:])
			}
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return regf.SetFileValue(args[0], args[1], valueName(args[2]), typ, data)
		},
	}
	cmd.Flags().StringVarP(&typeName, "type", "t", "REG_SZ", "value type: REG_SZ, REG_DWORD, REG_BINARY, ... or a number")
	cmd.Flags().BoolVar(&hexData, "hex", false, "DATA is raw hex bytes, whatever the type")
	return cmd
}

func newHiveDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete HIVE KEYPATH [NAME]",
		Short: "Delete a key and its subtree, or one value",
		Long: `With NAME ("@" or "" for the default value), delete that value of KEYPATH;
without, delete KEYPATH and everything below it. Deleting something that
does not exist is an error.`,
		Example: "  layervisor hive delete SOFTWARE 'Vendor\\Old'",
		Args:    cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 {
				return regf.DeleteFileKey(args[0], args[1])
			}
			return regf.DeleteFileValue(args[0], args[1], valueName(args[2]))
		},
	}
}

func newHiveImportCmd() *cobra.Command {
	var opt regtext.Options
	cmd := &cobra.Command{
		Use:   "import HIVE FILE.reg",
		Short: "Apply a Windows .reg file to a hive",
		Long: `Apply a .reg file (regedit version 5 or REGEDIT4, UTF-8 or UTF-16 with a BOM):
[Key] creates the key and sets the values listed under it, [-Key] deletes a
subtree, "name"=- and @=- delete values. Every value form is read: "string",
dword:, hex:, hex(N):, str(N):"...", with \ line continuations.

Key paths are below the hive root; --prefix strips a leading part such as
'HKEY_LOCAL_MACHINE\SOFTWARE' (a key outside it is an error). Nothing is
written unless the whole file applies.`,
		Example: "  layervisor hive import SOFTWARE changes.reg --prefix 'HKEY_LOCAL_MACHINE\\SOFTWARE'",
		Args:    cobra.ExactArgs(2),
		RunE:    func(cmd *cobra.Command, args []string) error { return regtext.ApplyFile(args[0], args[1], opt) },
	}
	cmd.Flags().StringVar(&opt.Prefix, "prefix", "", `key path prefix to strip, e.g. 'HKEY_LOCAL_MACHINE\SOFTWARE'`)
	return cmd
}

func newHiveExportCmd() *cobra.Command {
	var prefix string
	cmd := &cobra.Command{
		Use:   "export HIVE [KEYPATH]",
		Short: "Print a hive (or a subtree) as .reg text",
		Long: `Print KEYPATH (default: the root) and everything below it as .reg text on
stdout, in the dialect of 'hivexregedit --export': keys as [prefix\path],
values sorted by name, DWORDs as dword:, all else as hex(type): bytes. The
output imports back with 'hive import' or 'hivexregedit --merge'.`,
		Example: "  layervisor hive export SOFTWARE 'Microsoft' --prefix 'HKEY_LOCAL_MACHINE\\SOFTWARE' > sw.reg",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, k, err := regf.ReadFileKey(args[0], optArg(args, 1))
			if err != nil {
				return err
			}
			return regtext.Export(os.Stdout, k, prefix)
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", "text printed before every key path")
	return cmd
}

func newHiveMergeCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "merge BASE DELTA OUT",
		Short: "Apply a delta (layered) hive to a base hive",
		Long: `Write OUT = BASE with DELTA applied, as Windows stacks container layer hives:
per delta key, tombstone deletes the base subtree, supersede-tree replaces
it, supersede-local replaces the key's values and class but merges subkeys,
merge overrides values (tombstone values delete them) and merges subkeys;
inherit-class keeps the base class; the newer key time wins.`,
		Example: "  layervisor hive merge parent/Hives/System_Base layer/Hives/System_Delta layer/Hives/System_Base",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return regf.CombineFiles(args[0], args[1], args[2], func(base, delta *regf.Hive) (*regf.Hive, error) {
				if !delta.Layered && !o.quiet {
					fmt.Fprintf(os.Stderr, "warning: %s is not a layered (delta) hive; merging it as one\n", args[1])
				}
				return regf.Merge(base, delta)
			})
		},
	}
}

func newHiveDiffCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "diff BASE TARGET OUT",
		Short: "Write the delta hive that turns BASE into TARGET",
		Long: `Write OUT, a delta hive (version 1.6, layered keys), such that
'hive merge BASE OUT' gives a hive with TARGET's keys, values, classes and
security descriptors. Unchanged keys are left out.`,
		Example: "  layervisor hive diff SYSTEM.orig SYSTEM System_Delta",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return regf.CombineFiles(args[0], args[1], args[2], regf.Diff)
		},
	}
}

func newHiveCimbootCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cimboot SYSTEM",
		Short: "Enable CIM boot in a utility VM's SYSTEM hive",
		Long: `Set the values a utility VM needs to boot from a CIM: BootContainerGuid under
ControlSet001\Control, UnionFS Start=0, wcifs Start=4 and Setup's
BootPathOverride. (The matching BCD device elements are not publicly
documented and are not written.)`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return regf.EditFile(args[0], cimboot.EnableSystemHive)
		},
	}
}

// valueName maps the command line's "@" to the default value's name.
func valueName(s string) string {
	if s == "@" {
		return ""
	}
	return s
}
