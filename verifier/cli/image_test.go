package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/cvm/fwtest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/manifest/rekortest"
	"github.com/palisade-cc/palisade/internal/measure"
	"github.com/palisade-cc/palisade/verifier/config"
)

type peSection struct {
	name string
	data []byte
}

// buildPE writes a minimal PE32+ image (headers in 0x400 bytes, file
// alignment 0x200, section alignment 0x1000): enough for a kernel and a
// UKI whose measurements internal/measure computes.
func buildPE(secs []peSection) []byte {
	const lfanew, hdrs, falign, salign = 0x80, 0x400, 0x200, 0x1000
	b := make([]byte, hdrs)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], lfanew)
	copy(b[lfanew:], "PE\x00\x00")
	coff := lfanew + 4
	binary.LittleEndian.PutUint16(b[coff:], 0x8664)
	binary.LittleEndian.PutUint16(b[coff+2:], uint16(len(secs)))
	binary.LittleEndian.PutUint16(b[coff+16:], 240)
	opt := coff + 20
	binary.LittleEndian.PutUint16(b[opt:], 0x20b)
	binary.LittleEndian.PutUint32(b[opt+32:], salign)
	binary.LittleEndian.PutUint32(b[opt+36:], falign)
	binary.LittleEndian.PutUint32(b[opt+60:], hdrs)
	binary.LittleEndian.PutUint32(b[opt+108:], 16)
	st := opt + 240
	va := uint32(salign)
	for i, s := range secs {
		h := b[st+i*40:]
		copy(h, s.name)
		vs := uint32(len(s.data))
		raw := (vs + falign - 1) &^ (falign - 1)
		binary.LittleEndian.PutUint32(h[8:], vs)
		binary.LittleEndian.PutUint32(h[12:], va)
		binary.LittleEndian.PutUint32(h[16:], raw)
		binary.LittleEndian.PutUint32(h[20:], uint32(len(b)))
		b = append(b, s.data...)
		b = append(b, make([]byte, int(raw)-len(s.data))...)
		va += (max(vs, raw) + salign - 1) &^ (salign - 1)
	}
	binary.LittleEndian.PutUint32(b[opt+56:], va)
	return b
}

// imageWorld is an image's artifacts, its manifest recorded in a Rekor log,
// and the owner's configuration pinning both keys.
type imageWorld struct {
	cfgDir, artifacts string
	key               ed25519.PrivateKey
	log               *rekortest.Log
	refs              []attest.Reference
}

func newImageWorld(t *testing.T) *imageWorld {
	t.Helper()
	w := &imageWorld{cfgDir: t.TempDir(), artifacts: t.TempDir(), log: rekortest.NewLog()}
	_, w.key, _ = ed25519.GenerateKey(rand.Reader)
	kernel := buildPE([]peSection{{".text", bytes.Repeat([]byte("kernel"), 700)}})
	files := map[string][]byte{
		"vmlinuz":    kernel,
		"initrd.img": bytes.Repeat([]byte("initrd"), 300),
		"cmdline":    []byte("console=ttyS0 palisade.keyd=10.0.0.2:7443"),
		"os-release": []byte("ID=palisade\nVERSION_ID=test\n"),
	}
	files["palisade.efi"] = buildPE([]peSection{{".text", []byte("stub")}, {".osrel", files["os-release"]},
		{".cmdline", files["cmdline"]}, {".initrd", files["initrd.img"]}, {".linux", kernel}})
	for n, b := range files {
		write(t, filepath.Join(w.artifacts, n), b)
	}
	for _, sb := range []bool{false, true} {
		v, err := measure.ComputeTPM(files["palisade.efi"], sb)
		if err != nil {
			t.Fatal(err)
		}
		p := profileSBOff + "production"
		if sb {
			p = profileSBOn + "production"
		}
		w.refs = append(w.refs, attest.Reference{Profile: p, Platform: attest.PlatformTPM,
			TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: v.PCR4, 9: v.PCR9, 11: v.PCR11}}})
	}
	_, vkey, err := note.GenerateKey(rand.Reader, "palisade-keyd/c1")
	if err != nil {
		t.Fatal(err)
	}
	c := config.Config{Version: config.Version, ClusterID: "c1", Keyd: []string{"127.0.0.1:7443"},
		References: "references.json", LogKey: vkey, OwnerKey: "owner.key", Secret: "owner-secret.json",
		ManifestKey: "manifest-key.pub.pem", RekorKey: "rekor.pub.pem",
		Roots: config.Roots{SNP: map[string]config.SNPRoots{"Milan": {VCEKChain: "x.pem"}}, SNPCollateralDir: "col"}}
	b, _ := json.Marshal(c)
	write(t, filepath.Join(w.cfgDir, config.FileName), b)
	write(t, filepath.Join(w.cfgDir, "manifest-key.pub.pem"), rekortest.PublicKeyPEM(w.key.Public()))
	write(t, filepath.Join(w.cfgDir, "rekor.pub.pem"), w.log.PublicKeyPEM())
	return w
}

