// Package build produces Palisade's measured image bit for bit reproducibly:
// Debian's pinned kernel, a u-root-style initramfs with the init, and a UKI,
// then the TPM reference values computed from what was built and, given the
// pinned firmware, the SEV-SNP and TDX launch values of each VM shape.
//
// It is not a signer and publishes nothing: see internal/manifest.
package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/palisade-cc/palisade/images/cpio"
	"github.com/palisade-cc/palisade/images/uki"
	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	"github.com/palisade-cc/palisade/internal/measure"
	"github.com/palisade-cc/palisade/internal/modalias"
	"github.com/u-root/u-root/pkg/kmodule"
)

// Kernel pins Debian's signed kernel package by version and hash.
type Kernel struct {
	Package, Version, SHA256, Release string
}

// DefaultKernel is bookworm's 6.1 kernel. Changing it changes every
// reference value; bump it deliberately.
var DefaultKernel = Kernel{
	Package: "linux-image-6.1.0-50-amd64",
	Version: "6.1.176-1",
	SHA256:  "7b5597492a0a65aee61985a492e6bcc3f2cde830072a0e3b3d8c7e1b90279bd3",
	Release: "6.1.0-50-amd64",
}

// Options configure one build.
type Options struct {
	Profile string // api.ProfileProduction, api.ProfileControlPlane or api.ProfileDebug
	Version string // image version, into .osrel and the manifest
	// Epoch is SOURCE_DATE_EPOCH: every mtime in the initramfs.
	Epoch int64
	// Root is the repository (module root) the Go commands are built from.
	Root string
	// Out receives the artifacts; Cache keeps the downloaded kernel.
	Out, Cache string
	// ManifestKey is the PEM public key compiled into the image.
	ManifestKey []byte
	// TPMFirmware are firmware profiles recorded from reference boots; the
	// TPM references then pin their PCRs 0–3, 5–7 (tpmfirmware.go).
	TPMFirmware []TPMFirmware
	// RekorKey is the Rekor log's PEM public key compiled into the image
	// (RekorKeyPath): attestd then requires the manifest's inclusion proof.
	RekorKey []byte
	Kernel   Kernel
	Stub     string
	Log      io.Writer
	// Firmware, when set, adds the SEV-SNP and TDX references of every
	// shape in reference.Shapes (nil: TPM references only).
	Firmware *reference.Firmware
	// SNP is the owner's SEV-SNP policy for those references (Product is
	// required); TDXBoots are the reference boots' TDX values.
	SNP      attest.SNPReference
	TDXBoots []reference.TDXBoot
	// Roots is a directory whose regular files (internal/roots'
	// roots.json and the PEM and collateral files it names) go into the
	// initramfs at RootsDir: the trust anchors attestd judges keyd with.
	// They are measured with the initrd, so a test image pinning test roots
	// never measures like a production one. Empty: no roots (the image can
	// judge no keyd, and says so at build time).
	Roots string
	// ManifestWithoutLogProof makes attestd accept a signed manifest
	// without a transparency-log proof (its flag of that name). Measured,
	// like everything the init starts.
	ManifestWithoutLogProof bool
}

// RootsDir is where the pinned roots live inside the image.
const RootsDir = "/etc/palisade/roots"

// Cmdlines per profile. debug differs, so a debug UKI never measures like a
// production one (PCR9, PCR11, launch digests).
var Cmdlines = map[string]string{
	api.ProfileProduction: "console=ttyS0 panic=-1 rdinit=/init",
	// control-plane measures differently through its initrd (keyd, its
	// init.json); the cmdline needs no marker of its own.
	api.ProfileControlPlane: "console=ttyS0 panic=-1 rdinit=/init",
	api.ProfileDebug:        "console=ttyS0 panic=-1 rdinit=/init palisade.debug=1",
}

// DebugTools are the u-root commands of the debug profile (pinned through
// initramfs/tools.go).
var DebugTools = []string{"gosh", "ls", "cat", "dmesg", "ip", "ps"}

// Components are the stages' commands; each is built into the image when
// its package exists in the tree, and reported missing otherwise (init
// then stops at that stage: nothing is faked).
var Components = map[string]string{
	"attestd": "./attestd/cmd/attestd",
	"meshd":   "./meshd/cmd/meshd",
}

