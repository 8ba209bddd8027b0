// Package cimlayer imports Windows container layer tars as CimFS layers, the
// way hcsshim's CIM layer writer lays them out, and exports them again.
//
// A layer is two things:
//
//   - a forked CIM (<cim-dir>/<name>.cim plus its region_* and objectid_*
//     files): the merged view of this layer over its parents, with the tar's
//     top-level trees kept as they are (Files\..., Hives\...,
//     UtilityVM\Files\...) and a root file "layout";
//   - the layer folder, which holds only the "std files" as ordinary files:
//     the config hives (Files/Windows/System32/config/{SYSTEM,SOFTWARE,SAM,
//     SECURITY,DEFAULT}), everything under Hives/, the utility VM's SYSTEM and
//     SOFTWARE hives, BCD store and bootmgfw.efi. The same bytes are in the CIM.
//
// A base layer (no parents) gets Hives/<NAME>_BASE as hard links to its config
// hives (DEFAULT → DEFAULTUSER_BASE) and the file layout ("vhd-with-hives\n"),
// on disk and in the CIM. A base layer may not delete anything (whiteouts) nor
// carry Hives/ of its own. A non-base layer gets, for each Hives/<X>_Delta it
// carries, Hives/<X>_BASE = regf.Merge(nearest ancestor's <X>_BASE, delta), on
// disk and in the CIM; a delta no ancestor has a base for is an error.
// Whiteouts remove names from the fork (a name already absent is not an
// error); alternate streams and hard links go into the CIM; security
// descriptors, EAs and reparse buffers go in as the tar gives them, with
// hcsshim's NULL-DACL descriptor for entries that have none.
//
// Import fails cleanly: on any error (bad entry, cancelled context, I/O) the
// layer folder, the .cim and its region and objectid files are all gone.
//
// Export writes a layer tar back from a CIM: the whole tree for a base layer,
// the differences from the parent's CIM (changed and new entries, whiteouts for
// deleted names) for a fork. Generated files (layout, Hives/*_BASE) are left
// out, so importing the export gives the same CIM tree and metadata.
package cimlayer
