// Package cimboot applies the registry edits that let a Windows utility VM
// boot from a CIM (composite image) instead of a VHD.
package cimboot

import (
	"fmt"

	"github.com/layervisor/layervisor/pkg/regf"
)

// BootContainerGUID names the boot container the UVM's CIM boot uses.
const BootContainerGUID = "{b890454c-80de-4e98-a7ab-56b74b4fbd0c}"

// Edit is one value the CIM-boot edit sets.
type Edit struct {
	Key, Value string
	Type       regf.ValueType
	Data       []byte
}

// SystemHiveEdits are the values set in the utility VM's SYSTEM hive:
// the boot container, the UnionFS driver on at boot, the wcifs filter off,
// and the boot path override.
func SystemHiveEdits() []Edit {
	return []Edit{
		{`ControlSet001\Control`, "BootContainerGuid", regf.RegSZ, regf.StringData(BootContainerGUID)},
		{`ControlSet001\Services\UnionFS`, "Start", regf.RegDWord, regf.DWordData(0)},
		{`ControlSet001\Services\wcifs`, "Start", regf.RegDWord, regf.DWordData(4)},
		{`Setup`, "BootPathOverride", regf.RegSZ, regf.StringData(`\Windows\`)},
	}
}

// EnableSystemHive applies SystemHiveEdits to a SYSTEM hive, creating keys
// that are missing. It is idempotent.
func EnableSystemHive(h *regf.Hive) error {
	for _, e := range SystemHiveEdits() {
		k, err := h.CreateKey(e.Key)
		if err != nil {
			return fmt.Errorf("cim boot: key %s: %w", e.Key, err)
		}
		if err := k.SetValue(e.Value, e.Type, e.Data); err != nil {
			return fmt.Errorf("cim boot: %s\\%s: %w", e.Key, e.Value, err)
		}
	}
	return nil
}
