package bcd

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/layervisor/layervisor/pkg/gpt"
)

// Boot-library device types (the descriptor's first field).
const (
	devPartition = 6
	devVmbus     = 7
	devComposite = 0xA
	devCimfs     = 0xB
)

// Descriptor sizes, header included (16 bytes: type, flags, size, reserved).
const (
	partitionSize = 0x48
	vmbusSize     = 0x20 // INFERRED: header + interface GUID
	compositeSize = 0x2C
	cimfsSize     = 0x30
	cimfsVersion  = 2
)

// EncodeDevice encodes a device element value from a bcdedit-style spec:
//
//	gpt_partition={disk};{partition}
//	vmbus={interface}
//	composite=0,{options}
//	cimfs={volume},{options}
//
// The result is the 16-byte additional-options GUID (zero when there is
// none) followed by the device descriptor. See the package doc for which
// layouts are public and which are third-party or inferred.
func EncodeDevice(spec string) ([]byte, error) {
	kind, arg, ok := strings.Cut(spec, "=")
	if !ok {
		return nil, fmt.Errorf("device %q: want kind=value", spec)
	}
	var options gpt.GUID
	var d []byte
	switch strings.ToLower(kind) {
	case "gpt_partition":
		disk, part, ok := strings.Cut(arg, ";")
		if !ok {
			return nil, fmt.Errorf("device %q: want gpt_partition={disk};{partition}", spec)
		}
		dg, err := parseGUID(spec, disk)
		if err != nil {
			return nil, err
		}
		pg, err := parseGUID(spec, part)
		if err != nil {
			return nil, err
		}
		d = descriptor(devPartition, partitionSize)
		copy(d[0x10:], pg[:])
		binary.LittleEndian.PutUint32(d[0x24:], 0) // partition style: GPT
		copy(d[0x28:], dg[:])
	case "vmbus":
		g, err := parseGUID(spec, arg)
		if err != nil {
			return nil, err
		}
		d = descriptor(devVmbus, vmbusSize)
		copy(d[0x10:], g[:])
	case "composite":
		n, opts, ok := strings.Cut(arg, ",")
		if !ok || n != "0" {
			return nil, fmt.Errorf("device %q: want composite=0,{options} (the meaning of other numbers is not public)", spec)
		}
		g, err := parseGUID(spec, opts)
		if err != nil {
			return nil, err
		}
		options = g
		d = descriptor(devComposite, compositeSize) // signature, version 0, offsets: zero
	case "cimfs":
		vol, opts, ok := strings.Cut(arg, ",")
		if !ok {
			return nil, fmt.Errorf("device %q: want cimfs={volume},{options}", spec)
		}
		vg, err := parseGUID(spec, vol)
		if err != nil {
			return nil, err
		}
		if options, err = parseGUID(spec, opts); err != nil {
			return nil, err
		}
		d = descriptor(devCimfs, cimfsSize)
		binary.LittleEndian.PutUint32(d[0x10:], cimfsVersion)
		copy(d[0x20:], vg[:]) // target mount volume; parent/root-path offsets stay 0
	default:
		return nil, fmt.Errorf("%w: device kind %q", ErrNotPublic, kind)
	}
	return append(options[:], d...), nil
}

func descriptor(typ, size uint32) []byte {
	d := make([]byte, size)
	binary.LittleEndian.PutUint32(d[0:], typ)
	binary.LittleEndian.PutUint32(d[8:], size)
	return d
}

func parseGUID(spec, s string) (gpt.GUID, error) {
	if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") {
		return gpt.GUID{}, fmt.Errorf("device %q: %q is not a {guid}", spec, s)
	}
	g, err := gpt.ParseGUID(s)
	if err != nil {
		return g, fmt.Errorf("device %q: %w", spec, err)
	}
	return g, nil
}
