package tdx

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/cvm/fwtest"
	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
	"github.com/palisade-cc/palisade/internal/measure"
)

// crossChecked are MRTDs printed by an independent implementation: td-shim's
// td-shim-tools/src/bin/td-shim-tee-info-hash/td_shim_tee_info_hash.py
// (confidential-containers/td-shim commit
// 125eeab58f69b891175c8803b4a824bfed7389c1; per page, as KVM), run once.
var crossChecked = []struct {
	name, fwSHA256, mrtd string
}{
	// fwtest.Image(nil, DefaultTDX()): synthetic, always available.
	{"synthetic", "ae91fce22b56c59c84d4991ed4e11c04a0f9477a08f5864e7319a8a3cc7a2b1c", "c79a593bc1aed46af62942a2b45425b343ef16020fd1170b3b592a605f1aaf203b847eb2360caf436274559f01e16b85"},
	// OVMF IntelTdxX64 built by scripts/firmware.sh from Debian edk2 2022.11-6+deb12u2.
	{"inteltdx", "ac021a04ec40122c54a0d7d3e1215434a7ad8c85346597dad6a96c998f2a05c1", "01bd1bd87837bb2a38b200daf8d34af1bb1dd7f68b682bbb9effd4ae0a16f4757df4d9d6effa1c69b89686dddb049b8c"},
}

func hexSum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func firmware(t *testing.T, name, sum string) []byte {
	t.Helper()
	if name == "synthetic" {
		return fwtest.Image(nil, fwtest.DefaultTDX())
	}
	matches, _ := filepath.Glob("../../../out/firmware/*/OVMF.inteltdx.fd")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil && hexSum(b) == sum {
			return b
		}
	}
	if crossCheckRequired() {
		t.Fatal("PALISADE_CROSSCHECK=1 but out/firmware has no IntelTdx build with sha256 " + sum)
	}
	t.Skip("out/firmware has no IntelTdx build with sha256 " + sum + ": run scripts/firmware.sh")
	return nil
}

func TestMRTDCrossChecked(t *testing.T) {
	for _, tt := range crossChecked {
		t.Run(tt.name, func(t *testing.T) {
			fw := firmware(t, tt.name, tt.fwSHA256)
			if got := hexSum(fw); got != tt.fwSHA256 {
				t.Fatalf("firmware sha256 %s, the golden value is for %s", got, tt.fwSHA256)
			}
			got, err := MRTD(fw)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tt.mrtd {
				t.Errorf("MRTD %x, td-shim's tool printed %s", got, tt.mrtd)
			}
		})
	}
}

// TestMRTDByHand recomputes a one-page measured section from the ABI's
// record layout, independently of the loop in MRTDOrder.
func TestMRTDByHand(t *testing.T) {
	secs := []ovmf.TDXSection{{DataOffset: 0xf000, RawDataSize: 0x1000, MemoryAddress: 0xfffff000, MemoryDataSize: 0x1000, Type: ovmf.TDXBFV, Attributes: ovmf.TDXExtendMR}}
	fw := fwtest.Image(nil, secs)
	h := sha512.New384()
	rec := make([]byte, 128)
	copy(rec, "MEM.PAGE.ADD")
	copy(rec[16:], []byte{0x00, 0xf0, 0xff, 0xff, 0, 0, 0, 0})
	h.Write(rec)
	for c := 0; c < 16; c++ {
		rec := make([]byte, 128)
		copy(rec, "MR.EXTEND")
		gpa := 0xfffff000 + c*256
		copy(rec[16:], []byte{byte(gpa), byte(gpa >> 8), byte(gpa >> 16), byte(gpa >> 24)})
		h.Write(rec)
		h.Write(fw[0xf000+c*256 : 0xf000+(c+1)*256])
	}
	got, err := MRTD(fw)
	if err != nil {
		t.Fatal(err)
	}
	if want := h.Sum(nil); !bytes.Equal(got, want) {
		t.Errorf("MRTD %x, want %x", got, want)
	}
}

