package keyd

import (
	"crypto"
	"fmt"
	"log/slog"
	"os"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
)

// References are the reference values keyd admits against: per role and
// hardware profile, and the security version of the manifest they came
// from. SignedManifest implements it from the image's signed manifest.
type References interface {
	// Lookup returns the reference of a role's profile or an error
	// naming what is missing.
	Lookup(role attest.Role, profile string) (*attest.Reference, error)
	// SecurityVersion is the manifest's security version: keyd never
	// accepts a manifest with a lower one than the highest it accepted.
	SecurityVersion() uint64
}

// ManifestOptions are the pinned state keyd judges a manifest bundle with.
type ManifestOptions struct {
	// Keys are the pinned manifest signing keys (config.manifest_keys).
	Keys []crypto.PublicKey
	// LastAccepted is the security version in force: a lower one is
	// denied before its references are indexed. Keyd.AcceptReferences
	// checks again against the highest version in the store, which also
	// survives restarts and spans replicas.
	LastAccepted uint64
	// Log verifies the bundle's transparency-log proof.
	Log manifest.LogVerifier
	// AllowNoLogProof accepts a bundle without a verified log proof
	// (config.manifest_without_log_proof, test clusters only); every such
	// acceptance is logged at error level.
	AllowNoLogProof bool
	// Logger receives that warning; nil logs to stderr.
	Logger *slog.Logger
}

// SignedManifest is a manifest bundle that verified: a signature by a pinned
// key over the payload (DSSE PAE) and, unless explicitly waived, a
// transparency-log proof. The manifest's references are the node role's,
// its keyd section the keyd role's (ARCHITECTURE §4.4). Rollback is judged
// by Keyd.AcceptReferences against the highest version in the store.
type SignedManifest struct {
	m     *manifest.Manifest
	keyID string
	log   manifest.LogStatus
	byKey map[roleProfile]*attest.Reference
}

type roleProfile struct {
	role    attest.Role
	profile string
}

var _ References = (*SignedManifest)(nil)

// ParseSignedManifest verifies a bundle (internal/manifest.Verify: shape,
// payload type, pinned-key signature, content, log proof) and indexes its
// references by role and profile. Every failure is an attest denial.
func ParseSignedManifest(bundle []byte, o ManifestOptions) (*SignedManifest, error) {
	res, err := manifest.Verify(bundle, manifest.Options{Keys: o.Keys, LastAccepted: o.LastAccepted, Log: o.Log, AllowNoLogProof: o.AllowNoLogProof})
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	m := res.Manifest
	if m.SecurityVersion == 0 {
		// 0 is what a fresh store holds: a manifest must say which
		// release it is, or revoke-version 0 could never withdraw it.
		return nil, attest.Denyf(attest.ClassMalformed, "manifest: security_version 0, want ≥ 1")
	}
	s := &SignedManifest{m: m, keyID: res.KeyID, log: res.Log, byKey: map[roleProfile]*attest.Reference{}}
	for _, set := range []struct {
		role attest.Role
		refs []attest.Reference
	}{{attest.RoleNode, m.References}, {attest.RoleKeyd, m.Keyd}} {
		for i := range set.refs {
			// manifest.Validate already refused invalid and repeated
			// profiles within a section.
			s.byKey[roleProfile{set.role, set.refs[i].Profile}] = &set.refs[i]
		}
	}
	if res.Log != manifest.LogVerified {
		lg := o.Logger
		if lg == nil {
			lg = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
		lg.Error("MANIFEST ACCEPTED WITHOUT A TRANSPARENCY-LOG PROOF: nothing shows this manifest was published; "+
			"config.manifest_without_log_proof is set", "log", string(res.Log), "key_id", res.KeyID,
			"image_version", m.ImageVersion, "security_version", m.SecurityVersion)
	}
	return s, nil
}

// LoadSignedManifest reads a bundle file and verifies it.
func LoadSignedManifest(path string, o ManifestOptions) (*SignedManifest, error) {
	b, err := readManifestBundle(path)
	if err != nil {
		return nil, err
	}
	s, err := ParseSignedManifest(b, o)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// LoadManifestKeys reads PEM public keys (PKIX: Ed25519 or ECDSA P-256).
func LoadManifestKeys(paths []string) ([]crypto.PublicKey, error) {
	keys := make([]crypto.PublicKey, 0, len(paths))
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("config.manifest_keys[%d]: %w", i, err)
		}
		k, err := manifest.ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("config.manifest_keys[%d] %s: %w", i, p, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// LoadManifestLogVerifier reads config.manifest_log_key, the Rekor log's
// pinned PEM public key, and returns the verifier of manifests' log proofs:
// the logged entry must be the manifest's envelope signed by one of keys.
func LoadManifestLogVerifier(path string, keys []crypto.PublicKey) (*manifest.RekorVerifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config.manifest_log_key: %w", err)
	}
	k, err := manifest.ParsePublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("config.manifest_log_key %s: %w", path, err)
	}
	return &manifest.RekorVerifier{LogKey: k, ManifestKeys: keys}, nil
}

// Lookup implements References.
func (s *SignedManifest) Lookup(role attest.Role, profile string) (*attest.Reference, error) {
	r, ok := s.byKey[roleProfile{role, profile}]
	if !ok {
		return nil, fmt.Errorf("manifest %s (security version %d): no reference for role %q profile %q",
			s.m.ImageVersion, s.m.SecurityVersion, role, profile)
	}
	return r, nil
}

// SecurityVersion implements References.
func (s *SignedManifest) SecurityVersion() uint64 { return s.m.SecurityVersion }

// KeyID is the keyid of the pinned key whose signature verified.
func (s *SignedManifest) KeyID() string { return s.keyID }

// LogStatus says whether a transparency-log proof was verified.
func (s *SignedManifest) LogStatus() manifest.LogStatus { return s.log }