// ProfileComponents are the commands only some profiles carry: keyd is in
// the control-plane image only (its "keyd node" stage).
var ProfileComponents = map[string]map[string]string{
	api.ProfileControlPlane: {"keyd": "./keyd/cmd/keyd"},
}

// Result lists what a build wrote.
type Result struct {
	Dir        string
	Files      map[string]string // name → sha256 hex
	References []attest.Reference
}

func (o *Options) logf(format string, a ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, "images: "+format+"\n", a...)
	}
}

// Build runs every step and writes Out/<profile>/.
func Build(ctx context.Context, o Options) (*Result, error) {
	if _, ok := Cmdlines[o.Profile]; !ok {
		return nil, fmt.Errorf("profile %q: want %s, %s or %s", o.Profile, api.ProfileProduction, api.ProfileControlPlane, api.ProfileDebug)
	}
	if o.Kernel.Package == "" {
		o.Kernel = DefaultKernel
	}
	if o.Stub == "" {
		o.Stub = uki.DefaultStub
	}
	dir := filepath.Join(o.Out, o.Profile)
	work := filepath.Join(o.Out, "work-"+o.Profile)
	if err := os.RemoveAll(work); err != nil {
		return nil, err
	}
	for _, d := range []string{dir, work, o.Cache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	defer os.RemoveAll(work)

	o.logf("[1/6] kernel %s %s", o.Kernel.Package, o.Kernel.Version)
	kroot := filepath.Join(work, "kernel")
	if err := fetchKernel(ctx, o, kroot); err != nil {
		return nil, err
	}
	vmlinuz, err := os.ReadFile(filepath.Join(kroot, "boot", "vmlinuz-"+o.Kernel.Release))
	if err != nil {
		return nil, err
	}
	if err := checkKernelSignature(vmlinuz); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}

	a := cpio.New()
	cfg := api.Default(o.Profile)
	if len(o.RekorKey) > 0 {
		if o.ManifestWithoutLogProof {
			return nil, fmt.Errorf("rekor key and manifest-without-log-proof together: an image pins a log or is a test image, not both")
		}
		cfg.RekorKey = RekorKeyPath
	}
	o.logf("[2/6] modules %s; if their device is present: %s", strings.Join(cfg.Modules, " "), strings.Join(cfg.DeviceModules, " "))
	if err := addModules(ctx, o, kroot, work, cfg.Modules, cfg.DeviceModules, a); err != nil {
		return nil, err
	}

	o.logf("[3/6] go build init, components%s", map[bool]string{true: ", debug tools", false: ""}[o.Profile == api.ProfileDebug])
	bins := map[string]string{"init": "./initramfs/cmd/init"}
	for name, pkg := range profileComponents(o.Profile) {
		if _, err := os.Stat(filepath.Join(o.Root, pkg)); err != nil {
			o.logf("      %s: %s not in this tree; the image's init will report the stage missing", name, pkg)
			continue
		}
		bins[name] = pkg
	}
	if o.Profile == api.ProfileDebug {
		for _, t := range DebugTools {
			bins[t] = "github.com/u-root/u-root/cmds/core/" + t
		}
	}
	if err := goBuild(ctx, o, bins, filepath.Join(work, "bin"), a); err != nil {
		return nil, err
	}
	cfg.Stages = presentStages(o, cfg.Stages, bins)
	if err := addUserland(ctx, o, work, a); err != nil {
		return nil, err
	}
	if err := addRoots(o, a); err != nil {
		return nil, err
	}
	cb, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := a.File(strings.TrimPrefix(api.ConfigPath, "/"), 0o644, append(cb, '\n')); err != nil {
		return nil, err
	}
	if len(o.RekorKey) > 0 {
		if err := a.File(strings.TrimPrefix(RekorKeyPath, "/"), 0o644, o.RekorKey); err != nil {
			return nil, err
		}
	} else {
		o.logf("      no Rekor key given: the image accepts a manifest only if it was built with --manifest-without-log-proof")
	}
	if len(o.ManifestKey) > 0 {
		if err := a.File(strings.TrimPrefix(cfg.ManifestKey, "/"), 0o644, o.ManifestKey); err != nil {
			return nil, err
		}
	} else {
		o.logf("      no manifest key given: the image cannot judge keyd (pass --manifest-key)")
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc"} {
		if err := a.Add(cpio.Entry{Name: d, Mode: fs.ModeDir | 0o755}); err != nil {
			return nil, err
		}
	}
	if err := a.Add(cpio.Entry{Name: "init", Mode: fs.ModeSymlink | 0o777, Data: []byte("/bin/init")}); err != nil {
		return nil, err
	}

	o.logf("[4/6] initramfs (%d entries, mtime %d)", len(a.Names()), o.Epoch)
	var initrd bytes.Buffer
	if err := a.Gzip(&initrd, o.Epoch); err != nil {
		return nil, err
	}
	osrel := fmt.Sprintf("ID=palisade\nNAME=Palisade\nVERSION_ID=%s\nVARIANT_ID=%s\nKERNEL=%s\n", o.Version, o.Profile, o.Kernel.Version)
	files := map[string][]byte{
		"vmlinuz": vmlinuz, "initrd.img": initrd.Bytes(),
		"cmdline": []byte(Cmdlines[o.Profile]), "os-release": []byte(osrel),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return nil, err
		}
	}

	o.logf("[5/6] uki onto %s", o.Stub)
	ukiPath := filepath.Join(dir, "palisade.efi")
	secs := []uki.Section{
		{Name: ".osrel", Path: filepath.Join(dir, "os-release")},
		{Name: ".cmdline", Path: filepath.Join(dir, "cmdline")},
		{Name: ".initrd", Path: filepath.Join(dir, "initrd.img")},
		{Name: ".linux", Path: filepath.Join(dir, "vmlinuz")},
	}
	if err := uki.Build(ctx, "", o.Stub, secs, ukiPath, uint32(o.Epoch)); err != nil {
		return nil, err
	}
	ub, err := os.ReadFile(ukiPath)
	if err != nil {
		return nil, err
	}
	files["palisade.efi"] = ub

	o.logf("[6/6] reference values")
	res := &Result{Dir: dir, Files: map[string]string{}}
	tpm, err := tpmReferences(ub, o.Profile, o.TPMFirmware)
	if err != nil {
		return nil, err
	}
	if len(o.TPMFirmware) == 0 {
		o.logf("      tpm: no firmware profile (--tpm-firmware): PCR 0-3, 5-7 are not pinned, any firmware is accepted")
	}
	res.References = append(res.References, tpm...)
	if o.Firmware != nil {
		if err := reference.CheckDirectBoot(ub, files); err != nil {
			return nil, err
		}
		cvm, missing, err := reference.CVMReferences(ub, reference.CVMOptions{Image: o.Profile, Firmware: *o.Firmware, Shapes: reference.Shapes,
			SNP: o.SNP, TDXBoots: o.TDXBoots})
		if err != nil {
			return nil, err
		}
		for _, m := range missing {
			o.logf("      %s: no TDX profile", m)
		}
		for _, r := range cvm {
			o.logf("      %s", r.Profile)
		}
		res.References = append(res.References, cvm...)
	} else {
		o.logf("      no firmware given (--firmware): no sev-snp or tdx references")
	}
	var sums strings.Builder
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := sha256.Sum256(files[n])
		res.Files[n] = hex.EncodeToString(s[:])
		fmt.Fprintf(&sums, "%s  %s\n", res.Files[n], n)
	}
	if err := os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(sums.String()), 0o644); err != nil {
		return nil, err
	}
	rb, err := json.MarshalIndent(res.References, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "references.json"), append(rb, '\n'), 0o644); err != nil {
		return nil, err
	}
	o.logf("done: %s sha256 %s", ukiPath, res.Files["palisade.efi"])
	return res, nil
}

