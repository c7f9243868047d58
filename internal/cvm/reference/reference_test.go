package reference

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/cvm/firmware"
	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
	"github.com/palisade-cc/palisade/internal/cvm/snp"
	"github.com/palisade-cc/palisade/internal/cvm/tdx"
)

// noise fills n bytes deterministically (xorshift32).
func noise(n int, seed uint32) []byte {
	b := make([]byte, n)
	x := seed
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

type peSection struct {
	name string
	data []byte
}

// testPE builds a minimal PE32+ image (PE/COFF §3, §4): DOS stub pointing
// at the PE header, 16 data directories, sections file-aligned to 0x200
// and page-aligned in memory, VirtualSize = the data's size.
func testPE(t testing.TB, secs []peSection) []byte {
	t.Helper()
	const lfanew, optSize, hdrs = 0x40, 240, 0x400
	b := make([]byte, hdrs)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], lfanew)
	copy(b[lfanew:], "PE\x00\x00")
	coff := lfanew + 4
	binary.LittleEndian.PutUint16(b[coff:], 0x8664)
	binary.LittleEndian.PutUint16(b[coff+2:], uint16(len(secs)))
	binary.LittleEndian.PutUint16(b[coff+16:], optSize)
	opt := coff + 20
	binary.LittleEndian.PutUint16(b[opt:], 0x20b)
	binary.LittleEndian.PutUint32(b[opt+32:], 0x1000)
	binary.LittleEndian.PutUint32(b[opt+36:], 0x200)
	binary.LittleEndian.PutUint32(b[opt+60:], hdrs)
	binary.LittleEndian.PutUint32(b[opt+108:], 16)
	va := uint32(0x1000)
	for i, s := range secs {
		h := b[opt+optSize+40*i:]
		copy(h[:8], s.name)
		raw := (len(s.data) + 0x1ff) &^ 0x1ff
		binary.LittleEndian.PutUint32(h[8:], uint32(len(s.data)))
		binary.LittleEndian.PutUint32(h[12:], va)
		binary.LittleEndian.PutUint32(h[16:], uint32(raw))
		binary.LittleEndian.PutUint32(h[20:], uint32(len(b)))
		b = append(b, s.data...)
		b = append(b, make([]byte, raw-len(s.data))...)
		va += (uint32(len(s.data)) + 0xfff) &^ 0xfff
	}
	binary.LittleEndian.PutUint32(b[opt+56:], va)
	return b
}

