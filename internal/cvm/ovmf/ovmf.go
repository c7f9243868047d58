// Package ovmf parses what OVMF and TDVF firmware images tell a confidential-VM
// launcher: the GUIDed footer table, SEV metadata, SEV hashes table, SEV-ES reset block and TDX metadata.
//
// It only parses, without I/O; the launch measurements that use these tables
// are computed by internal/cvm/snp and internal/cvm/tdx.
package ovmf

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// PageSize is the granule of every launch operation (SNP_LAUNCH_UPDATE,
// TDH.MEM.PAGE.ADD).
const PageSize = 4096

// FourGiB is where the flash image ends in guest-physical memory: QEMU maps
// the firmware so that its last byte is at 0xffffffff.
const FourGiB = 1 << 32

// MaxImageSize bounds the firmware images accepted (the largest OVMF build
// is 4 MiB; the x86 flash window below 4 GiB is 16 MiB).
const MaxImageSize = 16 << 20

// GUID is an EFI GUID in its byte encoding (first three fields little-endian).
type GUID [16]byte

// ParseGUID reads the textual form 8-4-4-4-12.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("guid %q: want 8-4-4-4-12 hex digits", s)
	}
	raw, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("guid %q: %w", s, err)
	}
	// EFI_GUID: Data1 u32, Data2 u16, Data3 u16 little-endian, Data4 as is.
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g, nil
}

func mustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err) // only for the constants below
	}
	return g
}

func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

// GUIDs of the footer table entries (OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm).
var (
	FooterGUID            = mustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	SEVMetadataGUID       = mustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
	SEVHashTableGUID      = mustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
	SEVSecretGUID         = mustGUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
	SEVESResetBlockGUID   = mustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	TDXMetadataOffsetGUID = mustGUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
)

// ErrMissing says the image has no entry for a GUID: not malformed, just
// not built for that platform.
var ErrMissing = errors.New("not in the firmware's GUID table")

// Image is a parsed firmware flash image.
type Image struct {
	data    []byte
	entries []Entry
}

// Entry is one footer-table entry.
type Entry struct {
	GUID GUID
	Data []byte
}

// footerEnd is where the table ends: 0x20 bytes before the end of the image
// (0xffffffe0: the AP entry point, the VTF signature and the reset vector follow).
const footerEnd = 0x20

// Parse reads the footer GUID table of a firmware image. The table ends 0x20
// bytes before the end; its last entry is the footer (u16 length of the
// whole table, FooterGUID); every entry is data ‖ u16 length ‖ GUID, length
// counting all three, walked backwards from the footer
// (ResetVectorVtf0.asm, "GUIDed structure").
func Parse(b []byte) (*Image, error) {
	if len(b) > MaxImageSize {
		return nil, fmt.Errorf("firmware: %d bytes, more than the %d accepted", len(b), MaxImageSize)
	}
	if len(b)%PageSize != 0 || len(b) == 0 {
		return nil, fmt.Errorf("firmware: size %d is not a positive multiple of %d (a flash image maps whole pages)", len(b), PageSize)
	}
	end := len(b) - footerEnd
	var g GUID
	copy(g[:], b[end-16:end])
	if g != FooterGUID {
		return nil, fmt.Errorf("firmware: no footer GUID table: %s at offset %#x, want %s", g, end-16, FooterGUID)
	}
	total := int(binary.LittleEndian.Uint16(b[end-18 : end-16]))
	if total < 18 || total > end {
		return nil, fmt.Errorf("firmware: footer table length %d out of range [18, %d]", total, end)
	}
	start := end - total
	im := &Image{data: b}
	seen := map[GUID]bool{}
	for pos := end - 18; pos > start; {
		if pos-start < 18 {
			return nil, fmt.Errorf("firmware: footer table entry at %#x: %d bytes left, an entry needs 18", pos, pos-start)
		}
		copy(g[:], b[pos-16:pos])
		n := int(binary.LittleEndian.Uint16(b[pos-18 : pos-16]))
		if n < 18 || n > pos-start {
			return nil, fmt.Errorf("firmware: footer table entry %s: length %d out of range [18, %d]", g, n, pos-start)
		}
		if seen[g] {
			return nil, fmt.Errorf("firmware: footer table entry %s appears twice", g)
		}
		seen[g] = true
		im.entries = append(im.entries, Entry{GUID: g, Data: b[pos-n : pos-18 : pos-18]})
		pos -= n
	}
	return im, nil
}