// TestMRTDEveryInputCounts: a byte of a measured section, a section's address
// or an added page changes MRTD; a byte outside measured sections does not.
func TestMRTDEveryInputCounts(t *testing.T) {
	ref, err := MRTD(fwtest.Image(nil, fwtest.DefaultTDX()))
	if err != nil {
		t.Fatal(err)
	}
	bfvByte := fwtest.Image(nil, fwtest.DefaultTDX())
	bfvByte[0x9000] ^= 1
	moved := fwtest.DefaultTDX()
	moved[3].MemoryAddress += ovmf.PageSize
	bigger := fwtest.DefaultTDX()
	bigger[2].MemoryDataSize += ovmf.PageSize
	aug := fwtest.DefaultTDX()
	aug[3].Attributes = ovmf.TDXPageAug
	for name, fw := range map[string][]byte{
		"bfv byte": bfvByte, "temp mem moved": fwtest.Image(nil, moved),
		"hob bigger": fwtest.Image(nil, bigger), "temp mem page_aug": fwtest.Image(nil, aug),
	} {
		got, err := MRTD(fw)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if bytes.Equal(got, ref) {
			t.Errorf("%s: MRTD unchanged", name)
		}
	}
	cfvByte := fwtest.Image(nil, fwtest.DefaultTDX())
	cfvByte[0x4000] ^= 1 // CFV (variables) is added, not extended
	if got, _ := MRTD(cfvByte); !bytes.Equal(got, ref) {
		t.Error("a CFV byte changed MRTD; only EXTENDMR sections are measured")
	}
	if per, _ := MRTDOrder(fwtest.Image(nil, fwtest.DefaultTDX()), PerSection); bytes.Equal(per, ref) {
		t.Error("PerSection and PerPage orders agree; the synthetic image should tell them apart")
	}
}

func TestMRTDRejects(t *testing.T) {
	if _, err := MRTD(fwtest.Image(nil, nil)); err == nil || !strings.Contains(err.Error(), "tdx metadata") {
		t.Errorf("firmware without TDX metadata: %v", err)
	}
	if _, err := MRTDOrder(fwtest.Image(nil, fwtest.DefaultTDX()), Order(9)); err == nil {
		t.Error("unknown order accepted")
	}
}

const stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// TestAuthenticodeMatchesMeasure: the SHA-384 Authenticode hashes the same
// ranges as images/measure's SHA-256 one.
func TestAuthenticodeMatchesMeasure(t *testing.T) {
	b, err := os.ReadFile(stub)
	if err != nil {
		t.Fatalf("%v (scripts/deps.sh installs systemd-boot-efi)", err)
	}
	p, err := measure.ParsePE(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := authenticode(sha256.New(), b, p)
	if err != nil {
		t.Fatal(err)
	}
	want, err := measure.AuthenticodeHash(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("authenticode %x, measure says %x", got, want)
	}
}

func TestRTMR1Events(t *testing.T) {
	b, err := os.ReadFile(stub)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := measure.ParsePE(b)
	a, err := authenticode384(b, p)
	if err != nil {
		t.Fatal(err)
	}
	s := func(x string) []byte { h := sha512.Sum384([]byte(x)); return h[:] }
	sep := sha512.Sum384(make([]byte, 4))
	got, err := RTMR1Events(b, true)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]byte{s("Calling EFI Application from Boot Option"), sep[:], a, s("Exit Boot Services Invocation"), s("Exit Boot Services Returned with Success")}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("RTMR1 events (-want +got):\n%s", diff)
	}
	if _, err := RTMR1Events(b, false); err == nil || !strings.Contains(err.Error(), "no .linux") {
		t.Errorf("secure boot off without .linux: %v", err)
	}
	if r := Replay(got...); len(r) != Size || bytes.Equal(r, make([]byte, Size)) {
		t.Errorf("Replay = %x", r)
	}
}

func TestRTMR2Events(t *testing.T) {
	b, err := os.ReadFile(stub)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := measure.ParsePE(b)
	if ev := RTMR2Events(p, measure.KernelPCR9{LoadOptions: true, Initrd: true}, CCMeasurers{}); len(ev) != 0 {
		t.Errorf("TCG2-only stub and kernel extend RTMR2 %d times, want 0", len(ev))
	}
}

func FuzzMRTD(f *testing.F) {
	f.Add(fwtest.Image(nil, fwtest.DefaultTDX())[fwtest.Size-0x1000:])
	f.Fuzz(func(t *testing.T, tail []byte) {
		if len(tail) > 2*ovmf.PageSize {
			tail = tail[:2*ovmf.PageSize]
		}
		fw := make([]byte, 2*ovmf.PageSize)
		copy(fw[len(fw)-len(tail):], tail)
		if m, err := MRTD(fw); err == nil && len(m) != Size {
			t.Fatalf("MRTD of %d bytes", len(m))
		}
	})
}

func FuzzRTMR1Events(f *testing.F) {
	if b, err := os.ReadFile(stub); err == nil {
		f.Add(b[:min(len(b), 4096)])
	}
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = RTMR1Events(b, false)
		_, _ = RTMR1Events(b, true)
	})
}

func BenchmarkMRTD(b *testing.B) {
	fw := fwtest.Image(nil, fwtest.DefaultTDX())
	for b.Loop() {
		if _, err := MRTD(fw); err != nil {
			b.Fatal(err)
		}
	}
}
