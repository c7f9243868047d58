package snp_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/cvm/fwtest"
	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
	"github.com/palisade-cc/palisade/internal/cvm/snp"
)

// crossChecked are launch digests printed by an independent implementation,
// virtee/sev-snp-measure-go at commit 74f52d54c814364d04b64cc96d9b696e2697addc
// (guest.LaunchDigestFromOVMF, vmmtypes.QEMU), run once on the same inputs.
// That tool has no measured direct boot, so these are firmware-only launches.
var crossChecked = []struct {
	name     string
	fwSHA256 string // of the firmware image
	vcpus    int
	vcpuType string
	features uint64
	digest   string
}{
	// fwtest.Image(DefaultSEV, nil): a synthetic 64 KiB image, always available.
	{"synthetic/1", "6c00e912396e8e87978a91f2fa0958469c91eb1e006076eaea06ca1cc0b4808c", 1, "EPYC-v4", 1, "5769340369e9178d55a804cfaf2892c2c37ad6053de68d15395656ed023192ccd14995384d44bd253c67e94d7407a7b8"},
	{"synthetic/2", "6c00e912396e8e87978a91f2fa0958469c91eb1e006076eaea06ca1cc0b4808c", 2, "EPYC-v4", 1, "57bcf8dc3598134405d231203069059f2ea551a799cc9008e8e4389fd0990a395d7723c4fc2ef6b97bba6fa38e402bae"},
	{"synthetic/4", "6c00e912396e8e87978a91f2fa0958469c91eb1e006076eaea06ca1cc0b4808c", 4, "EPYC-v4", 1, "6cc2e692f937ef735238b0f5badf8bfae8f5f3dd93515cdf34f02d78280fbc59bd1f3d0d3e235c519fecdc7adf198f42"},
	{"synthetic/milan", "6c00e912396e8e87978a91f2fa0958469c91eb1e006076eaea06ca1cc0b4808c", 2, "EPYC-Milan", 0x21, "c1a39da53f6000480c014e0b681577d762dc280e4fc4b444f07a32db8cb3dfbb24c595955a3d573b8da40e57f9688bb2"},
	// OVMF AmdSevX64 built by scripts/firmware.sh from Debian edk2 2022.11-6+deb12u2.
	{"amdsev/1", amdSevSHA256, 1, "EPYC-v4", 1, "77d7c6b013adf33840337e071ccdaddfbb3ea58986c59a604b683a0638fd08e37eaeb58b7d72d3d2ff6f299c18a84f61"},
	{"amdsev/4", amdSevSHA256, 4, "EPYC-v4", 1, "37f831378a606192cd46e8f81b5ba8f10b66d8430ee775fc20f28cf7bcfb981c016934b8ebd248d661d0c7bcf609012a"},
}

const amdSevSHA256 = "ad5d275b57d12e66ee2d70bce206420919260197cc672e739cfa7c4388749560"

func synthetic() []byte {
	sev := fwtest.DefaultSEV()
	return fwtest.Image(&sev, nil)
}

// builtFirmware returns the AmdSev build from out/firmware when
// scripts/firmware.sh has run on this checkout.
func builtFirmware(t *testing.T) []byte {
	t.Helper()
	matches, _ := filepath.Glob("../../../out/firmware/*/OVMF.amdsev.fd")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && hexSum(b) == amdSevSHA256 {
			return b
		}
	}
	return nil
}

func hexSum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestCrossChecked(t *testing.T) {
	for _, tt := range crossChecked {
		t.Run(tt.name, func(t *testing.T) {
			fw := synthetic()
			if strings.HasPrefix(tt.name, "amdsev") {
				if fw = builtFirmware(t); fw == nil {
					if os.Getenv("PALISADE_CROSSCHECK") == "1" {
						t.Fatal("PALISADE_CROSSCHECK=1 but out/firmware has no AmdSev build with sha256 " + amdSevSHA256)
					}
					t.Skip("out/firmware has no AmdSev build with sha256 " + amdSevSHA256 + ": run scripts/firmware.sh")
				}
			}
			if got := hexSum(fw); got != tt.fwSHA256 {
				t.Fatalf("firmware sha256 %s, the golden value is for %s", got, tt.fwSHA256)
			}
			got, err := snp.Compute(snp.Input{Firmware: fw, VCPUs: tt.vcpus, VCPUType: tt.vcpuType, GuestFeatures: tt.features})
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tt.digest {
				t.Errorf("launch digest %x, sev-snp-measure-go printed %s", got, tt.digest)
			}
		})
	}
}