// testFirmware builds a 64 KiB firmware with an OVMF footer table, SEV
// metadata like edk2 2022.11's AmdSev (hashes table inside an SNP_SEC_MEM
// range), an SEV-ES reset block and TDVF metadata (TDVF Design Guide §11).
func testFirmware(seed uint32) []byte {
	const size, sevAt, tdxAt = 64 << 10, 0x1000, 0x2000
	b := noise(size, seed)
	var table []byte
	entry := func(g ovmf.GUID, data []byte) {
		table = append(table, data...)
		table = binary.LittleEndian.AppendUint16(table, uint16(len(data)+18))
		table = append(table, g[:]...)
	}
	le32 := func(v ...uint32) []byte {
		var o []byte
		for _, x := range v {
			o = binary.LittleEndian.AppendUint32(o, x)
		}
		return o
	}
	// TDVF descriptor, preceded by its GUID as IntelTdxMetadata.asm does.
	g, _ := ovmf.ParseGUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")
	copy(b[tdxAt-16:], g[:])
	tsecs := []ovmf.TDXSection{
		{DataOffset: 0x8000, RawDataSize: 0x8000, MemoryAddress: ovmf.FourGiB - 0x8000, MemoryDataSize: 0x8000, Type: ovmf.TDXBFV, Attributes: ovmf.TDXExtendMR},
		{DataOffset: 0x4000, RawDataSize: 0x2000, MemoryAddress: ovmf.FourGiB - 0xc000, MemoryDataSize: 0x4000, Type: ovmf.TDXCFV},
		{MemoryAddress: 0x809000, MemoryDataSize: 0x2000, Type: ovmf.TDXTDHOB},
		{MemoryAddress: 0x800000, MemoryDataSize: 0x3000, Type: ovmf.TDXTempMem},
	}
	d := append([]byte("TDVF"), le32(uint32(16+32*len(tsecs)), 1, uint32(len(tsecs)))...)
	for _, s := range tsecs {
		d = append(d, le32(s.DataOffset, s.RawDataSize)...)
		d = binary.LittleEndian.AppendUint64(d, s.MemoryAddress)
		d = binary.LittleEndian.AppendUint64(d, s.MemoryDataSize)
		d = append(d, le32(s.Type, s.Attributes)...)
	}
	copy(b[tdxAt:], d)
	entry(ovmf.TDXMetadataOffsetGUID, le32(size-tdxAt))
	ssecs := [][3]uint32{{0x800000, 0x9000, ovmf.SEVSecMem}, {0x80a000, 0x4000, ovmf.SEVSecMem},
		{0x80e000, 0x1000, ovmf.SEVSecrets}, {0x80f000, 0x1000, ovmf.SEVCPUID}, {0x810000, 0x10000, ovmf.SEVSecMem}}
	d = append([]byte("ASEV"), le32(uint32(16+12*len(ssecs)), 1, uint32(len(ssecs)))...)
	for _, s := range ssecs {
		d = append(d, le32(s[0], s[1], s[2])...)
	}
	copy(b[sevAt:], d)
	entry(ovmf.SEVMetadataGUID, le32(size-sevAt))
	entry(ovmf.SEVHashTableGUID, le32(0x80ac00, 0x400))
	entry(ovmf.SEVESResetBlockGUID, le32(0x80b004))
	table = binary.LittleEndian.AppendUint16(table, uint16(len(table)+18))
	table = append(table, ovmf.FooterGUID[:]...)
	copy(b[size-0x20-len(table):], table)
	return b
}

type testImage struct {
	kernel, initrd []byte
	cmdline        string
	uki            []byte
}

func newTestImage(t testing.TB, cmdline string) testImage {
	t.Helper()
	ti := testImage{kernel: testPE(t, []peSection{{".text", noise(5000, 7)}}), initrd: noise(3000, 11), cmdline: cmdline}
	ti.uki = testPE(t, []peSection{{".text", noise(700, 3)}, {".osrel", []byte("ID=palisade\n")},
		{".cmdline", []byte(cmdline)}, {".initrd", ti.initrd}, {".linux", ti.kernel}})
	return ti
}

func testTDXBoot(shape string) TDXBoot {
	return TDXBoot{Shape: shape, Reference: attest.TDXReference{
		RTMR:         [4]attest.HexBytes{bytes.Repeat([]byte{0xa0}, 48)},
		TDAttributes: make([]byte, 8), XFAM: []byte{0xe7, 0x02, 0x06, 0, 0, 0, 0, 0},
		SeptVEDisable: true, MinTEETCBSVN: make([]byte, 16)}}
}

