package regf

import "math/bits"

// marvin32 is Microsoft's Marvin32 hash (64-bit result, high word from the
// second state variable), which new-format log entries use for integrity.
func marvin32(seed uint64, data []byte) uint64 {
	lo, hi := uint32(seed), uint32(seed>>32)
	mix := func(v uint32) {
		lo += v
		hi ^= lo
		lo = bits.RotateLeft32(lo, 20)
		lo += hi
		hi = bits.RotateLeft32(hi, 9)
		hi ^= lo
		lo = bits.RotateLeft32(lo, 27)
		lo += hi
		hi = bits.RotateLeft32(hi, 19)
	}
	for len(data) >= 4 {
		mix(le.Uint32(data))
		data = data[4:]
	}
	// The last 0–3 bytes are padded with 0x80.
	final := uint32(0x80)
	for i := len(data) - 1; i >= 0; i-- {
		final = final<<8 | uint32(data[i])
	}
	mix(final)
	mix(0)
	return uint64(hi)<<32 | uint64(lo)
}

// logSeed is the Marvin32 seed of registry transaction logs.
const logSeed = 0x82EF4D887A4E55C5
