package cli

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/boundedfile"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/measure"
	"github.com/palisade-cc/palisade/verifier/config"
)

// The UKI's file name in an image's artifacts (images build writes it).
const ukiName = "palisade.efi"

// maxUKI bounds the UKI read to recompute its measurements.
const maxUKI = 512 << 20

// TPM profiles are named by images build (build.TPMProfile): the secure-boot
// state decides PCR4's structure (ARCHITECTURE §3), so it is part of the name.
const (
	profileSBOn  = "tpm-uefi-sb-on-"
	profileSBOff = "tpm-uefi-sb-off-"
)

func cmdImage() *command {
	var dir, fwDir string
	var last uint64
	return &command{
		name: "image", usage: "image MANIFEST",
		help: "Check an image manifest offline: its signature by config.manifest_key, its Rekor\n" +
			"inclusion proof against config.rekor_key (never skipped) and, with --dir, every\n" +
			"listed file's SHA-256 and the TPM reference values (PCR4 with secure boot off\n" +
			"and on, PCR9, PCR11) recomputed from the UKI; with --firmware too, the SEV-SNP\n" +
			"MEASUREMENT and the TDX MRTD and RTMR1-3 recomputed from the UKI and the\n" +
			"pinned firmware (scripts/firmware.sh builds it from source; its digests are checked).\n" +
			"Rollback: a manifest whose security version is below the highest one this\n" +
			"command accepted before is denied; that floor is kept in the configuration\n" +
			"directory (" + config.AcceptedVersionName + ") and raised by every accepted manifest.",
		example: "  verifier image --dir out/image/production out/image/production/manifest.dsse\n" +
			"  verifier image --dir out/image/production --firmware \"$(scripts/firmware.sh | tail -n 1)\" out/image/production/manifest.dsse\n" +
			"  verifier image --last-accepted 3 manifest.dsse",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the image's artifacts (palisade.efi, vmlinuz, …): check digests and recompute TPM values")
			fs.StringVar(&fwDir, "firmware", "", "the pinned confidential-VM firmware (OVMF.amdsev.fd, OVMF.inteltdx.fd): recompute SEV-SNP and TDX values (needs --dir)")
			fs.Uint64Var(&last, "last-accepted", 0, "deny security versions below this one too (the stored floor always applies)")
		},
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			if err := nargs(fs, args, 1); err != nil {
				return err
			}
			c, err := e.load()
			if err != nil {
				return err
			}
			mk, err := c.ReadManifestKey()
			if err != nil {
				return err
			}
			lk, err := c.ReadRekorKey()
			if err != nil {
				return err
			}
			var fw *reference.Firmware
			if fwDir != "" {
				if dir == "" {
					return fail(ExitUsage, "--firmware needs --dir: the values are recomputed from the image's UKI")
				}
				load := e.LoadFirmware
				if load == nil {
					load = reference.LoadFirmware
				}
				if fw, err = load(fwDir); err != nil {
					return fail(ExitError, "--firmware %s: %v", fwDir, err)
				}
			}
			stored, err := c.AcceptedVersion()
			if err != nil {
				return err
			}
			v, err := verifyImage(e, args[0], dir, fw, max(last, stored), mk, lk)
			if err != nil {
				if stored > last && errors.Is(err, manifest.ErrRollback) {
					fmt.Fprintf(e.Stderr, "verifier: the floor %d is the highest security version accepted before, kept in %s\n",
						stored, c.Path(config.AcceptedVersionName))
				}
				return err
			}
			if v > stored {
				if err := c.SaveAcceptedVersion(v); err != nil {
					return fail(ExitError, "accepted, but the rollback floor was not recorded: %v", err)
				}
				fmt.Fprintf(e.Stdout, "  rollback:   floor raised to %d (%s)\n", v, c.Path(config.AcceptedVersionName))
			} else {
				fmt.Fprintf(e.Stdout, "  rollback:   %d is not below the floor %d (%s)\n", v, stored, c.Path(config.AcceptedVersionName))
			}
			return nil
		},
	}
}

// entryLog is the Rekor verifier keeping the entry it verified, for the report.
type entryLog struct {
	v     manifest.RekorVerifier
	entry *manifest.LogEntry
}

