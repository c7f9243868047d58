package cvm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/cvmport"
	"github.com/palisade-cc/palisade/internal/cvm/firmware"
	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
	"github.com/palisade-cc/palisade/internal/measure"
)

// noise fills n bytes deterministically (xorshift32).
func noise(n int, seed uint32) []byte {
	b := make([]byte, n)
	x := seed | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// synthFirmware is a 64 KiB image mapped at 4 GiB − 64 KiB with an OVMF
// footer GUID table (ResetVectorVtf0.asm), SEV metadata laid out like edk2
// 2022.11's AmdSev (the kernel-hashes table inside an SNP_SEC_MEM range), an
// SEV-ES reset block, and TDVF metadata (TDVF Design Guide §11) with a
// measured BFV, a CFV, a TD HOB and temporary memory.
func synthFirmware(seed uint32) []byte {
	const size, sevAt, tdxAt = 64 << 10, 0x1000, 0x2000
	b := noise(size, seed)
	le := binary.LittleEndian
	// "ASEV": u32 length, u32 version, u32 count, {base, size, type}.
	sev := [][3]uint32{{0x800000, 0x9000, ovmf.SEVSecMem}, {0x80a000, 0x4000, ovmf.SEVSecMem},
		{0x80e000, 0x1000, ovmf.SEVSecrets}, {0x80f000, 0x1000, ovmf.SEVCPUID}}
	d := b[sevAt:]
	copy(d, "ASEV")
	le.PutUint32(d[4:], uint32(16+12*len(sev)))
	le.PutUint32(d[8:], 1)
	le.PutUint32(d[12:], uint32(len(sev)))
	for i, s := range sev {
		for j, v := range s {
			le.PutUint32(d[16+12*i+4*j:], v)
		}
	}
	// "TDVF": u32 length, u32 version, u32 count, 32-byte sections.
	tdx := []ovmf.TDXSection{
		{DataOffset: 0x8000, RawDataSize: 0x8000, MemoryAddress: ovmf.FourGiB - 0x8000, MemoryDataSize: 0x8000, Type: ovmf.TDXBFV, Attributes: ovmf.TDXExtendMR},
		{DataOffset: 0x4000, RawDataSize: 0x2000, MemoryAddress: ovmf.FourGiB - 0xc000, MemoryDataSize: 0x4000, Type: ovmf.TDXCFV},
		{MemoryAddress: 0x809000, MemoryDataSize: 0x2000, Type: ovmf.TDXTDHOB},
		{MemoryAddress: 0x800000, MemoryDataSize: 0x3000, Type: ovmf.TDXTempMem},
	}
	tdxGUID, _ := ovmf.ParseGUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae") // precedes the descriptor in edk2
	copy(b[tdxAt-16:], tdxGUID[:])
	d = b[tdxAt:]
	copy(d, "TDVF")
	le.PutUint32(d[4:], uint32(16+32*len(tdx)))
	le.PutUint32(d[8:], 1)
	le.PutUint32(d[12:], uint32(len(tdx)))
	for i, s := range tdx {
		p := d[16+32*i:]
		le.PutUint32(p, s.DataOffset)
		le.PutUint32(p[4:], s.RawDataSize)
		le.PutUint64(p[8:], s.MemoryAddress)
		le.PutUint64(p[16:], s.MemoryDataSize)
		le.PutUint32(p[24:], s.Type)
		le.PutUint32(p[28:], s.Attributes)
	}
	// Footer table, walked backwards from the footer: data ‖ u16 len ‖ GUID.
	var table []byte
	add := func(g ovmf.GUID, data []byte) {
		table = append(table, data...)
		table = le.AppendUint16(table, uint16(len(data)+18))
		table = append(table, g[:]...)
	}
	u32 := func(v ...uint32) (o []byte) {
		for _, x := range v {
			o = le.AppendUint32(o, x)
		}
		return o
	}
	add(ovmf.TDXMetadataOffsetGUID, u32(size-tdxAt))
	add(ovmf.SEVMetadataGUID, u32(size-sevAt))
	add(ovmf.SEVHashTableGUID, u32(0x80a000+0xc00, 0x400))
	add(ovmf.SEVESResetBlockGUID, u32(0x80b004))
	table = le.AppendUint16(table, uint16(len(table)+18))
	table = append(table, ovmf.FooterGUID[:]...)
	copy(b[size-0x20-len(table):], table)
	return b
}

type peSection struct {
	name string
	data []byte
}

// testPE is a minimal PE32+ image (PE/COFF §3-4): MZ stub, COFF header,
// optional header with 16 data directories, sections file-aligned to 0x200
// and page-aligned in memory with VirtualSize = the data's size.
func testPE(secs []peSection) []byte {
	const lfanew, optSize, hdrs = 0x40, 240, 0x400
	le := binary.LittleEndian
	b := make([]byte, hdrs)
	copy(b, "MZ")
	le.PutUint32(b[0x3c:], lfanew)
	copy(b[lfanew:], "PE\x00\x00")
	coff := lfanew + 4
	le.PutUint16(b[coff:], 0x8664)
	le.PutUint16(b[coff+2:], uint16(len(secs)))
	le.PutUint16(b[coff+16:], optSize)
	opt := coff + 20
	le.PutUint16(b[opt:], 0x20b)
	le.PutUint32(b[opt+32:], 0x1000) // SectionAlignment
	le.PutUint32(b[opt+36:], 0x200)  // FileAlignment
	le.PutUint32(b[opt+60:], hdrs)   // SizeOfHeaders
	le.PutUint32(b[opt+108:], 16)    // NumberOfRvaAndSizes
	va := uint32(0x1000)
	for i, s := range secs {
		h := b[opt+optSize+40*i:]
		copy(h[:8], s.name)
		raw := (len(s.data) + 0x1ff) &^ 0x1ff
		le.PutUint32(h[8:], uint32(len(s.data)))
		le.PutUint32(h[12:], va)
		le.PutUint32(h[16:], uint32(raw))
		le.PutUint32(h[20:], uint32(len(b)))
		b = append(b, s.data...)
		b = append(b, make([]byte, raw-len(s.data))...)
		va += (uint32(len(s.data)) + 0xfff) &^ 0xfff
	}
	le.PutUint32(b[opt+56:], va) // SizeOfImage
	return b
}

// synthUKI is a UKI whose .linux is itself a PE (Authenticode of the inner
// kernel enters RTMR1 with Secure Boot off) and whose .initrd is seeded.
func synthUKI(initrdSeed uint32) []byte {
	kernel := testPE([]peSection{{".text", noise(0x3000, 7)}})
	return testPE([]peSection{
		{".osrel", []byte("ID=palisade\n")},
		{".cmdline", []byte("console=ttyS0 panic=-1 rdinit=/init")},
		{".initrd", noise(0x2800, initrdSeed)},
		{".linux", kernel},
	})
}

// flipInitrd changes one byte of the .initrd section of the UKI file at path.
func flipInitrd(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := measure.ParsePE(b)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Section(".initrd")
	if s == nil {
		t.Fatal("no .initrd")
	}
	b[s.PointerToRawData+5] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// artifacts are the files one test launch uses.
type artifacts struct {
	name             string // "synthetic" or "built"
	snpFW, tdxFW     string
	uki, otherInitrd string // the UKI and one differing only in .initrd
}

// testArtifacts returns the synthetic set always and, when this checkout has
// built them, the pinned firmware of scripts/firmware.sh (out/firmware) with
// the synthetic UKIs.
func testArtifacts(t *testing.T) []artifacts {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	uki, other := write("palisade.efi", synthUKI(11)), write("other.efi", synthUKI(12))
	fw := write("synthetic.fd", synthFirmware(3))
	sets := []artifacts{{name: "synthetic", snpFW: fw, tdxFW: fw, uki: uki, otherInitrd: other}}
	dirs, _ := filepath.Glob("../../out/firmware/*")
	for _, d := range dirs {
		s, err1 := firmware.Load(d, string(attest.PlatformSNP))
		x, err2 := firmware.Load(d, string(attest.PlatformTDX))
		if err1 != nil || err2 != nil {
			continue
		}
		sets = append(sets, artifacts{name: "built", snpFW: write("OVMF.amdsev.fd", s), tdxFW: write("OVMF.inteltdx.fd", x),
			uki: uki, otherInitrd: other})
		// With the image built too (make image), the real UKI, and a
		// copy of it with one initrd byte changed.
		if b, err := os.ReadFile("../../out/image/production/palisade.efi"); err == nil {
			last := sets[len(sets)-1]
			last.name, last.uki, last.otherInitrd = "built-uki", write("built.efi", b), write("built-other.efi", b)
			flipInitrd(t, last.otherInitrd)
			sets = append(sets, last)
		}
		break
	}
	t.Logf("artifact sets: %d (built firmware present: %v, built UKI: %v)", len(sets), len(sets) > 1, len(sets) > 2)
	return sets
}

// connect starts e on a unix socket and returns a guest client speaking to it
// the way the guest's port does.
func connect(t *testing.T, e *Emulator) *cvmport.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cvm.sock")
	if err := e.Listen(sock); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx) }()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cvmport.NewClient(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
	return c
}

func netDial(sock string) (net.Conn, error) { return net.Dial("unix", sock) }

// lockedWriter lets the test read what the emulator's goroutines log.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// newTextLogger logs into a buffer; the returned function reads it.
func newTextLogger() (*slog.Logger, func() string) {
	var b bytes.Buffer
	l := &lockedWriter{w: &b}
	return slog.New(slog.NewTextHandler(l, nil)), func() string {
		l.mu.Lock()
		defer l.mu.Unlock()
		return b.String()
	}
}
