package meshd

import "encoding/binary"

// rtnetlink structs are in host byte order.
func nativePutUint32(b []byte, v uint32) { binary.NativeEndian.PutUint32(b, v) }
func nativeUint32(b []byte) uint32       { return binary.NativeEndian.Uint32(b) }
