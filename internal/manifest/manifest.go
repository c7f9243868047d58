// Package manifest is the signed list of what Palisade accepts: an image's
// file digests and reference values per hardware profile, in a DSSE envelope.
//
// It verifies signatures against pinned keys only and never fetches; a
// transparency-log proof is checked by a LogVerifier the caller hands in.
package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"sort"

	"github.com/palisade-cc/palisade/internal/attest"
)

// SchemaVersion is the manifest format this package writes and reads.
const SchemaVersion = 1

// PayloadType is the DSSE payloadType of a manifest.
const PayloadType = "application/vnd.palisade.manifest+json"

// MaxSize bounds an encoded bundle (manifest, signatures, log proof).
const MaxSize = 4 << 20

// Manifest is what an image's owner accepts.
type Manifest struct {
	Version      int    `json:"version"`
	ImageVersion string `json:"image_version"`
	// SecurityVersion only grows; a verifier refuses a manifest below the
	// highest it accepted before, so an old image with a known flaw cannot
	// be replayed (rollback protection).
	SecurityVersion uint64 `json:"security_version"`
	// Files maps an artifact name (palisade.efi, vmlinuz, initrd.img …) to
	// its SHA-256.
	Files map[string]attest.HexBytes `json:"files"`
	// References are the accepted values of nodes, one per hardware profile.
	References []attest.Reference `json:"references"`
	// Keyd are the accepted values of keyd itself: a node judges keyd by
	// these (ARCHITECTURE §4.4).
	Keyd []attest.Reference `json:"keyd"`
	// MinTCB are the lowest platform TCBs accepted for any profile.
	MinTCB MinTCB `json:"min_tcb"`
}

// MinTCB are the lowest accepted TCB levels, per platform.
type MinTCB struct {
	SNP          *attest.SNPTCB  `json:"sev_snp,omitempty"`
	TDXTEETCBSVN attest.HexBytes `json:"tdx_tee_tcb_svn,omitempty"`
}

// Validate names the first bad field.
func (m *Manifest) Validate() error {
	if m.Version != SchemaVersion {
		return fmt.Errorf("version: %d, want %d", m.Version, SchemaVersion)
	}
	if m.ImageVersion == "" {
		return fmt.Errorf("image_version: empty")
	}
	if len(m.Files) == 0 {
		return fmt.Errorf("files: empty")
	}
	for n, d := range m.Files {
		if n == "" || path.Base(n) != n {
			return fmt.Errorf("files[%q]: want a plain file name", n)
		}
		if len(d) != sha256.Size {
			return fmt.Errorf("files[%q]: %d bytes, want a SHA-256", n, len(d))
		}
	}
	if len(m.References) == 0 {
		return fmt.Errorf("references: empty")
	}
	for _, set := range []struct {
		name string
		refs []attest.Reference
	}{{"references", m.References}, {"keyd", m.Keyd}} {
		seen := map[string]bool{}
		for i := range set.refs {
			r := &set.refs[i]
			if err := r.Validate(); err != nil {
				return fmt.Errorf("%s[%d]: %w", set.name, i, err)
			}
			if seen[r.Profile] {
				return fmt.Errorf("%s[%d]: profile %q repeated", set.name, i, r.Profile)
			}
			seen[r.Profile] = true
		}
	}
	if t := m.MinTCB.TDXTEETCBSVN; len(t) != 0 && len(t) != 16 {
		return fmt.Errorf("min_tcb.tdx_tee_tcb_svn: %d bytes, want 16", len(t))
	}
	return nil
}

// Reference returns the node reference of profile, or nil.
func (m *Manifest) Reference(profile string) *attest.Reference {
	for i := range m.References {
		if m.References[i].Profile == profile {
			return &m.References[i]
		}
	}
	return nil
}

// Encode writes the canonical payload: Go's encoding/json sorts map keys,
// so one manifest always encodes to the same bytes.
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return json.Marshal(m)
}

// Decode parses a payload strictly: unknown fields and trailing data are
// errors, so nothing unsigned-for can ride along unnoticed.
func Decode(b []byte) (*Manifest, error) {
	var m Manifest
	if err := strictUnmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	m.applyMinTCB()
	return &m, nil
}

// applyMinTCB raises every SEV-SNP and TDX reference's own TCB floor to the
// manifest-wide one, component by component, so the verifiers (which read
// only a reference's floor) enforce min_tcb: a field of the signed manifest
// that nothing applied would be an unchecked promise.
func (m *Manifest) applyMinTCB() {
	for _, set := range [][]attest.Reference{m.References, m.Keyd} {
		for i := range set {
			if s, f := set[i].SNP, m.MinTCB.SNP; s != nil && f != nil {
				s.MinTCB = maxSNPTCB(s.MinTCB, *f)
			}
			if t, f := set[i].TDX, m.MinTCB.TDXTEETCBSVN; t != nil && len(f) == 16 {
				if len(t.MinTEETCBSVN) != 16 {
					t.MinTEETCBSVN = make(attest.HexBytes, 16)
				}
				for j := range f {
					t.MinTEETCBSVN[j] = max(t.MinTEETCBSVN[j], f[j])
				}
			}
		}
	}
}

func maxSNPTCB(a, b attest.SNPTCB) attest.SNPTCB {
	return attest.SNPTCB{BootLoader: max(a.BootLoader, b.BootLoader), TEE: max(a.TEE, b.TEE),
		SNP: max(a.SNP, b.SNP), Microcode: max(a.Microcode, b.Microcode), FMC: max(a.FMC, b.FMC)}
}

func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// FileDigests hashes the named files of fsys.
func FileDigests(fsys fs.FS, names []string) (map[string]attest.HexBytes, error) {
	out := map[string]attest.HexBytes{}
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, err
		}
		s := sha256.Sum256(b)
		out[n] = s[:]
	}
	return out, nil
}

// CheckFiles checks every file the manifest lists against fsys and names
// the first that differs or is missing (sorted by name).
func (m *Manifest) CheckFiles(fsys fs.FS) error {
	names := make([]string, 0, len(m.Files))
	for n := range m.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return attest.Denyf(attest.ClassMeasurement, "file %s: %w: %v", n, ErrFileDigest, err)
		}
		s := sha256.Sum256(b)
		if !bytes.Equal(s[:], m.Files[n]) {
			return attest.Denyf(attest.ClassMeasurement, "file %s: sha256 %s, manifest says %s: %w", n, hex.EncodeToString(s[:]), m.Files[n], ErrFileDigest)
		}
	}
	return nil
}
