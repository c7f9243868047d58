package keyd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/palisade-cc/palisade/internal/attest"
)

// The unsigned JSON manifest below exists for tests only: they build
// References from values without a signing key. keyd itself reads only the
// signed manifest (SignedManifest).

// ManifestFormat is the version of the JSON manifest file.
const ManifestFormat = 1

// maxManifestSize bounds a manifest file: a reference is under 2 KiB.
const maxManifestSize = 4 << 20

// Manifest is the JSON manifest file:
//
//	{"format": 1, "security_version": 3,
//	 "references": [{"role": "node", "reference": {attest.Reference}}, …]}
type Manifest struct {
	Format     int             `json:"format"`
	Version    uint64          `json:"security_version"`
	References []RoleReference `json:"references"`

	byKey map[roleProfile]*attest.Reference
}

// RoleReference is the reference of one profile for one role.
type RoleReference struct {
	Role      attest.Role       `json:"role"`
	Reference *attest.Reference `json:"reference"`
}

var _ References = (*Manifest)(nil)

// ParseManifest reads a manifest strictly: unknown fields, trailing data,
// invalid references and duplicate (role, profile) pairs are errors.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("manifest: %d bytes, at most %d", len(b), maxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("manifest: trailing data after the JSON object")
	}
	if m.Format != ManifestFormat {
		return nil, fmt.Errorf("manifest.format: %d, want %d", m.Format, ManifestFormat)
	}
	if m.Version == 0 {
		return nil, errors.New("manifest.security_version: 0, want ≥ 1")
	}
	if len(m.References) == 0 {
		return nil, errors.New("manifest.references: empty")
	}
	m.byKey = make(map[roleProfile]*attest.Reference, len(m.References))
	for i, rr := range m.References {
		if err := rr.Role.Validate(); err != nil {
			return nil, fmt.Errorf("manifest.references[%d].role: %w", i, err)
		}
		if rr.Reference == nil {
			return nil, fmt.Errorf("manifest.references[%d].reference: missing", i)
		}
		if err := rr.Reference.Validate(); err != nil {
			return nil, fmt.Errorf("manifest.references[%d]: %w", i, err)
		}
		k := roleProfile{rr.Role, rr.Reference.Profile}
		if _, dup := m.byKey[k]; dup {
			return nil, fmt.Errorf("manifest.references[%d]: role %q profile %q listed twice", i, rr.Role, rr.Reference.Profile)
		}
		m.byKey[k] = rr.Reference
	}
	return &m, nil
}

// Lookup implements References.
func (m *Manifest) Lookup(role attest.Role, profile string) (*attest.Reference, error) {
	r, ok := m.byKey[roleProfile{role, profile}]
	if !ok {
		return nil, fmt.Errorf("manifest (security version %d): no reference for role %q profile %q", m.Version, role, profile)
	}
	return r, nil
}

// SecurityVersion implements References.
func (m *Manifest) SecurityVersion() uint64 { return m.Version }