// bundle signs a manifest of the artifacts with refs, records it in the log
// and writes the bundle with its proof; edit may change the manifest first.
func (w *imageWorld) bundle(t *testing.T, key crypto.Signer, sv uint64, edit func(*manifest.Manifest)) (string, *manifest.Bundle) {
	t.Helper()
	names := []string{"palisade.efi", "vmlinuz", "initrd.img", "cmdline", "os-release"}
	files, err := manifest.FileDigests(os.DirFS(w.artifacts), names)
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "v1", SecurityVersion: sv,
		Files: files, References: slices.Clone(w.refs), Keyd: slices.Clone(w.refs)}
	if edit != nil {
		edit(m)
	}
	b, err := manifest.Sign(m, key)
	if err != nil {
		t.Fatal(err)
	}
	env, _ := manifest.EnvelopeBytes(b)
	i, err := w.log.Add(env, rekortest.PublicKeyPEM(key.Public()))
	if err != nil {
		t.Fatal(err)
	}
	if b.LogProof, err = w.log.Entry(i); err != nil {
		t.Fatal(err)
	}
	return w.writeBundle(t, b), b
}

func (w *imageWorld) writeBundle(t *testing.T, b *manifest.Bundle) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "manifest.dsse")
	enc, _ := json.MarshalIndent(b, "", "  ")
	write(t, p, enc)
	return p
}

func (w *imageWorld) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), append([]string{"image"}, args...), Env{Stdout: &out, Stderr: &errb, ConfigDir: w.cfgDir})
	return code, out.String(), errb.String()
}

