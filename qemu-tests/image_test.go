package qemutests

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"debug/pe"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/palisade-cc/palisade/images/build"
	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/roots"
	"github.com/palisade-cc/palisade/qemu-tests/cvm"
	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// Test PKIs of one test run: the TPM vendor CA that certifies every
// swtpm's EK, the SEV-SNP chain keyd attests with (and emulated SNP nodes
// report under), and the TDX PCK/QE chain of emulated TDX nodes.
type pkis struct {
	CA    *tpmtest.CA
	Chain *snptest.Chain
	TDX   *tdxtest.Fixture
}

// testImage is Palisade's production image built for this run, with the
// run's manifest key and with the SEV-SNP roots keyd attests under pinned
// into it: the real build (images/build), only the keys are the test's.
type testImage struct {
	Dir string
	UKI string
	// Refs are the node references the build computed.
	Refs []attest.Reference
	// KeydRef is what keyd (emulated SEV-SNP under the test chain)
	// measures to; it goes into the manifest's keyd section.
	KeydRef attest.Reference
	// Bundle is the signed manifest; PubPEM the key compiled in.
	Bundle, PubPEM string
	Firmware       *reference.Firmware
	pkis
}

var (
	imageOnce sync.Once
	imageVal  *testImage
	imageErr  error
)

// outDir is the repository's out/qemu-tests (tests run in qemu-tests/).
func outDir() string {
	d, _ := filepath.Abs(filepath.Join("..", "out", "qemu-tests"))
	return d
}

// firmwareDir is the pinned firmware scripts/firmware.sh built, or "".
func firmwareDir() string {
	if d := os.Getenv("PALISADE_FIRMWARE"); d != "" {
		if !filepath.IsAbs(d) { // relative to the repository root
			d, _ = filepath.Abs(filepath.Join("..", d))
		}
		return d
	}
	m, _ := filepath.Glob(filepath.Join("..", "out", "firmware", "*", "SHA256SUMS"))
	if len(m) == 1 {
		d, _ := filepath.Abs(filepath.Dir(m[0]))
		return d
	}
	return ""
}