func boot() *snp.Boot {
	return &snp.Boot{Kernel: []byte("a kernel image"), Initrd: []byte("an initrd"), Cmdline: "console=ttyS0 palisade.keyd=10.0.0.1:7000"}
}

// TestHashTableLayout reads the table back with the layout OVMF's
// BlobVerifierSevHashes.c expects.
func TestHashTableLayout(t *testing.T) {
	b := boot()
	tab := snp.HashTable(b)
	if len(tab) != 176 {
		t.Fatalf("padded table %d bytes, want 176", len(tab))
	}
	guid := func(s string) []byte { g, _ := ovmf.ParseGUID(s); return g[:] }
	if !bytes.Equal(tab[:16], guid("9438d606-4f22-4cc9-b479-a793d411fd21")) || binary.LittleEndian.Uint16(tab[16:]) != 168 {
		t.Fatalf("header %x", tab[:18])
	}
	want := []struct {
		guid string
		data []byte
	}{
		{"97d02dd8-bd20-4c94-aa78-e7714d36ab2a", append([]byte(b.Cmdline), 0)},
		{"44baf731-3a2f-4bd7-9af1-41e29169781d", b.Initrd},
		{"4de79437-abd2-427f-b835-d5b172d2045b", b.Kernel},
	}
	for i, w := range want {
		e := tab[18+50*i:]
		h := sha256.Sum256(w.data)
		if !bytes.Equal(e[:16], guid(w.guid)) || binary.LittleEndian.Uint16(e[16:]) != 50 || !bytes.Equal(e[18:50], h[:]) {
			t.Errorf("entry %d = %x, want %s, 50, %x", i, e[:50], w.guid, h)
		}
	}
	if !bytes.Equal(tab[168:], make([]byte, 8)) {
		t.Errorf("padding %x, want zeros", tab[168:])
	}
}

// TestEveryInputCounts: one byte of kernel, initrd, cmdline or firmware, the
// vCPU count, type or features changes the digest.
func TestEveryInputCounts(t *testing.T) {
	base := func() snp.Input {
		return snp.Input{Firmware: synthetic(), Boot: boot(), VCPUs: 2, VCPUType: "EPYC-v4", GuestFeatures: 1}
	}
	ref, err := snp.Compute(base())
	if err != nil {
		t.Fatal(err)
	}
	noBoot := base()
	noBoot.Boot = nil
	fwOnly, err := snp.Compute(noBoot)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ref, fwOnly) {
		t.Error("measured direct boot does not change the digest")
	}
	muts := map[string]func(*snp.Input){
		"kernel":   func(in *snp.Input) { in.Boot.Kernel[3] ^= 1 },
		"initrd":   func(in *snp.Input) { in.Boot.Initrd[0] ^= 1 },
		"cmdline":  func(in *snp.Input) { in.Boot.Cmdline += " " },
		"firmware": func(in *snp.Input) { in.Firmware[0x5000] ^= 1 },
		"vcpus":    func(in *snp.Input) { in.VCPUs = 3 },
		"vcputype": func(in *snp.Input) { in.VCPUType = "EPYC-Milan" },
		"features": func(in *snp.Input) { in.GuestFeatures = 0x21 },
		"reset-ip": func(in *snp.Input) {
			i := bytes.LastIndex(in.Firmware, ovmf.SEVESResetBlockGUID[:])
			in.Firmware[i-6] ^= 0x10
		},
	}
	for name, mut := range muts {
		t.Run(name, func(t *testing.T) {
			in := base()
			mut(&in)
			got, err := snp.Compute(in)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got, ref) {
				t.Errorf("changing %s left the digest at %x", name, ref)
			}
		})
	}
}

// TestKernelHashesSection: firmware that declares the kernel-hashes page as
// its own section (newer edk2) measures the same page as the 2022.11 layout,
// where it lies inside an SNP_SEC_MEM range, when the ranges split there.
func TestKernelHashesSection(t *testing.T) {
	sev := fwtest.DefaultSEV()
	old := fwtest.Image(&sev, nil)
	split := fwtest.DefaultSEV()
	split.Sections = append([]ovmf.SEVSection{split.Sections[0],
		{Base: 0x80a000, Size: 0x1000, Type: ovmf.SEVKernelHashes},
		{Base: 0x80b000, Size: 0x3000, Type: ovmf.SEVSecMem}}, split.Sections[2:]...)
	newer := fwtest.Image(&split, nil)
	in := snp.Input{Boot: boot(), VCPUs: 1, VCPUType: "EPYC-v4", GuestFeatures: 1}
	in.Firmware = old
	a, err := snp.Chain(in)
	if err != nil {
		t.Fatal(err)
	}
	// The images differ in their metadata bytes, so compare the metadata
	// part only: same page count, and the page counts match the sections.
	in.Firmware = newer
	b, err := snp.Chain(in)
	if err != nil {
		t.Fatal(err)
	}
	wantPages := fwtest.Size/ovmf.PageSize + (0x9000+0x4000+0x1000+0x1000+0x10000)/ovmf.PageSize + 1
	if diff := cmp.Diff([]int{wantPages, wantPages}, []int{a.Pages, b.Pages}); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}
}