func TestImageOK(t *testing.T) {
	w := newImageWorld(t)
	p, _ := w.bundle(t, w.key, 2, nil)
	code, out, errs := w.run(t, "--dir", w.artifacts, "--last-accepted", "2", p)
	if code != ExitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	for _, s := range []string{"image v1, security version 2", "verified offline with config.rekor_key",
		"5 SHA-256 digests match", "tpm-uefi-sb-off-production: pcr4 pcr9 pcr11 recomputed from palisade.efi: match",
		"tpm-uefi-sb-on-production: pcr4 pcr9 pcr11 recomputed from palisade.efi: match"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	// Without --dir only the signature and the log are checked, and it says so.
	if code, out, _ := w.run(t, p); code != ExitOK || !strings.Contains(out, "artifacts:  not checked (no --dir)") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	// --help shows an example.
	if code, _, errs := w.run(t, "--help"); code != ExitOK || !strings.Contains(errs, "example:\n  verifier image --dir") {
		t.Fatalf("--help: %d %s", code, errs)
	}
}

func TestImageDenied(t *testing.T) {
	w := newImageWorld(t)
	good, gb := w.bundle(t, w.key, 2, nil)
	_, other := w.bundle(t, w.key, 3, nil)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)

	withProof := func(t *testing.T, proof []byte) string {
		c := *gb
		c.LogProof = proof
		return w.writeBundle(t, &c)
	}
	cases := []struct {
		name   string
		bundle func(t *testing.T) string
		dir    func(t *testing.T) string
		setup  func(t *testing.T)
		code   int
		want   string
	}{
		{name: "signed by another key", bundle: func(t *testing.T) string { p, _ := w.bundle(t, otherKey, 2, nil); return p },
			code: ExitDenied, want: "manifest denied (chain)"},
		{name: "no log proof", bundle: func(t *testing.T) string { return withProof(t, nil) },
			code: ExitLog, want: "no transparency-log proof"},
		{name: "proof of another entry", bundle: func(t *testing.T) string { return withProof(t, other.LogProof) },
			code: ExitLog, want: "log entry is not this envelope"},
		{name: "pinned Rekor key is another log's", bundle: func(t *testing.T) string { return good },
			setup: func(t *testing.T) {
				write(t, filepath.Join(w.cfgDir, "rekor.pub.pem"), rekortest.NewLog().PublicKeyPEM())
				t.Cleanup(func() { write(t, filepath.Join(w.cfgDir, "rekor.pub.pem"), w.log.PublicKeyPEM()) })
			}, code: ExitLog, want: "log entry by another log"},
		{name: "security version below last accepted", bundle: func(t *testing.T) string { return good },
			setup: func(t *testing.T) {}, code: ExitDenied, want: "security_version 2 < last accepted 3"},
		{name: "UKI with one byte changed", bundle: func(t *testing.T) string { return good },
			dir: func(t *testing.T) string { return changedUKI(t, w, false) }, code: ExitDenied, want: "file palisade.efi: sha256"},
		{name: "PCR mismatch with a one-byte-changed UKI the manifest lists", bundle: func(t *testing.T) string {
			// The manifest lists the changed UKI's digest (as a build
			// would) but keeps the references of the original: only the
			// recomputation catches it.
			d := changedUKI(t, w, true)
			p, _ := w.bundle(t, w.key, 2, func(m *manifest.Manifest) {
				f, _ := manifest.FileDigests(os.DirFS(d), []string{"palisade.efi"})
				m.Files["palisade.efi"] = f["palisade.efi"]
			})
			return p
		}, dir: func(t *testing.T) string { return changedUKIDir }, code: ExitDenied, want: "recomputed from palisade.efi"},
		{name: "a file listed in the manifest is missing", bundle: func(t *testing.T) string { return good },
			dir: func(t *testing.T) string {
				d := copyArtifacts(t, w)
				os.Remove(filepath.Join(d, "vmlinuz"))
				return d
			}, code: ExitDenied, want: "file vmlinuz"},
		{name: "manifest without the UKI", bundle: func(t *testing.T) string {
			p, _ := w.bundle(t, w.key, 2, func(m *manifest.Manifest) { delete(m.Files, "palisade.efi") })
			return p
		}, code: ExitDenied, want: "lists no palisade.efi"},
		{name: "TPM profile of unknown secure-boot state", bundle: func(t *testing.T) string {
			p, _ := w.bundle(t, w.key, 2, func(m *manifest.Manifest) {
				r := m.References[0]
				r.Profile = "tpm-custom"
				m.References = append(m.References, r)
			})
			return p
		}, code: ExitDenied, want: `profile "tpm-custom"`},
		{name: "pcr9 missing from a TPM reference", bundle: func(t *testing.T) string {
			p, _ := w.bundle(t, w.key, 2, func(m *manifest.Manifest) {
				m.References = []attest.Reference{{Profile: profileSBOn + "production", Platform: attest.PlatformTPM,
					TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: w.refs[1].TPM.PCRs[4], 11: w.refs[1].TPM.PCRs[11]}}}}
			})
			return p
		}, code: ExitDenied, want: "no pcr9 in the manifest"},
		{name: "secure-boot states swapped", bundle: func(t *testing.T) string {
			p, _ := w.bundle(t, w.key, 2, func(m *manifest.Manifest) {
				m.References = []attest.Reference{w.refs[1], w.refs[0]}
				m.References[0].Profile, m.References[1].Profile = w.refs[0].Profile, w.refs[1].Profile
			})
			return p
		}, code: ExitDenied, want: "pcr4 is"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				c.setup(t)
			}
			p := c.bundle(t)
			dir := w.artifacts
			if c.dir != nil {
				dir = c.dir(t)
			}
			args := []string{"--dir", dir, p}
			if strings.HasPrefix(c.name, "security version") {
				args = append([]string{"--last-accepted", "3"}, args...)
			}
			code, out, errs := w.run(t, args...)
			t.Logf("exit %d: %s", code, errs)
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d, want %d with %q\nstdout:\n%s\nstderr:\n%s", code, c.code, c.want, out, errs)
			}
		})
	}
	t.Run("baseline still verifies", func(t *testing.T) {
		if code, out, errs := w.run(t, "--dir", w.artifacts, good); code != ExitOK {
			t.Fatalf("exit %d\n%s%s", code, out, errs)
		}
	})
	t.Run("config without rekor_key", func(t *testing.T) {
		var c config.Config
		b, _ := os.ReadFile(filepath.Join(w.cfgDir, config.FileName))
		json.Unmarshal(b, &c)
		c.ManifestKey, c.RekorKey = "manifest-key.pub.pem", ""
		nb, _ := json.Marshal(c)
		write(t, filepath.Join(w.cfgDir, config.FileName), nb)
		defer write(t, filepath.Join(w.cfgDir, config.FileName), b)
		if code, _, errs := w.run(t, good); code != ExitError || !strings.Contains(errs, "config.rekor_key: empty") {
			t.Fatalf("exit %d: %s", code, errs)
		}
	})
}