// image builds the test image once per test binary (about a minute warm).
func image(t *testing.T) *testImage {
	t.Helper()
	imageOnce.Do(func() { imageVal, imageErr = buildImage(t) })
	if imageErr != nil {
		t.Fatalf("test image: %v", imageErr)
	}
	return imageVal
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

func buildImage(t *testing.T) (*testImage, error) {
	out := outDir()
	if err := os.RemoveAll(filepath.Join(out, "roots")); err != nil {
		return nil, err
	}
	img := &testImage{}
	var err error
	if img.CA, err = tpmtest.NewCA("palisade-vmtest"); err != nil {
		return nil, err
	}
	if img.Chain, err = snptest.NewChain(snptest.ChainOptions{}); err != nil {
		return nil, err
	}
	if img.TDX, err = tdxtest.NewFixture(); err != nil {
		return nil, err
	}
	img.KeydRef = *img.Chain.Reference()
	img.KeydRef.Profile = "snp-keyd"

	// The roots attestd judges keyd with: the test SEV-SNP chain only.
	rootsDir := filepath.Join(out, "roots")
	if err := img.Chain.WriteBundle(filepath.Join(rootsDir, "kds"), snptest.BundleOptions{}); err != nil {
		return nil, err
	}
	rc := roots.Config{SNP: map[string]roots.SNP{"Milan": {VCEKChain: "kds/kdsintf.amd.com/vcek/v1/Milan/cert_chain"}},
		SNPCollateralDir: "kds"}
	if err := writeJSON(filepath.Join(rootsDir, "roots.json"), rc); err != nil {
		return nil, err
	}

	key, pubPEM, pubPath, err := newManifestKey(out)
	if err != nil {
		return nil, err
	}
	img.PubPEM = pubPath

	o := build.Options{Profile: api.ProfileProduction, Version: "vmtest", Epoch: 1700000000,
		Root: "..", Out: filepath.Join(out, "image"), Cache: filepath.Join("..", "out", "image", "cache"),
		ManifestKey: pubPEM, Roots: rootsDir, ManifestWithoutLogProof: true,
		SNP: attest.SNPReference{Product: "Milan"}, Log: logWriter{t}}
	if fw := firmwareDir(); fw != "" {
		if o.Firmware, err = reference.LoadFirmware(fw); err != nil {
			return nil, fmt.Errorf("firmware %s: %w", fw, err)
		}
		img.Firmware = o.Firmware
	}
	res, err := build.Build(context.Background(), o)
	if err != nil {
		return nil, err
	}
	if o.Firmware != nil {
		// TDX references need a reference boot's RTMR0, TD attributes
		// and XFAM (images build --tdx-boots): the emulated TD's, then
		// the same build again with them, as an owner would.
		e, err := cvm.NewTDX(cvm.Launch{Platform: attest.PlatformTDX, Firmware: filepath.Join(firmwareDir(), "OVMF.inteltdx.fd"),
			UKI: filepath.Join(res.Dir, "palisade.efi"), VCPUs: 1, VCPUType: "EPYC-v4"}, img.TDX)
		if err != nil {
			return nil, fmt.Errorf("tdx reference boot: %w", err)
		}
		before := res.Files["palisade.efi"]
		o.TDXBoots = []reference.TDXBoot{e.TDXBoot()}
		if res, err = build.Build(context.Background(), o); err != nil {
			return nil, err
		}
		if res.Files["palisade.efi"] != before {
			return nil, fmt.Errorf("the rebuild with TDX reference boots changed the UKI: %s, then %s", before, res.Files["palisade.efi"])
		}
	}
	img.Dir = res.Dir
	img.UKI = filepath.Join(res.Dir, "palisade.efi")
	img.Refs = res.References

	files, err := manifest.FileDigests(os.DirFS(res.Dir), []string{"palisade.efi", "vmlinuz", "initrd.img"})
	if err != nil {
		return nil, err
	}
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "vmtest", SecurityVersion: 1,
		Files: files, References: img.Refs, Keyd: []attest.Reference{img.KeydRef}}
	b, err := manifest.Sign(m, key)
	if err != nil {
		return nil, err
	}
	img.Bundle = filepath.Join(out, "manifest.json")
	if err := writeJSON(img.Bundle, b); err != nil {
		return nil, err
	}
	return img, nil
}

// ref returns the image's node reference of profile.
func (img *testImage) ref(t *testing.T, profile string) attest.Reference {
	t.Helper()
	for _, r := range img.Refs {
		if r.Profile == profile {
			return r
		}
	}
	t.Fatalf("image has no reference %q", profile)
	return attest.Reference{}
}

// patchSection writes a copy of the UKI with fn applied to the bytes of
// one PE section (in place: sizes and offsets stay, so it still boots).
func patchSection(t *testing.T, uki, section string, fn func(sec []byte)) string {
	t.Helper()
	b, err := os.ReadFile(uki)
	if err != nil {
		t.Fatal(err)
	}
	f, err := pe.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(section)
	if s == nil {
		t.Fatalf("UKI has no %s section", section)
	}
	fn(b[s.Offset : s.Offset+s.Size])
	p := filepath.Join(t.TempDir(), "palisade"+section+".efi")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// tamperCmdline writes a copy of the UKI with one byte of its .cmdline
// section changed ("panic=-1" becomes "panic=-2": the kernel still boots).
func tamperCmdline(t *testing.T, uki string) string {
	t.Helper()
	return patchSection(t, uki, ".cmdline", func(sec []byte) {
		off := bytes.Index(sec, []byte("panic=-1"))
		if off < 0 {
			t.Fatalf(".cmdline %q lacks panic=-1", sec)
		}
		sec[off+len("panic=-")] = '2'
	})
}

func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

var _ = vm.Require

// newManifestKey makes this run's manifest signing key and writes its
// public half (PEM), the key images compile in, to out/manifest.pub.pem.
func newManifestKey(out string) (ed25519.PrivateKey, []byte, string, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, "", err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, "", err
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	p := filepath.Join(out, "manifest.pub.pem")
	return key, pubPEM, p, os.WriteFile(p, pubPEM, 0o644)
}
