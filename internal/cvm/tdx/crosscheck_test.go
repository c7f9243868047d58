package tdx

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/palisade-cc/palisade/images/uki"
)

// The RTMR1 event digests of a UKI built around the pinned Debian kernel,
// as printed by an independent implementation: quex-tech/td-report-web
// (commit d857138, docs/reproduce.mjs, its getPeHashPreimage + SHA-384 and
// its EFI_ACTIONS strings, run with Node.js 20 outside this repository;
// none of its code is here). Input: vmlinuz-6.1.0-50-amd64 from
// linux-image-6.1.0-50-amd64_6.1.176-1_amd64.deb (the kernel images/build
// pins), sha256 below. The tool also printed, for the production UKI
// a115e3bf… of commit 3c5d51f, the same Authenticode SHA-384 as
// authenticode384 (4a3c433f…); a UKI's digest changes with every build, so
// only the pinned kernel's is kept as a golden figure, and the UKI-level
// Authenticode is held to real firmware by the VM tier (PCR4 quoted by
// OVMF + swtpm equals images/build's prediction).
const (
	pinnedKernelDeb    = "linux-image-6.1.0-50-amd64_6.1.176-1_amd64.deb"
	pinnedKernelSHA256 = "d8808aa4ca188560da1e6d749dcb930c87a5fd8b11ebff1f3fa6d728af35203d"
	quexKernel384      = "0fbfe6ff6f232d51769517123fc77f333ef225f081c049ad3427848255aa7727a89500d453ef6915c88fa66fd504c3fa"
	quexCalling384     = "77a0dab2312b4e1e57a84d865a21e5b2ee8d677a21012ada819d0a98988078d3d740f6346bfe0abaa938ca20439a8d71"
	quexExitBS384      = "214b0bef1379756011344877743fdc2a5382bac6e70362d624ccf3f654407c1b4badf7d8f9295dd3dabdef65b27677e0"
	quexExitBSOK384    = "0a2e01c85deae718a530ad8c6d20a84009babe6c8989269e950d8cf440c6e997695e64d455c4174a652cd080f6230b74"
)

// crossCheckRequired is set by the VM tier (scripts/vm-tier.sh), which has
// built the firmware and the image: a cross-check whose input is missing
// then fails instead of skipping.
func crossCheckRequired() bool { return os.Getenv("PALISADE_CROSSCHECK") == "1" }

// pinnedKernel unpacks vmlinuz from the pinned kernel package in the image
// build's cache (out/image/cache, filled by make image or the VM tier).
func pinnedKernel(t *testing.T) []byte {
	t.Helper()
	deb := filepath.Join("..", "..", "..", "out", "image", "cache", pinnedKernelDeb)
	if _, err := os.Stat(deb); err != nil {
		if crossCheckRequired() {
			t.Fatalf("PALISADE_CROSSCHECK=1 but %s is missing: %v", deb, err)
		}
		t.Skip("no " + deb + ": run make image (the VM tier runs this check)")
	}
	out, err := exec.Command("dpkg-deb", "--fsys-tarfile", deb).Output()
	if err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", deb, err)
	}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no ./boot/vmlinuz-6.1.0-50-amd64: %v", deb, err)
		}
		if h.Name == "./boot/vmlinuz-6.1.0-50-amd64" {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if got := hexSum(b); got != pinnedKernelSHA256 {
				t.Fatalf("vmlinuz sha256 %s, the golden figures are for %s", got, pinnedKernelSHA256)
			}
			return b
		}
	}
}

func TestRTMR1EventsCrossChecked(t *testing.T) {
	k := pinnedKernel(t)
	dir := t.TempDir()
	files := map[string][]byte{"vmlinuz": k, "initrd": []byte("palisade test initrd\n"), "cmdline": []byte("console=ttyS0\x00"), "osrel": []byte("ID=palisade\n")}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ukiPath := filepath.Join(dir, "uki.efi")
	secs := []uki.Section{{Name: ".osrel", Path: filepath.Join(dir, "osrel")}, {Name: ".cmdline", Path: filepath.Join(dir, "cmdline")},
		{Name: ".initrd", Path: filepath.Join(dir, "initrd")}, {Name: ".linux", Path: filepath.Join(dir, "vmlinuz")}}
	if err := uki.Build(context.Background(), "", stub, secs, ukiPath, 1); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(ukiPath)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := RTMR1Events(b, false)
	if err != nil {
		t.Fatal(err)
	}
	// Secure Boot off: action, separator, UKI, inner kernel, two actions.
	if len(ev) != 6 {
		t.Fatalf("%d RTMR1 events, want 6", len(ev))
	}
	sep := sha512.Sum384(make([]byte, 4))
	for i, want := range map[int]string{0: quexCalling384, 1: hex.EncodeToString(sep[:]), 3: quexKernel384, 4: quexExitBS384, 5: quexExitBSOK384} {
		if got := hex.EncodeToString(ev[i]); got != want {
			t.Errorf("RTMR1 event %d = %s, the independent tool printed %s", i, got, want)
		}
	}
	if bytes.Equal(ev[2], ev[3]) {
		t.Error("the UKI's digest equals its inner kernel's")
	}
}