// Data is the whole image.
func (im *Image) Data() []byte { return im.data }

// GPA is where the image starts in guest-physical memory.
func (im *Image) GPA() uint64 { return FourGiB - uint64(len(im.data)) }

// Entries are the footer-table entries, last (nearest the footer) first.
func (im *Image) Entries() []Entry { return im.entries }

// Entry returns the data of the entry with GUID g.
func (im *Image) Entry(g GUID) ([]byte, error) {
	for _, e := range im.entries {
		if e.GUID == g {
			return e.Data, nil
		}
	}
	return nil, fmt.Errorf("firmware: %s: %w", g, ErrMissing)
}

func (im *Image) u32Entry(g GUID, name string, n int) ([]byte, error) {
	d, err := im.Entry(g)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(d) < n {
		return nil, fmt.Errorf("%s: entry %s has %d bytes of data, want %d", name, g, len(d), n)
	}
	return d, nil
}

// descriptor locates a metadata descriptor: the entry holds a u32 offset
// counted back from the end of the image.
func (im *Image) descriptor(g GUID, name string) (int, error) {
	d, err := im.u32Entry(g, name, 4)
	if err != nil {
		return 0, err
	}
	off := binary.LittleEndian.Uint32(d)
	if off < 16 || uint64(off) > uint64(len(im.data)) {
		return 0, fmt.Errorf("%s: descriptor offset %#x from the end out of range [16, %#x]", name, off, len(im.data))
	}
	return len(im.data) - int(off), nil
}

// SEV section types (OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm; newer edk2
// and QEMU's target/i386/sev.c add SVSM_CAA and KERNEL_HASHES).
const (
	SEVSecMem       uint32 = 1
	SEVSecrets      uint32 = 2
	SEVCPUID        uint32 = 3
	SEVSVSMCAA      uint32 = 4
	SEVKernelHashes uint32 = 0x10
)

// SEVSection is one "ASEV" section: a guest-physical range and what the
// launcher must put there.
type SEVSection struct {
	Base, Size uint32
	Type       uint32
}

// maxSections bounds the sections of either metadata table.
const maxSections = 256

// sectionTable reads the header both metadata descriptors share: a 4-byte
// signature, u32 length, u32 version (1), u32 count, then count entries of
// entrySize bytes, all within length and the image. It returns the table
// (from the signature on) and the count.
func (im *Image) sectionTable(g GUID, name, sig string, entrySize uint64) ([]byte, uint32, error) {
	at, err := im.descriptor(g, name)
	if err != nil {
		return nil, 0, err
	}
	b := im.data[at:]
	if string(b[:4]) != sig {
		return nil, 0, fmt.Errorf("%s: signature %q at %#x, want %q", name, b[:4], at, sig)
	}
	length := binary.LittleEndian.Uint32(b[4:])
	version := binary.LittleEndian.Uint32(b[8:])
	count := binary.LittleEndian.Uint32(b[12:])
	if version != 1 {
		return nil, 0, fmt.Errorf("%s: version %d, want 1", name, version)
	}
	if count == 0 || count > maxSections {
		return nil, 0, fmt.Errorf("%s: %d sections, want 1..%d", name, count, maxSections)
	}
	if need := 16 + entrySize*uint64(count); uint64(length) < need || uint64(length) > uint64(len(b)) {
		return nil, 0, fmt.Errorf("%s: length %d, want at least %d (for %d sections) and at most %d (the image's end)", name, length, need, count, len(b))
	}
	return b, count, nil
}