// TPMProfile names the hardware profile of a TPM reference: OVMF-style UEFI
// PXE/HTTP boot with Secure Boot off or on. PCR0–7 are the firmware's and
// are added from a reference boot of that firmware, not computed here.
func TPMProfile(image string, secureBoot bool) string {
	if secureBoot {
		return "tpm-uefi-sb-on-" + image
	}
	return "tpm-uefi-sb-off-" + image
}

func run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
	return nil
}

// fetchKernel downloads the pinned .deb with apt (into the cache), checks
// its sha256 and unpacks it with dpkg -x.
func fetchKernel(ctx context.Context, o Options, dst string) error {
	deb := filepath.Join(o.Cache, fmt.Sprintf("%s_%s_amd64.deb", o.Kernel.Package, o.Kernel.Version))
	if _, err := os.Stat(deb); err != nil {
		tmp, err := os.MkdirTemp(o.Cache, "apt-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		o.logf("      apt-get download %s=%s", o.Kernel.Package, o.Kernel.Version)
		if err := run(ctx, tmp, nil, "apt-get", "download", o.Kernel.Package+"="+o.Kernel.Version); err != nil {
			return err
		}
		m, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
		if len(m) != 1 {
			return fmt.Errorf("apt-get download: %d .deb files", len(m))
		}
		if err := os.Rename(m[0], deb); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(deb)
	if err != nil {
		return err
	}
	if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != o.Kernel.SHA256 {
		return fmt.Errorf("%s: sha256 %x, pinned %s", deb, s, o.Kernel.SHA256)
	}
	return run(ctx, "", nil, "dpkg", "-x", deb, dst)
}

// checkKernelSignature recomputes the kernel's Authenticode hash and finds
// it in the kernel's own Secure Boot signature (the SpcIndirectDataContent
// DigestInfo of Debian's signing). It is a self-test of measure.Authenticode
// on a real image on every build, not a signature check.
func checkKernelSignature(k []byte) error {
	p, err := measure.ParsePE(k)
	if err != nil {
		return err
	}
	if p.CertSize == 0 {
		return fmt.Errorf("vmlinuz is not signed; cannot self-check Authenticode")
	}
	// DigestInfo { sha256 OID, NULL } OCTET STRING(32)
	prefix, _ := hex.DecodeString("300d06096086480165030402010500" + "0420")
	want := append(prefix, p.Authenticode()...)
	if !bytes.Contains(k[p.CertOff:p.CertOff+p.CertSize], want) {
		return fmt.Errorf("Authenticode hash %x not in the kernel's signature", p.Authenticode())
	}
	return nil
}

// addModules resolves names and devNames (loaded at boot only if their
// device is present) and their dependencies against the kernel package's
// own tree, copies them into the initramfs and indexes them with depmod -b
// so the init's kmodule finds them; every device module must have aliases
// in the index, or the init could never match it.
func addModules(ctx context.Context, o Options, kroot, work string, names, devNames []string, a *cpio.Archive) error {
	rel := o.Kernel.Release
	if err := run(ctx, "", nil, "depmod", "-b", kroot, rel); err != nil {
		return err
	}
	need := map[string]bool{}
	var mu sync.Mutex // kmodule probes dependencies in parallel
	for _, n := range slices.Concat(names, devNames) {
		err := kmodule.ProbeOptions(n, "", kmodule.ProbeOpts{
			RootDir: kroot, KVer: rel, IgnoreProcMods: true,
			DryRunCB: func(p string) { mu.Lock(); need[p] = true; mu.Unlock() },
		})
		if err != nil {
			return fmt.Errorf("module %s: %w", n, err)
		}
	}
	stage := filepath.Join(work, "modroot")
	mdir := filepath.Join("lib", "modules", rel)
	src := filepath.Join(kroot, mdir)
	for p := range need {
		r, err := filepath.Rel(src, p)
		if err != nil || strings.HasPrefix(r, "..") {
			return fmt.Errorf("module %s outside %s", p, src)
		}
		if err := copyFile(p, filepath.Join(stage, mdir, r)); err != nil {
			return err
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if err := copyFile(filepath.Join(src, f), filepath.Join(stage, mdir, f)); err != nil {
			return err
		}
	}
	if err := run(ctx, "", nil, "depmod", "-b", stage, rel); err != nil {
		return err
	}
	if err := checkDeviceAliases(filepath.Join(stage, mdir, "modules.alias"), devNames); err != nil {
		return fmt.Errorf("kernel %s: %w", rel, err)
	}
	return filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(stage, p)
		o.logf("      %s", r)
		return a.File(filepath.ToSlash(r), 0o644, b)
	})
}

// checkDeviceAliases fails if a device module has no pattern in the
// initramfs's modules.alias: the init matches devices against it only.
func checkDeviceAliases(aliasFile string, devNames []string) error {
	if len(devNames) == 0 {
		return nil
	}
	b, err := os.ReadFile(aliasFile)
	if err != nil {
		return fmt.Errorf("device modules: %w", err)
	}
	aliases, err := modalias.Parse(b)
	if err != nil {
		return fmt.Errorf("device modules: %w", err)
	}
	for _, n := range devNames {
		if len(aliases[modalias.Name(n)]) == 0 {
			return fmt.Errorf("device module %s: no device aliases in modules.alias (the init could never load it)", n)
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// goBuild builds static, path-free binaries: -trimpath, no VCS stamp, no
// build ID, CGO off, a fixed GOFLAGS, so the bytes depend only on the source
// and the toolchain go.mod pins.
func goBuild(ctx context.Context, o Options, bins map[string]string, outDir string, a *cpio.Archive) error {
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1",
		"GOFLAGS=-mod=readonly", "GOEXPERIMENT=", "GOTOOLCHAIN=local")
	names := make([]string, 0, len(bins))
	for n := range bins {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out := filepath.Join(outDir, n)
		o.logf("      go build %s", bins[n])
		if err := run(ctx, o.Root, env, "go", "build", "-trimpath", "-buildvcs=false",
			"-ldflags=-s -w -buildid=", "-o", out, bins[n]); err != nil {
			return err
		}
		b, err := os.ReadFile(out)
		if err != nil {
			return err
		}
		if err := a.File("bin/"+n, 0o755, b); err != nil {
			return err
		}
	}
	return nil
}

// profileComponents are Components plus the profile's own.
func profileComponents(profile string) map[string]string {
	out := maps.Clone(Components)
	maps.Copy(out, ProfileComponents[profile])
	return out
}

// RekorKeyPath is where an image keeps the pinned Rekor log key.
const RekorKeyPath = "/etc/palisade/rekor.pub"

// presentStages keeps the stages whose command (/bin/<name>, several
// stages may share one: attestd and attestd serve) this build contains,
// saying which it drops. Every attestd stage gets
// --manifest-without-log-proof when the build says so: serve verifies the
// manifest again, as the join did; so does the control-plane's keyd stage.
func presentStages(o Options, stages []api.Stage, bins map[string]string) []api.Stage {
	var out []api.Stage
	for _, s := range stages {
		bin := path.Base(s.Path)
		if _, ok := bins[bin]; ok && s.Path == "/bin/"+bin {
			// keyd node loads the same manifest, so it waives the log
			// proof exactly when attestd does.
			if (bin == "attestd" || bin == "keyd") && o.ManifestWithoutLogProof {
				s.Args = append(slices.Clone(s.Args), "--manifest-without-log-proof")
			}
			out = append(out, s)
			continue
		}
		o.logf("      stage %s: %s is not in this image; init.json omits it", s.Name, s.Path)
	}
	return out
}

// addRoots copies the tree under o.Roots into RootsDir: roots.json and the
// PEM files and offline collateral bundles it names relative to itself.
// Only directories and regular files are taken.
func addRoots(o Options, a *cpio.Archive) error {
	if o.Roots == "" {
		o.logf("      no roots given: the image can judge no keyd (pass --roots)")
		return nil
	}
	if _, err := os.Stat(filepath.Join(o.Roots, "roots.json")); err != nil {
		return fmt.Errorf("roots: %s has no roots.json: %w", o.Roots, err)
	}
	n := 0
	base := strings.TrimPrefix(RootsDir, "/")
	err := filepath.WalkDir(o.Roots, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(o.Roots, p)
		if err != nil {
			return err
		}
		name := base + "/" + filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			if rel == "." {
				return nil
			}
			return a.Add(cpio.Entry{Name: name, Mode: fs.ModeDir | 0o755})
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n++
			return a.File(name, 0o644, b)
		}
		return fmt.Errorf("%s: neither a directory nor a regular file", p)
	})
	if err != nil {
		return fmt.Errorf("roots: %w", err)
	}
	o.logf("      roots: %d files from %s into %s", n, o.Roots, RootsDir)
	return nil
}
