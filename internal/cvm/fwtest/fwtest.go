// Package fwtest builds small synthetic firmware images with an OVMF footer
// GUID table, SEV metadata and TDX metadata, for tests and fuzz seeds.
//
// It is test support only; nothing in production imports it.
package fwtest

import (
	"encoding/binary"

	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
)

// Size of a synthetic image: 64 KiB, mapped at 4 GiB − 64 KiB.
const Size = 64 << 10

// Where the descriptors live in the image.
const (
	sevAt = 0x1000
	tdxAt = 0x2000
)

// SEV describes SEV metadata to put in an image.
type SEV struct {
	Sections           []ovmf.SEVSection
	HashBase, HashSize uint32
	ResetEIP           uint32
}

// DefaultSEV mirrors edk2 2022.11's AmdSev layout: the hashes table inside
// the second SNP_SEC_MEM range.
func DefaultSEV() SEV {
	return SEV{
		Sections: []ovmf.SEVSection{
			{Base: 0x800000, Size: 0x9000, Type: ovmf.SEVSecMem},
			{Base: 0x80a000, Size: 0x4000, Type: ovmf.SEVSecMem},
			{Base: 0x80e000, Size: 0x1000, Type: ovmf.SEVSecrets},
			{Base: 0x80f000, Size: 0x1000, Type: ovmf.SEVCPUID},
			{Base: 0x810000, Size: 0x10000, Type: ovmf.SEVSecMem},
		},
		HashBase: 0x80a000 + 0xc00, HashSize: 0x400, ResetEIP: 0x80b004,
	}
}

// DefaultTDX is a TDVF-like layout: BFV (measured) and CFV from the image,
// a TD HOB and temporary memory.
func DefaultTDX() []ovmf.TDXSection {
	return []ovmf.TDXSection{
		{DataOffset: 0x8000, RawDataSize: 0x8000, MemoryAddress: ovmf.FourGiB - 0x8000, MemoryDataSize: 0x8000, Type: ovmf.TDXBFV, Attributes: ovmf.TDXExtendMR},
		{DataOffset: 0x4000, RawDataSize: 0x2000, MemoryAddress: ovmf.FourGiB - 0xc000, MemoryDataSize: 0x4000, Type: ovmf.TDXCFV},
		{MemoryAddress: 0x809000, MemoryDataSize: 0x2000, Type: ovmf.TDXTDHOB},
		{MemoryAddress: 0x800000, MemoryDataSize: 0x3000, Type: ovmf.TDXTempMem},
	}
}

// Image builds a synthetic firmware: pseudo-random code bytes, the given
// metadata (either may be nil) and the footer table.
func Image(sev *SEV, tdx []ovmf.TDXSection) []byte {
	b := make([]byte, Size)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	var entries [][]byte // in table order, first = lowest address
	entry := func(g ovmf.GUID, data []byte) {
		e := append(append([]byte(nil), data...), 0, 0)
		binary.LittleEndian.PutUint16(e[len(e)-2:], uint16(len(data)+18))
		entries = append(entries, append(e, g[:]...))
	}
	if tdx != nil {
		// edk2 puts the TDX metadata GUID just before the descriptor
		// (IntelTdxMetadata.asm); td-shim's tools require it.
		g, _ := ovmf.ParseGUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")
		copy(b[tdxAt-16:], g[:])
		d := b[tdxAt:]
		copy(d, "TDVF")
		binary.LittleEndian.PutUint32(d[4:], uint32(16+32*len(tdx)))
		binary.LittleEndian.PutUint32(d[8:], 1)
		binary.LittleEndian.PutUint32(d[12:], uint32(len(tdx)))
		for i, s := range tdx {
			p := d[16+32*i:]
			binary.LittleEndian.PutUint32(p, s.DataOffset)
			binary.LittleEndian.PutUint32(p[4:], s.RawDataSize)
			binary.LittleEndian.PutUint64(p[8:], s.MemoryAddress)
			binary.LittleEndian.PutUint64(p[16:], s.MemoryDataSize)
			binary.LittleEndian.PutUint32(p[24:], s.Type)
			binary.LittleEndian.PutUint32(p[28:], s.Attributes)
		}
		entry(ovmf.TDXMetadataOffsetGUID, binary.LittleEndian.AppendUint32(nil, Size-tdxAt))
	}
	if sev != nil {
		d := b[sevAt:]
		copy(d, "ASEV")
		binary.LittleEndian.PutUint32(d[4:], uint32(16+12*len(sev.Sections)))
		binary.LittleEndian.PutUint32(d[8:], 1)
		binary.LittleEndian.PutUint32(d[12:], uint32(len(sev.Sections)))
		for i, s := range sev.Sections {
			p := d[16+12*i:]
			binary.LittleEndian.PutUint32(p, s.Base)
			binary.LittleEndian.PutUint32(p[4:], s.Size)
			binary.LittleEndian.PutUint32(p[8:], s.Type)
		}
		entry(ovmf.SEVMetadataGUID, binary.LittleEndian.AppendUint32(nil, Size-sevAt))
		entry(ovmf.SEVHashTableGUID, binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, sev.HashBase), sev.HashSize))
		entry(ovmf.SEVESResetBlockGUID, binary.LittleEndian.AppendUint32(nil, sev.ResetEIP))
	}
	var table []byte
	for _, e := range entries {
		table = append(table, e...)
	}
	total := len(table) + 18
	table = binary.LittleEndian.AppendUint16(table, uint16(total))
	table = append(table, ovmf.FooterGUID[:]...)
	copy(b[Size-0x20-len(table):], table)
	return b
}