func TestCVMReferences(t *testing.T) {
	ti := newTestImage(t, "console=ttyS0 panic=-1 rdinit=/init")
	fw := Firmware{SNP: testFirmware(1), TDX: testFirmware(2)}
	refs, missing, err := CVMReferences(ti.uki, CVMOptions{Image: "production", Firmware: fw, Shapes: Shapes,
		SNP: attest.SNPReference{Product: "Milan"}, TDXBoots: []TDXBoot{testTDXBoot("1cpu-epyc-v4")}})
	if err != nil {
		t.Fatal(err)
	}
	var want []attest.Reference
	for _, sh := range Shapes {
		// Independently of the UKI: the files the build put into it.
		m, err := snp.Compute(snp.Input{Firmware: fw.SNP, Boot: &snp.Boot{Kernel: ti.kernel, Initrd: ti.initrd, Cmdline: ti.cmdline},
			VCPUs: sh.VCPUs, VCPUType: sh.VCPUType, GuestFeatures: sh.GuestFeatures})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, attest.Reference{Profile: SNPProfile(fw.SNP, sh.Name, "production"), Platform: attest.PlatformSNP,
			SNP: &attest.SNPReference{Product: "Milan", Measurement: m}})
	}
	mrtd, err := tdx.MRTD(fw.TDX)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := tdx.RTMR1Events(ti.uki, false)
	if err != nil {
		t.Fatal(err)
	}
	tb := testTDXBoot("1cpu-epyc-v4").Reference
	tb.MRTD = mrtd
	tb.RTMR[1] = tdx.Replay(ev...)
	tb.RTMR[2] = make([]byte, 48) // nothing in this image measures through CC
	tb.RTMR[3] = make([]byte, 48)
	want = append(want, attest.Reference{Profile: TDXProfile(fw.TDX, "1cpu-epyc-v4", false, "production"), Platform: attest.PlatformTDX, TDX: &tb})
	if d := cmp.Diff(want, refs); d != "" {
		t.Errorf("references (-want +got):\n%s", d)
	}
	if bytes.Equal(refs[0].SNP.Measurement, refs[1].SNP.Measurement) {
		t.Error("1 and 4 vCPU shapes have the same launch digest")
	}
	for _, r := range refs {
		if err := r.Validate(); err != nil {
			t.Error(err)
		}
	}
	if len(missing) != 1 || !strings.Contains(missing[0], "4cpu-epyc-v4") || !strings.Contains(missing[0], "rtmr[0]") {
		t.Errorf("missing = %q, want the 4-vCPU TDX shape naming rtmr[0]", missing)
	}
	wantNames := []string{"sev-snp-ovmf-", "-1cpu-epyc-v4-production", "tdx-tdvf-", "-1cpu-epyc-v4-sb-off-production"}
	if p := refs[0].Profile; !strings.HasPrefix(p, wantNames[0]) || !strings.HasSuffix(p, wantNames[1]) {
		t.Errorf("snp profile %q", p)
	}
	if p := refs[2].Profile; !strings.HasPrefix(p, wantNames[2]) || !strings.HasSuffix(p, wantNames[3]) {
		t.Errorf("tdx profile %q", p)
	}
}

// TestCVMReferencesNoTDXBoot: without reference-boot values no TDX profile
// is produced (none is invented), and each shape is reported.
func TestCVMReferencesNoTDXBoot(t *testing.T) {
	ti := newTestImage(t, "console=ttyS0")
	refs, missing, err := CVMReferences(ti.uki, CVMOptions{Image: "debug", Shapes: Shapes,
		Firmware: Firmware{SNP: testFirmware(1), TDX: testFirmware(2)}, SNP: attest.SNPReference{Product: "Genoa"}})
	if err != nil {
		t.Fatal(err)
	}
	var plats []attest.Platform
	for _, r := range refs {
		plats = append(plats, r.Platform)
	}
	if d := cmp.Diff([]attest.Platform{attest.PlatformSNP, attest.PlatformSNP}, plats); d != "" {
		t.Errorf("platforms (-want +got):\n%s", d)
	}
	if len(missing) != len(Shapes) {
		t.Errorf("missing = %q, want one per shape", missing)
	}
}