// SEVMetadata reads the "ASEV" descriptor: signature, u32 length, u32
// version (1), u32 count, then count × {u32 base, u32 size, u32 type}.
func (im *Image) SEVMetadata() ([]SEVSection, error) {
	const name = "sev metadata"
	b, count, err := im.sectionTable(SEVMetadataGUID, name, "ASEV", 12)
	if err != nil {
		return nil, err
	}
	out := make([]SEVSection, count)
	for i := range out {
		p := b[16+12*i:]
		s := SEVSection{Base: binary.LittleEndian.Uint32(p), Size: binary.LittleEndian.Uint32(p[4:]), Type: binary.LittleEndian.Uint32(p[8:])}
		switch s.Type {
		case SEVSecMem, SEVSecrets, SEVCPUID, SEVSVSMCAA, SEVKernelHashes:
		default:
			return nil, fmt.Errorf("%s: section %d: unknown type %#x", name, i, s.Type)
		}
		if s.Size == 0 || s.Base%PageSize != 0 || s.Size%PageSize != 0 {
			return nil, fmt.Errorf("%s: section %d (type %#x): base %#x size %#x, want whole pages", name, i, s.Type, s.Base, s.Size)
		}
		if uint64(s.Base)+uint64(s.Size) > FourGiB {
			return nil, fmt.Errorf("%s: section %d: base %#x + size %#x beyond 4 GiB", name, i, s.Base, s.Size)
		}
		out[i] = s
	}
	return out, nil
}

// SEVHashTable returns where the launcher puts the table of kernel, initrd
// and cmdline hashes: {u32 base, u32 size}.
func (im *Image) SEVHashTable() (base, size uint32, err error) {
	const name = "sev hashes table"
	d, err := im.u32Entry(SEVHashTableGUID, name, 8)
	if err != nil {
		return 0, 0, err
	}
	base, size = binary.LittleEndian.Uint32(d), binary.LittleEndian.Uint32(d[4:])
	if base == 0 || size == 0 {
		return 0, 0, fmt.Errorf("%s: base %#x size %#x: the firmware reserves no room for it (not an AmdSev build)", name, base, size)
	}
	if uint64(base%PageSize)+uint64(size) > PageSize {
		return 0, 0, fmt.Errorf("%s: base %#x size %#x crosses a page", name, base, size)
	}
	return base, size, nil
}

// SEVESResetEIP is the AP reset address from the SEV-ES reset block: {u16 IP,
// u16 CS base >> 16} as one u32 the launcher uses as EIP (CS base = EIP &
// 0xffff0000, IP = EIP & 0xffff).
func (im *Image) SEVESResetEIP() (uint32, error) {
	d, err := im.u32Entry(SEVESResetBlockGUID, "sev-es reset block", 4)
	if err != nil {
		return 0, err
	}
	eip := binary.LittleEndian.Uint32(d)
	if eip == 0 {
		return 0, errors.New("sev-es reset block: reset address is zero")
	}
	return eip, nil
}

// TDX metadata section types and attributes (TDX Virtual Firmware Design
// Guide §11.3, Table 11-2/11-3; OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm).
const (
	TDXBFV          uint32 = 0
	TDXCFV          uint32 = 1
	TDXTDHOB        uint32 = 2
	TDXTempMem      uint32 = 3
	TDXPermMem      uint32 = 4
	TDXPayload      uint32 = 5
	TDXPayloadParam uint32 = 6

	TDXExtendMR uint32 = 1 << 0
	TDXPageAug  uint32 = 1 << 1
)

// TDXSection is one TDVF section.
type TDXSection struct {
	DataOffset, RawDataSize       uint32
	MemoryAddress, MemoryDataSize uint64
	Type, Attributes              uint32
}