func (l *entryLog) VerifyLogProof(env []byte, proof json.RawMessage) error {
	en, err := l.v.Verify(env, proof)
	l.entry = en
	return err
}

// verifyImage returns the accepted manifest's security version.
func verifyImage(e *Env, bundlePath, dir string, fw *reference.Firmware, last uint64, mk, lk crypto.PublicKey) (uint64, error) {
	b, err := boundedfile.Read(bundlePath, manifest.MaxSize)
	if err != nil {
		return 0, fail(ExitError, "%v", err)
	}
	log := &entryLog{v: manifest.RekorVerifier{LogKey: lk, ManifestKeys: []crypto.PublicKey{mk}, Now: e.Now}}
	res, err := manifest.Verify(b, manifest.Options{Keys: []crypto.PublicKey{mk}, LastAccepted: last, Log: log})
	if err != nil {
		// A proof that is missing or does not verify is the log's failure
		// class; a bad signature, shape or version is the manifest's.
		if errors.Is(err, manifest.ErrNoLogProof) || errors.Is(err, manifest.ErrLogProof) {
			return 0, fail(ExitLog, "%s: transparency log (%s): %v", bundlePath, attest.ClassOf(err), err)
		}
		return 0, fail(ExitDenied, "%s: manifest denied (%s): %w", bundlePath, attest.ClassOf(err), err)
	}
	m := res.Manifest
	w := e.Stdout
	fmt.Fprintf(w, "%s: image %s, security version %d\n", bundlePath, m.ImageVersion, m.SecurityVersion)
	fmt.Fprintf(w, "  signature:  by config.manifest_key (key id %.16s…)\n", res.KeyID)
	if en := log.entry; en != nil {
		fmt.Fprintf(w, "  rekor:      entry %d integrated %s, in tree size %d (%q), verified offline with config.rekor_key\n",
			en.LogIndex(), en.IntegratedTime().Format(time.RFC3339), en.Checkpoint.Size, en.Checkpoint.Origin)
	}
	if dir == "" {
		fmt.Fprintln(w, "  artifacts:  not checked (no --dir)")
		return m.SecurityVersion, nil
	}
	if err := m.CheckFiles(os.DirFS(dir)); err != nil {
		return 0, fail(ExitDenied, "%s: %v", dir, err)
	}
	fmt.Fprintf(w, "  files:      %d SHA-256 digests match in %s\n", len(m.Files), dir)
	if _, ok := m.Files[ukiName]; !ok {
		return 0, fail(ExitDenied, "%s: the manifest lists no %s: its TPM values cannot be recomputed", bundlePath, ukiName)
	}
	uki, err := boundedfile.Read(filepath.Join(dir, ukiName), maxUKI)
	if err != nil {
		return 0, fail(ExitError, "%v", err)
	}
	lines, err := checkTPMReferences(m.References, uki, fw == nil)
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\n", l)
	}
	if err != nil {
		return 0, fail(ExitDenied, "%s: %v", dir, err)
	}
	if fw != nil {
		lines, err := checkCVMReferences(m.References, uki, fw)
		for _, l := range lines {
			fmt.Fprintf(w, "  %s\n", l)
		}
		if err != nil {
			return 0, fail(ExitDenied, "%s: %v", dir, err)
		}
	}
	return m.SecurityVersion, nil
}

