package qemutests

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/qemu-tests/cvm"
	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// tamperInitrd writes a copy of the UKI whose initrd differs in one byte
// that the kernel ignores: the gzip header's MTIME (RFC 1952 §2.3). The
// guest boots the same programs, but every launch digest of the initrd
// changes, as with an initrd an insider swapped.
func tamperInitrd(t *testing.T, uki string) string {
	t.Helper()
	return patchSection(t, uki, ".initrd", func(sec []byte) {
		if len(sec) < 10 || sec[0] != 0x1f || sec[1] != 0x8b {
			t.Fatal("UKI's .initrd is not gzip")
		}
		sec[4] ^= 0x01
	})
}

// cvmCase is one emulated confidential-VM boot.
type cvmCase struct {
	name string
	uki  string
	mac  string
	// vm, if set, edits the VM's configuration (disks, memory, time-out).
	vm func(*vm.Config)
}

// bootCVM launches an emulated CVM of platform p on uki: the emulator
// measures the pinned firmware and the UKI, QEMU boots it (SEV-SNP:
// measured direct boot of the UKI's sections; TDX: PXE of the UKI).
func bootCVM(t *testing.T, r *rack, p attest.Platform, c cvmCase) (*vm.VM, *cvm.Emulator) {
	t.Helper()
	img := r.img
	l := cvm.Launch{Platform: p, UKI: c.uki, VCPUs: 1, VCPUType: "EPYC-v4",
		Log: slog.New(slog.NewTextHandler(r.keydLog, nil)).With("emulator", c.name)}
	var (
		e   *cvm.Emulator
		err error
	)
	if p == attest.PlatformSNP {
		l.Firmware = filepath.Join(firmwareDir(), "OVMF.amdsev.fd")
		e, err = cvm.NewSNP(l, img.Chain)
	} else {
		l.Firmware = filepath.Join(firmwareDir(), "OVMF.inteltdx.fd")
		e, err = cvm.NewTDX(l, img.TDX)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "cvm.sock")
	if err := e.Listen(sock); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx) }()
	cfg := vm.Config{Name: c.name, Net: r.net, MAC: c.mac, Extra: e.QEMUArgs(sock)}
	if p == attest.PlatformSNP {
		cfg.Kernel, cfg.Initrd, cfg.Append, err = e.DirectBootFiles(dir)
		if err != nil {
			t.Fatal(err)
		}
	}
	if c.vm != nil {
		c.vm(&cfg)
	}
	v := vm.Start(t, cfg)
	t.Cleanup(func() {
		v.Stop()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("emulator: %v", err)
		}
	})
	return v, e
}

// TestCVM boots emulated SEV-SNP and TDX guests of the image: attestd
// reaches the emulator through the same Transport interface as the
// hardware's, keyd verifies the evidence under the test roots against the
// manifest images/build computed, and a guest launched with a different
// initrd is denied.
func TestCVM(t *testing.T) {
	vm.Require(t)
	r := newRack(t, "10.78.0.0/24")
	img := r.img
	if img.Firmware == nil {
		t.Fatal("the pinned AmdSev and IntelTdx firmware is missing: run scripts/firmware.sh (the VM tier does)")
	}
	other := tamperInitrd(t, img.UKI)
	cases := map[attest.Platform][2]cvmCase{
		attest.PlatformSNP: {{"snp", img.UKI, "52:54:00:78:00:01", nil}, {"snp-other-initrd", other, "52:54:00:78:00:02", nil}},
		attest.PlatformTDX: {{"tdx", img.UKI, "52:54:00:78:00:03", nil}, {"tdx-other-initrd", other, "52:54:00:78:00:04", nil}},
	}
	var rules []acceptRule
	for _, cs := range cases {
		for _, c := range cs {
			rules = append(rules, acceptRule{mac: c.mac, profile: c.name, image: c.uki})
		}
	}
	r.serve(rules...)
	for p, cs := range cases {
		good, bad := cs[0], cs[1]
		t.Run(good.name, func(t *testing.T) {
			t.Parallel()
			v, e := bootCVM(t, r, p, good)
			ref := e.Reference()
			if !hasRef(img.Refs, ref) {
				v.Fail("the emulator's reference %s is not the one images/build wrote", ref.Profile)
			}
			m := v.Expect(`^attestd: admitted node=(\S+) profile=(\S+) platform=(\S+)`, bootTimeout)
			if m[2] != ref.Profile || m[3] != string(p) {
				v.Fail("admitted as %s on %s, want %s on %s", m[2], m[3], ref.Profile, p)
			}
			if rec, err := v.WriteTimeline(t.Name(), string(p)); err != nil {
				t.Errorf("timeline: %v", err)
			} else {
				t.Logf("boot timeline (%s):\n%s", p, rec)
			}
		})
		t.Run(bad.name, func(t *testing.T) {
			t.Parallel()
			v, e := bootCVM(t, r, p, bad)
			if hasRef(img.Refs, e.Reference()) {
				t.Fatal("a UKI with another initrd measures like the image")
			}
			v.Expect(`^attestd: denied by keyd`, bootTimeout)
			node := strings.ReplaceAll(bad.mac, ":", "-")
			if !regexp.MustCompile(`class=measurement .*` + node).MatchString(r.keydLog.String()) {
				t.Errorf("keyd's log has no measurement denial of %s:\n%s", node, tail(r.keydLog.String(), 20))
			}
		})
	}
}

// hasRef reports whether refs holds want with the same values.
func hasRef(refs []attest.Reference, want attest.Reference) bool {
	for _, r := range refs {
		if r.Profile != want.Profile || r.Platform != want.Platform {
			continue
		}
		switch {
		case r.SNP != nil && want.SNP != nil:
			return bytes.Equal(r.SNP.Measurement, want.SNP.Measurement)
		case r.TDX != nil && want.TDX != nil:
			if !bytes.Equal(r.TDX.MRTD, want.TDX.MRTD) {
				return false
			}
			for i := range r.TDX.RTMR {
				if !bytes.Equal(r.TDX.RTMR[i], want.TDX.RTMR[i]) {
					return false
				}
			}
			return true
		}
	}
	return false
}