// TDXMetadata reads the "TDVF" descriptor (TDVF Design Guide §11.2): signature,
// u32 length, u32 version (1), u32 count, then count × 32-byte sections
// {u32 DataOffset, u32 RawDataSize, u64 MemoryAddress, u64 MemoryDataSize,
// u32 Type, u32 Attributes}. Sections are checked as §11.3 and QEMU's
// hw/i386/tdvf.c require.
func (im *Image) TDXMetadata() ([]TDXSection, error) {
	const name = "tdx metadata"
	b, count, err := im.sectionTable(TDXMetadataOffsetGUID, name, "TDVF", 32)
	if err != nil {
		return nil, err
	}
	out := make([]TDXSection, count)
	bfv := false
	for i := range out {
		p := b[16+32*i:]
		s := TDXSection{
			DataOffset: binary.LittleEndian.Uint32(p), RawDataSize: binary.LittleEndian.Uint32(p[4:]),
			MemoryAddress: binary.LittleEndian.Uint64(p[8:]), MemoryDataSize: binary.LittleEndian.Uint64(p[16:]),
			Type: binary.LittleEndian.Uint32(p[24:]), Attributes: binary.LittleEndian.Uint32(p[28:]),
		}
		if err := s.check(len(im.data)); err != nil {
			return nil, fmt.Errorf("%s: section %d: %w", name, i, err)
		}
		bfv = bfv || s.Type == TDXBFV
		out[i] = s
	}
	if !bfv {
		return nil, fmt.Errorf("%s: no BFV section (the firmware code)", name)
	}
	return out, nil
}

func (s TDXSection) check(imageLen int) error {
	if s.Type > TDXPayloadParam {
		return fmt.Errorf("unknown type %d", s.Type)
	}
	if s.Attributes&^(TDXExtendMR|TDXPageAug) != 0 {
		return fmt.Errorf("type %d: unknown attributes %#x", s.Type, s.Attributes)
	}
	if s.Attributes == TDXExtendMR|TDXPageAug {
		return fmt.Errorf("type %d: EXTENDMR with PAGE_AUG: a page added after launch cannot be in MRTD", s.Type)
	}
	// A measured section's memory is its data: QEMU and td-shim's tools
	// read MemoryDataSize bytes from the image, so any difference between
	// the sizes would be read differently by different VMMs.
	if s.Attributes&TDXExtendMR != 0 && uint64(s.RawDataSize) != s.MemoryDataSize {
		return fmt.Errorf("type %d: EXTENDMR with raw data %#x bytes but memory %#x: a measured section must be all data", s.Type, s.RawDataSize, s.MemoryDataSize)
	}
	if s.MemoryDataSize == 0 || s.MemoryAddress%PageSize != 0 || s.MemoryDataSize%PageSize != 0 {
		return fmt.Errorf("type %d: memory %#x size %#x, want whole pages", s.Type, s.MemoryAddress, s.MemoryDataSize)
	}
	if s.MemoryAddress+s.MemoryDataSize < s.MemoryAddress || s.MemoryAddress+s.MemoryDataSize > 1<<52 {
		return fmt.Errorf("type %d: memory %#x size %#x beyond the 52-bit guest-physical space", s.Type, s.MemoryAddress, s.MemoryDataSize)
	}
	if uint64(s.RawDataSize) > s.MemoryDataSize {
		return fmt.Errorf("type %d: raw data %#x bytes larger than its memory %#x", s.Type, s.RawDataSize, s.MemoryDataSize)
	}
	if uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(imageLen) {
		return fmt.Errorf("type %d: data %#x+%#x beyond the image (%#x bytes)", s.Type, s.DataOffset, s.RawDataSize, imageLen)
	}
	switch s.Type {
	case TDXBFV, TDXCFV:
		if s.RawDataSize == 0 {
			return fmt.Errorf("type %d (firmware volume): no raw data", s.Type)
		}
		if s.Attributes&TDXPageAug != 0 {
			return fmt.Errorf("type %d (firmware volume): PAGE_AUG on a volume that must be added with its data", s.Type)
		}
	case TDXTDHOB, TDXTempMem, TDXPermMem:
		if s.RawDataSize != 0 || s.DataOffset != 0 {
			return fmt.Errorf("type %d (memory): raw data %#x+%#x, want none", s.Type, s.DataOffset, s.RawDataSize)
		}
		if s.Attributes&TDXExtendMR != 0 {
			return fmt.Errorf("type %d (memory): EXTENDMR on a section without data", s.Type)
		}
		if s.Type == TDXPermMem && s.Attributes&TDXPageAug == 0 {
			return fmt.Errorf("type %d (permanent memory): want PAGE_AUG", s.Type)
		}
	}
	return nil
}