// checkTPMReferences recomputes PCR4, PCR9 and PCR11 from the UKI for each
// TPM node reference (with the secure-boot state its profile names) and
// compares them with the manifest's. It returns a report line per profile
// and the first mismatch. Keyd's references may come from another image
// and are not checked here; CVM references need the firmware build.
func checkTPMReferences(refs []attest.Reference, uki []byte, cvmHint bool) ([]string, error) {
	computed := map[bool]*measure.TPM{}
	var lines []string
	sorted := append([]attest.Reference(nil), refs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Profile < sorted[j].Profile })
	for _, r := range sorted {
		if r.Platform != attest.PlatformTPM || r.TPM == nil {
			if cvmHint {
				lines = append(lines, fmt.Sprintf("%s (%s): not recomputed (pass --firmware, the directory scripts/firmware.sh prints)", r.Profile, r.Platform))
			}
			continue
		}
		var sb bool
		switch {
		case strings.HasPrefix(r.Profile, profileSBOn):
			sb = true
		case strings.HasPrefix(r.Profile, profileSBOff):
		default:
			return lines, attest.Denyf(attest.ClassMeasurement, "profile %q: not %s… or %s…, its secure-boot state and so its PCR4 are unknown", r.Profile, profileSBOff, profileSBOn)
		}
		v := computed[sb]
		if v == nil {
			var err error
			if v, err = measure.ComputeTPM(uki, sb); err != nil {
				return lines, attest.Denyf(attest.ClassMeasurement, "%s: %v", ukiName, err)
			}
			computed[sb] = v
		}
		for _, p := range []struct {
			n   int
			got []byte
		}{{4, v.PCR4}, {9, v.PCR9}, {11, v.PCR11}} {
			want, ok := r.TPM.PCRs[p.n]
			if !ok {
				return lines, attest.Denyf(attest.ClassMeasurement, "profile %s: no pcr%d in the manifest", r.Profile, p.n)
			}
			if !bytes.Equal(want, p.got) {
				return lines, attest.Denyf(attest.ClassMeasurement, "profile %s: pcr%d is %s in the manifest, %s recomputed from %s",
					r.Profile, p.n, hex.EncodeToString(want), hex.EncodeToString(p.got), ukiName)
			}
		}
		var others []string
		for n := range r.TPM.PCRs {
			if n != 4 && n != 9 && n != 11 {
				others = append(others, fmt.Sprintf("pcr%d", n))
			}
		}
		sort.Strings(others)
		l := fmt.Sprintf("%s: pcr4 pcr9 pcr11 recomputed from %s: match", r.Profile, ukiName)
		if len(others) > 0 {
			l += fmt.Sprintf(" (%s: firmware values, not derived from the image)", strings.Join(others, " "))
		}
		lines = append(lines, l)
	}
	return lines, nil
}

// imageProfiles are the image profiles a CVM reference may name
// (initramfs/api's profiles).
var imageProfiles = []string{api.ProfileProduction, api.ProfileControlPlane, api.ProfileDebug}

// cvmTarget is what a CVM profile name says was measured: the firmware
// (by digest prefix), the VM shape, Secure Boot (TDX) and the image.
type cvmTarget struct {
	shape      reference.Shape
	secureBoot bool
	image      string
}

// cvmTargets maps every CVM profile name this firmware can produce to what
// it measured.
func cvmTargets(fw *reference.Firmware) map[string]cvmTarget {
	out := map[string]cvmTarget{}
	for _, img := range imageProfiles {
		for _, sh := range reference.Shapes {
			out[reference.SNPProfile(fw.SNP, sh.Name, img)] = cvmTarget{shape: sh, image: img}
			for _, sb := range []bool{false, true} {
				out[reference.TDXProfile(fw.TDX, sh.Name, sb, img)] = cvmTarget{shape: sh, secureBoot: sb, image: img}
			}
		}
	}
	return out
}