// TestCVMSensitivity: one byte of kernel, initrd, cmdline or firmware
// changes the SEV-SNP digest; the UKI changes RTMR1, the firmware MRTD.
func TestCVMSensitivity(t *testing.T) {
	base := newTestImage(t, "console=ttyS0 a")
	opts := func(fw Firmware) CVMOptions {
		return CVMOptions{Image: "production", Firmware: fw, Shapes: Shapes[:1], SNP: attest.SNPReference{Product: "Milan"},
			TDXBoots: []TDXBoot{testTDXBoot(Shapes[0].Name)}}
	}
	fw := Firmware{SNP: testFirmware(1), TDX: testFirmware(2)}
	ref, _, err := CVMReferences(base.uki, opts(fw))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
	kernel := newTestImage(t, "console=ttyS0 a")
	kernel.kernel = flip(kernel.kernel, 0x500)
	initrd := newTestImage(t, "console=ttyS0 a")
	initrd.initrd = flip(initrd.initrd, 10)
	for name, c := range map[string]struct {
		uki               []byte
		fw                Firmware
		sameSNP, sameMRTD bool
		sameRTMR1         bool
	}{
		"kernel":       {uki: testPE(t, []peSection{{".text", noise(700, 3)}, {".osrel", []byte("ID=palisade\n")}, {".cmdline", []byte(base.cmdline)}, {".initrd", base.initrd}, {".linux", kernel.kernel}}), fw: fw, sameMRTD: true},
		"initrd":       {uki: testPE(t, []peSection{{".text", noise(700, 3)}, {".osrel", []byte("ID=palisade\n")}, {".cmdline", []byte(base.cmdline)}, {".initrd", initrd.initrd}, {".linux", base.kernel}}), fw: fw, sameMRTD: true},
		"cmdline":      {uki: newTestImage(t, "console=ttyS0 b").uki, fw: fw, sameMRTD: true},
		"snp-firmware": {uki: base.uki, fw: Firmware{SNP: flip(fw.SNP, 100), TDX: fw.TDX}, sameMRTD: true, sameRTMR1: true},
		"tdx-firmware": {uki: base.uki, fw: Firmware{SNP: fw.SNP, TDX: flip(fw.TDX, 0xa000)}, sameSNP: true, sameRTMR1: true},
	} {
		got, _, err := CVMReferences(c.uki, opts(c.fw))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if s := bytes.Equal(got[0].SNP.Measurement, ref[0].SNP.Measurement); s != c.sameSNP {
			t.Errorf("%s: SNP measurement unchanged = %v, want %v", name, s, c.sameSNP)
		}
		if s := bytes.Equal(got[1].TDX.MRTD, ref[1].TDX.MRTD); s != c.sameMRTD {
			t.Errorf("%s: MRTD unchanged = %v, want %v", name, s, c.sameMRTD)
		}
		if s := bytes.Equal(got[1].TDX.RTMR[1], ref[1].TDX.RTMR[1]); s != c.sameRTMR1 {
			t.Errorf("%s: RTMR1 unchanged = %v, want %v", name, s, c.sameRTMR1)
		}
	}
}

func TestCVMReferencesRefused(t *testing.T) {
	ti := newTestImage(t, "console=ttyS0")
	fw := Firmware{SNP: testFirmware(1), TDX: testFirmware(2)}
	given := testTDXBoot("1cpu-epyc-v4")
	given.Reference.MRTD = make([]byte, 48)
	noRTMR0 := testTDXBoot("1cpu-epyc-v4")
	noRTMR0.Reference.RTMR[0] = nil
	for name, c := range map[string]struct {
		uki  []byte
		o    CVMOptions
		want string
	}{
		"no product":         {ti.uki, CVMOptions{Firmware: fw, Shapes: Shapes}, "product"},
		"given measurement":  {ti.uki, CVMOptions{Firmware: fw, Shapes: Shapes, SNP: attest.SNPReference{Product: "Milan", Measurement: make([]byte, 48)}}, "measurement is computed"},
		"given mrtd":         {ti.uki, CVMOptions{Firmware: Firmware{TDX: fw.TDX}, Shapes: Shapes, TDXBoots: []TDXBoot{given}}, "computed, not given"},
		"boot without rtmr0": {ti.uki, CVMOptions{Firmware: Firmware{TDX: fw.TDX}, Shapes: Shapes, TDXBoots: []TDXBoot{noRTMR0}}, "rtmr[0]"},
		"unknown shape":      {ti.uki, CVMOptions{Firmware: Firmware{TDX: fw.TDX}, Shapes: Shapes, TDXBoots: []TDXBoot{testTDXBoot("8cpu")}}, "unknown shape"},
		"no .linux":          {testPE(t, []peSection{{".cmdline", []byte("x")}, {".initrd", []byte("y")}}), CVMOptions{Firmware: fw, Shapes: Shapes, SNP: attest.SNPReference{Product: "Milan"}}, ".linux"},
		"NUL in cmdline":     {newTestImage(t, "a\x00b").uki, CVMOptions{Firmware: fw, Shapes: Shapes, SNP: attest.SNPReference{Product: "Milan"}}, "NUL"},
		"no sev metadata":    {ti.uki, CVMOptions{Firmware: Firmware{SNP: noise(64<<10, 5)}, Shapes: Shapes, SNP: attest.SNPReference{Product: "Milan"}}, "sev-snp shape"},
	} {
		_, _, err := CVMReferences(c.uki, c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one naming %q", name, err, c.want)
		}
	}
}