func TestRejects(t *testing.T) {
	ok := func() snp.Input {
		return snp.Input{Firmware: synthetic(), Boot: boot(), VCPUs: 1, VCPUType: "EPYC-v4", GuestFeatures: 1}
	}
	noHashes := fwtest.DefaultSEV()
	noHashes.HashBase, noHashes.HashSize = 0, 0
	outside := fwtest.DefaultSEV()
	outside.HashBase = 0x900000
	inSecrets := fwtest.DefaultSEV()
	inSecrets.HashBase = 0x80e000
	huge := fwtest.DefaultSEV()
	huge.Sections[4].Size = 0x10000000
	small := fwtest.DefaultSEV()
	small.HashSize = 0x80
	tests := map[string]struct {
		mut  func(*snp.Input)
		want string
	}{
		"no vcpus":          {func(in *snp.Input) { in.VCPUs = 0 }, "0 vCPUs"},
		"unknown vcpu":      {func(in *snp.Input) { in.VCPUType = "Skylake" }, `vcpu type "Skylake" unknown`},
		"no snp feature":    {func(in *snp.Input) { in.GuestFeatures = 0 }, "SNPActive"},
		"no sev metadata":   {func(in *snp.Input) { in.Firmware = fwtest.Image(nil, nil) }, "sev metadata"},
		"no hashes table":   {func(in *snp.Input) { in.Firmware = fwtest.Image(&noHashes, nil) }, "reserves no room"},
		"hashes unmeasured": {func(in *snp.Input) { in.Firmware = fwtest.Image(&outside, nil) }, "lies in 0 sev metadata sections"},
		"hashes in secrets": {func(in *snp.Input) { in.Firmware = fwtest.Image(&inSecrets, nil) }, "section of type 0x2"},
		"too many pages":    {func(in *snp.Input) { in.Firmware = fwtest.Image(&huge, nil) }, "more than the 16384"},
		"hashes too small":  {func(in *snp.Input) { in.Firmware = fwtest.Image(&small, nil) }, "the table needs 176"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			in := ok()
			tt.mut(&in)
			if _, err := snp.Compute(in); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, err := snp.Compute(ok()); err != nil {
		t.Fatalf("the unmodified input fails: %v", err)
	}
}

func TestCPUSignature(t *testing.T) {
	for name, want := range map[string]uint32{"EPYC-v4": 0x800f12, "EPYC-Rome": 0x830f10, "EPYC-Milan": 0xa00f11, "EPYC-Genoa": 0xa10f10} {
		got, err := snp.VCPUSignature(name)
		if err != nil || got != want {
			t.Errorf("VCPUSignature(%q) = %#x, %v; want %#x", name, got, err, want)
		}
	}
}

// FuzzCompute runs the whole computation on firmware whose tail is arbitrary.
func FuzzCompute(f *testing.F) {
	f.Add(synthetic()[fwtest.Size-0x2000:])
	f.Fuzz(func(t *testing.T, tail []byte) {
		if len(tail) > 2*ovmf.PageSize {
			tail = tail[:2*ovmf.PageSize]
		}
		fw := make([]byte, 2*ovmf.PageSize)
		copy(fw[len(fw)-len(tail):], tail)
		d, err := snp.Compute(snp.Input{Firmware: fw, Boot: boot(), VCPUs: 2, VCPUType: "EPYC-v4", GuestFeatures: 1})
		if err == nil && len(d) != snp.DigestSize {
			t.Fatalf("digest of %d bytes", len(d))
		}
	})
}

func BenchmarkCompute(b *testing.B) {
	in := snp.Input{Firmware: synthetic(), Boot: boot(), VCPUs: 4, VCPUType: "EPYC-v4", GuestFeatures: 1}
	for b.Loop() {
		if _, err := snp.Compute(in); err != nil {
			b.Fatal(err)
		}
	}
}