var changedUKIDir string

// changedUKI copies the artifacts with one byte of the UKI's .cmdline
// section changed (the UKI stays a valid PE); with remember it also
// records the directory for the case that reads it back.
func changedUKI(t *testing.T, w *imageWorld, remember bool) string {
	t.Helper()
	d := copyArtifacts(t, w)
	p := filepath.Join(d, "palisade.efi")
	b, _ := os.ReadFile(p)
	i := bytes.Index(b, []byte("console=ttyS0"))
	if i < 0 {
		t.Fatal("no cmdline in the UKI")
	}
	b[i] = 'C'
	write(t, p, b)
	if remember {
		changedUKIDir = d
	}
	return d
}

func copyArtifacts(t *testing.T, w *imageWorld) string {
	t.Helper()
	d := t.TempDir()
	for _, n := range []string{"palisade.efi", "vmlinuz", "initrd.img", "cmdline", "os-release"} {
		b, err := os.ReadFile(filepath.Join(w.artifacts, n))
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(d, n), b)
	}
	return d
}

// TestImageRollbackFloor: the highest accepted security version is kept in
// the configuration directory and denies older manifests in later runs.
func TestImageRollbackFloor(t *testing.T) {
	w := newImageWorld(t)
	floor := filepath.Join(w.cfgDir, config.AcceptedVersionName)
	p3, _ := w.bundle(t, w.key, 3, nil)
	p2, _ := w.bundle(t, w.key, 2, nil)
	p4, _ := w.bundle(t, w.key, 4, nil)
	step := func(p string, wantCode int, want string) {
		t.Helper()
		code, out, errs := w.run(t, p)
		if code != wantCode || !strings.Contains(out+errs, want) {
			t.Fatalf("exit %d, want %d with %q:\n%s%s", code, wantCode, want, out, errs)
		}
	}
	step(p3, ExitOK, "floor raised to 3")
	if b, err := os.ReadFile(floor); err != nil || string(b) != "3\n" {
		t.Fatalf("floor file %q, %v; want \"3\\n\"", b, err)
	}
	step(p2, ExitDenied, "security_version 2 < last accepted 3")
	step(p2, ExitDenied, "kept in "+floor)
	step(p3, ExitOK, "3 is not below the floor 3")
	step(p4, ExitOK, "floor raised to 4")
	// --last-accepted adds a floor; it never lowers the stored one.
	if code, out, errs := w.run(t, "--last-accepted", "1", p3); code != ExitDenied {
		t.Fatalf("--last-accepted 1 let 3 pass a stored floor of 4: exit %d\n%s%s", code, out, errs)
	}
	if b, _ := os.ReadFile(floor); string(b) != "4\n" {
		t.Fatalf("floor file %q after a denial, want \"4\\n\"", b)
	}
	write(t, floor, []byte("four\n"))
	step(p4, ExitError, "is not a security version")
}