func TestDirectBoot(t *testing.T) {
	ti := newTestImage(t, "console=ttyS0 rdinit=/init\x00")
	b, err := DirectBoot(ti.uki)
	if err != nil {
		t.Fatal(err)
	}
	want := &snp.Boot{Kernel: ti.kernel, Initrd: ti.initrd, Cmdline: "console=ttyS0 rdinit=/init"}
	if d := cmp.Diff(want, b); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	files := map[string][]byte{"vmlinuz": ti.kernel, "initrd.img": ti.initrd, "cmdline": []byte("console=ttyS0 rdinit=/init")}
	if err := CheckDirectBoot(ti.uki, files); err != nil {
		t.Error(err)
	}
	files["initrd.img"] = append(bytes.Clone(ti.initrd), 0)
	if err := CheckDirectBoot(ti.uki, files); err == nil || !strings.Contains(err.Error(), "initrd.img") {
		t.Errorf("changed initrd: err = %v, want one naming initrd.img", err)
	}
}

// TestLoadFirmware reads the real pinned build when scripts/firmware.sh has
// produced one, and refuses a copy with one byte changed.
func TestLoadFirmware(t *testing.T) {
	dirs, _ := filepath.Glob("../../../out/firmware/*/SHA256SUMS")
	if len(dirs) == 0 {
		if os.Getenv("PALISADE_CROSSCHECK") == "1" {
			t.Fatal("PALISADE_CROSSCHECK=1 but there is no out/firmware build")
		}
		t.Skip("no out/firmware build (make firmware)")
	}
	dir := filepath.Dir(dirs[0])
	fw, err := LoadFirmware(dir)
	if err != nil {
		t.Fatal(err)
	}
	ti := newTestImage(t, "console=ttyS0")
	refs, _, err := CVMReferences(ti.uki, CVMOptions{Image: "production", Firmware: *fw, Shapes: Shapes, SNP: attest.SNPReference{Product: "Milan"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != len(Shapes) || !strings.Contains(refs[0].Profile, "ovmf-ad5d275b") {
		t.Errorf("profiles on the pinned firmware: %v", refs)
	}
	tmp := t.TempDir()
	for _, p := range firmware.Pinned {
		b, err := os.ReadFile(filepath.Join(dir, p.File))
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 1
		if err := os.WriteFile(filepath.Join(tmp, p.File), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := LoadFirmware(tmp); err == nil {
		t.Error("LoadFirmware accepted firmware that differs from its pin")
	}
}

// FuzzDirectBoot: a UKI is outside bytes to whoever launches a CVM.
func FuzzDirectBoot(f *testing.F) {
	ti := newTestImage(f, "console=ttyS0")
	f.Add(ti.uki)
	f.Add(ti.uki[:0x400])
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		db, err := DirectBoot(b)
		if err == nil && strings.IndexByte(db.Cmdline, 0) >= 0 {
			t.Fatalf("cmdline %q with a NUL", db.Cmdline)
		}
	})
}