// checkCVMReferences recomputes each SEV-SNP and TDX reference of the
// manifest whose profile names this firmware, with the code images build
// uses (internal/cvm/reference): the SEV-SNP MEASUREMENT of its shape, and
// TDX MRTD and RTMR1-3 (RTMR0, the TD attributes and XFAM come from a
// reference boot and are taken as recorded). A reference built for another
// firmware is reported, not recomputed; a platform of which no reference
// could be recomputed is an error, as is any mismatch.
func checkCVMReferences(refs []attest.Reference, uki []byte, fw *reference.Firmware) ([]string, error) {
	targets := cvmTargets(fw)
	var lines []string
	checked := map[attest.Platform]int{}
	seen := map[attest.Platform]int{}
	sorted := append([]attest.Reference(nil), refs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Profile < sorted[j].Profile })
	for _, r := range sorted {
		if r.Platform != attest.PlatformSNP && r.Platform != attest.PlatformTDX {
			continue
		}
		seen[r.Platform]++
		tg, ok := targets[r.Profile]
		if !ok {
			lines = append(lines, fmt.Sprintf("%s (%s): not recomputed: built for another firmware or VM shape than --firmware's", r.Profile, r.Platform))
			continue
		}
		var err error
		switch {
		case r.Platform == attest.PlatformSNP && r.SNP != nil:
			err = recomputeSNP(r, tg, uki, fw)
			if err == nil {
				lines = append(lines, fmt.Sprintf("%s: measurement recomputed from %s and the firmware: match", r.Profile, ukiName))
			}
		case r.Platform == attest.PlatformTDX && r.TDX != nil:
			err = recomputeTDX(r, tg, uki, fw)
			if err == nil {
				lines = append(lines, fmt.Sprintf("%s: mrtd rtmr1 rtmr2 rtmr3 recomputed from %s and the firmware: match (rtmr0, td_attributes, xfam: recorded from a reference boot)", r.Profile, ukiName))
			}
		default:
			err = attest.Denyf(attest.ClassMeasurement, "profile %s: platform %s without its values", r.Profile, r.Platform)
		}
		if err != nil {
			return lines, err
		}
		checked[r.Platform]++
	}
	for _, p := range []attest.Platform{attest.PlatformSNP, attest.PlatformTDX} {
		if seen[p] > 0 && checked[p] == 0 {
			return lines, attest.Denyf(attest.ClassMeasurement, "none of the manifest's %d %s references is for --firmware's build: nothing of %s could be recomputed", seen[p], p, p)
		}
	}
	if len(seen) == 0 {
		lines = append(lines, "the manifest has no SEV-SNP or TDX references")
	}
	return lines, nil
}

func recomputeSNP(r attest.Reference, tg cvmTarget, uki []byte, fw *reference.Firmware) error {
	pol := *r.SNP
	pol.Measurement = nil
	got, _, err := reference.CVMReferences(uki, reference.CVMOptions{Image: tg.image,
		Firmware: reference.Firmware{SNP: fw.SNP}, Shapes: []reference.Shape{tg.shape}, SNP: pol})
	if err != nil {
		return attest.Denyf(attest.ClassMeasurement, "profile %s: %v", r.Profile, err)
	}
	if len(got) != 1 || got[0].Profile != r.Profile {
		return attest.Denyf(attest.ClassInternal, "profile %s: recomputed %d references", r.Profile, len(got))
	}
	if !bytes.Equal(got[0].SNP.Measurement, r.SNP.Measurement) {
		return attest.Denyf(attest.ClassMeasurement, "profile %s: measurement is %x in the manifest, %x recomputed from %s and the firmware",
			r.Profile, []byte(r.SNP.Measurement), []byte(got[0].SNP.Measurement), ukiName)
	}
	return nil
}

func recomputeTDX(r attest.Reference, tg cvmTarget, uki []byte, fw *reference.Firmware) error {
	rec := *r.TDX
	rec.MRTD = nil
	rec.RTMR[1], rec.RTMR[2], rec.RTMR[3] = nil, nil, nil
	got, missing, err := reference.CVMReferences(uki, reference.CVMOptions{Image: tg.image,
		Firmware: reference.Firmware{TDX: fw.TDX}, Shapes: []reference.Shape{tg.shape},
		TDXBoots: []reference.TDXBoot{{Shape: tg.shape.Name, SecureBoot: tg.secureBoot, Reference: rec}}})
	if err != nil {
		return attest.Denyf(attest.ClassMeasurement, "profile %s: %v", r.Profile, err)
	}
	if len(got) != 1 || got[0].Profile != r.Profile {
		return attest.Denyf(attest.ClassInternal, "profile %s: recomputed %d references (%s)", r.Profile, len(got), strings.Join(missing, "; "))
	}
	c := got[0].TDX
	for _, v := range []struct {
		name      string
		want, got []byte
	}{{"mrtd", r.TDX.MRTD, c.MRTD}, {"rtmr1", r.TDX.RTMR[1], c.RTMR[1]}, {"rtmr2", r.TDX.RTMR[2], c.RTMR[2]}, {"rtmr3", r.TDX.RTMR[3], c.RTMR[3]}} {
		if !bytes.Equal(v.want, v.got) {
			return attest.Denyf(attest.ClassMeasurement, "profile %s: %s is %x in the manifest, %x recomputed from %s and the firmware",
				r.Profile, v.name, v.want, v.got, ukiName)
		}
	}
	return nil
}