// cvmWorld adds SEV-SNP and TDX references of a synthetic firmware, as
// images build computes them, to an image world.
func cvmWorld(t *testing.T) (*imageWorld, *reference.Firmware) {
	t.Helper()
	w := newImageWorld(t)
	sev := fwtest.DefaultSEV()
	fw := &reference.Firmware{SNP: fwtest.Image(&sev, nil), TDX: fwtest.Image(nil, fwtest.DefaultTDX())}
	uki, err := os.ReadFile(filepath.Join(w.artifacts, ukiName))
	if err != nil {
		t.Fatal(err)
	}
	boot := attest.TDXReference{RTMR: [4]attest.HexBytes{bytes.Repeat([]byte{0xa0}, 48)},
		TDAttributes: make([]byte, 8), XFAM: []byte{0xe7, 0x02, 0x06, 0, 0, 0, 0, 0}, SeptVEDisable: true, MinTEETCBSVN: make([]byte, 16)}
	refs, missing, err := reference.CVMReferences(uki, reference.CVMOptions{Image: "production", Firmware: *fw,
		Shapes: reference.Shapes, SNP: attest.SNPReference{Product: "Milan"},
		TDXBoots: []reference.TDXBoot{{Shape: reference.Shapes[0].Name, Reference: boot}}})
	if err != nil || len(refs) != len(reference.Shapes)+1 {
		t.Fatalf("CVMReferences: %d refs, %v (missing %v)", len(refs), err, missing)
	}
	w.refs = append(w.refs, refs...)
	return w, fw
}

func (w *imageWorld) runFirmware(t *testing.T, fw *reference.Firmware, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	load := func(string) (*reference.Firmware, error) { return fw, nil }
	code := Run(context.Background(), append([]string{"image", "--firmware", "fw-dir"}, args...),
		Env{Stdout: &out, Stderr: &errb, ConfigDir: w.cfgDir, LoadFirmware: load})
	return code, out.String(), errb.String()
}

// TestImageCVM: with --firmware, every SEV-SNP and TDX value the build
// computed is recomputed from the UKI and the firmware; one changed value
// in a signed, logged manifest is a denial naming the profile and value.
func TestImageCVM(t *testing.T) {
	w, fw := cvmWorld(t)
	p, _ := w.bundle(t, w.key, 1, nil)
	code, out, errs := w.runFirmware(t, fw, "--dir", w.artifacts, p)
	if code != ExitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	for _, sh := range reference.Shapes {
		if want := reference.SNPProfile(fw.SNP, sh.Name, "production") + ": measurement recomputed"; !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if want := reference.TDXProfile(fw.TDX, reference.Shapes[0].Name, false, "production") + ": mrtd rtmr1 rtmr2 rtmr3 recomputed"; !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}

	flip := func(b attest.HexBytes) attest.HexBytes { c := bytes.Clone(b); c[0] ^= 1; return c }
	for name, c := range map[string]struct {
		edit func(*manifest.Manifest)
		want string
	}{
		"snp measurement": {func(m *manifest.Manifest) {
			for i := range m.References {
				if r := &m.References[i]; r.SNP != nil {
					s := *r.SNP
					s.Measurement = flip(s.Measurement)
					r.SNP = &s
					return
				}
			}
		}, "measurement is"},
		"tdx rtmr1": {func(m *manifest.Manifest) {
			for i := range m.References {
				if r := &m.References[i]; r.TDX != nil {
					x := *r.TDX
					x.RTMR[1] = flip(x.RTMR[1])
					r.TDX = &x
				}
			}
		}, "rtmr1 is"},
		"tdx mrtd": {func(m *manifest.Manifest) {
			for i := range m.References {
				if r := &m.References[i]; r.TDX != nil {
					x := *r.TDX
					x.MRTD = flip(x.MRTD)
					r.TDX = &x
				}
			}
		}, "mrtd is"},
		"only another firmware's": {func(m *manifest.Manifest) {
			var keep []attest.Reference
			for _, r := range m.References {
				if r.SNP != nil {
					r.Profile = strings.Replace(r.Profile, "sev-snp-ovmf-", "sev-snp-ovmf-0", 1)
				}
				keep = append(keep, r)
			}
			m.References = keep
		}, "none of the manifest's 2 sev-snp references"},
	} {
		t.Run(name, func(t *testing.T) {
			p, _ := w.bundle(t, w.key, 1, c.edit)
			code, out, errs := w.runFirmware(t, fw, "--dir", w.artifacts, p)
			if code != ExitDenied || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s%s", code, ExitDenied, c.want, out, errs)
			}
		})
	}
	if code, _, errs := w.runFirmware(t, fw, p); code != ExitUsage || !strings.Contains(errs, "--firmware needs --dir") {
		t.Errorf("--firmware without --dir: exit %d %s", code, errs)
	}
}
