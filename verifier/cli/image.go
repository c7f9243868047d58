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

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/boundedfile"
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
	var dir string
	var last uint64
	return &command{
		name: "image", usage: "image MANIFEST",
		help: "Check an image manifest offline: its signature by config.manifest_key, its Rekor\n" +
			"inclusion proof against config.rekor_key (never skipped) and, with --dir, every\n" +
			"listed file's SHA-256 and the TPM reference values (PCR4 with secure boot off\n" +
			"and on, PCR9, PCR11) recomputed from the UKI.\n" +
			"Rollback: a manifest whose security version is below the highest one this\n" +
			"command accepted before is denied; that floor is kept in the configuration\n" +
			"directory (" + config.AcceptedVersionName + ") and raised by every accepted manifest.",
		example: "  verifier image --dir out/image/production out/image/production/manifest.dsse\n" +
			"  verifier image --last-accepted 3 manifest.dsse",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the image's artifacts (palisade.efi, vmlinuz, …): check digests and recompute TPM values")
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
			stored, err := c.AcceptedVersion()
			if err != nil {
				return err
			}
			v, err := verifyImage(e, args[0], dir, max(last, stored), mk, lk)
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
func verifyImage(e *Env, bundlePath, dir string, last uint64, mk, lk crypto.PublicKey) (uint64, error) {
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
	lines, err := checkTPMReferences(m.References, uki)
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\n", l)
	}
	if err != nil {
		return 0, fail(ExitDenied, "%s: %v", dir, err)
	}
	return m.SecurityVersion, nil
}

// checkTPMReferences recomputes PCR4, PCR9 and PCR11 from the UKI for each
// TPM node reference (with the secure-boot state its profile names) and
// compares them with the manifest's. It returns a report line per profile
// and the first mismatch. Keyd's references may come from another image
// and are not checked here; CVM references need the firmware build.
func checkTPMReferences(refs []attest.Reference, uki []byte) ([]string, error) {
	computed := map[bool]*measure.TPM{}
	var lines []string
	sorted := append([]attest.Reference(nil), refs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Profile < sorted[j].Profile })
	for _, r := range sorted {
		if r.Platform != attest.PlatformTPM || r.TPM == nil {
			lines = append(lines, fmt.Sprintf("%s (%s): not recomputed here (needs the firmware build: images build --firmware)", r.Profile, r.Platform))
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
