package config

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"

	"github.com/palisade-cc/palisade/internal/atomicfile"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
)

// StripComments removes whole lines whose first non-blank characters are
// "//", so the default file can explain itself; JSON has no comments and
// nothing else is accepted.
func StripComments(b []byte) []byte {
	var out bytes.Buffer
	for _, l := range bytes.SplitAfter(b, []byte("\n")) {
		if bytes.HasPrefix(bytes.TrimLeft(l, " \t"), []byte("//")) {
			out.WriteByte('\n') // keep line numbers for JSON errors
			continue
		}
		out.Write(l)
	}
	return out.Bytes()
}

var defaultTmpl = template.Must(template.New("").Parse(`// Palisade verifier configuration (docs/verifier.md). Lines starting
// with // are comments. Relative paths are relative to this directory.
{
  "version": 1,
  // The cluster keyd and the nodes attest for (keyd's cluster_id).
  "cluster_id": {{printf "%q" .ClusterID}},
  // keyd's aTLS addresses; the first is used unless --keyd says otherwise.
  "keyd": [{{printf "%q" .Keyd}}],
  // Reference values (keyd's manifest format) of every role and profile.
  "references": "references.json",
  // keyd's checkpoint verifier key, printed by keyd at start (name+hash+key).
  "log_key": {{printf "%q" .LogKey}},
  // Image manifests ("verifier image"): the PEM public key that signs them
  // (images keygen's .pub.pem) and the Rekor transparency log's PEM public
  // key they must be recorded under. Uncomment both to check images.
  // "manifest_key": "manifest-key.pub.pem",
  // "rekor_key": "rekor.pub.pem",
  // Created by "verifier init" (mode 0600); keep a copy offline.
  "owner_key": "owner.key",
  "secret": "owner-secret.json",
  // Port of each node's aTLS attestation endpoint; 0 disables live checks.
  "attest_port": 0,
  // Pinned roots: never a root that comes with the evidence.
  "roots": {
    "sev_snp": {"Milan": {"vcek_chain": "roots/milan-cert_chain.pem"}},
    "sev_snp_collateral_dir": "collateral/snp"
  }
}
`))

// Default is the commented default file for a cluster.
func Default(cluster, keyd, logKey string) []byte {
	var b bytes.Buffer
	if keyd == "" {
		keyd = "keyd.example:7443"
	}
	if logKey == "" {
		// Shape only: the real key comes from keyd's log at start.
		logKey = "palisade-keyd/" + cluster + "+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	}
	defaultTmpl.Execute(&b, struct{ ClusterID, Keyd, LogKey string }{cluster, keyd, logKey})
	return b.Bytes()
}

// Role is a role's reference of one profile.
type RoleReference struct {
	Role      attest.Role       `json:"role"`
	Reference *attest.Reference `json:"reference"`
}

// References is the reference values file, in keyd's manifest format:
// {"format":1,"security_version":N,"references":[{"role","reference"}…]}.
type References struct {
	Format          int             `json:"format"`
	SecurityVersion uint64          `json:"security_version"`
	References      []RoleReference `json:"references"`
}

// ParseReferences reads a reference file strictly and checks every entry.
func ParseReferences(b []byte) (*References, error) {
	var r References
	if err := strictJSON(b, &r); err != nil {
		return nil, fmt.Errorf("references: %w", err)
	}
	if r.Format != 1 {
		return nil, fmt.Errorf("references.format: %d, want 1", r.Format)
	}
	if len(r.References) == 0 {
		return nil, errors.New("references.references: empty")
	}
	seen := map[[2]string]bool{}
	for i, rr := range r.References {
		if err := rr.Role.Validate(); err != nil {
			return nil, fmt.Errorf("references.references[%d].role: %w", i, err)
		}
		if rr.Reference == nil {
			return nil, fmt.Errorf("references.references[%d].reference: missing", i)
		}
		if err := rr.Reference.Validate(); err != nil {
			return nil, fmt.Errorf("references.references[%d]: %w", i, err)
		}
		k := [2]string{string(rr.Role), rr.Reference.Profile}
		if seen[k] {
			return nil, fmt.Errorf("references.references[%d]: role %q profile %q listed twice", i, k[0], k[1])
		}
		seen[k] = true
	}
	return &r, nil
}

// Lookup returns the reference of a role's profile.
func (r *References) Lookup(role attest.Role, profile string) (*attest.Reference, error) {
	for _, rr := range r.References {
		if rr.Role == role && rr.Reference.Profile == profile {
			return rr.Reference, nil
		}
	}
	return nil, fmt.Errorf("references: no reference for role %q profile %q", role, profile)
}

// ReadReferences reads the configured reference file.
func (c *Config) ReadReferences() (*References, error) {
	b, err := readFile(c.Path(c.References))
	if err != nil {
		return nil, fmt.Errorf("config.references: %w", err)
	}
	if isSignedManifest(b) {
		return c.signedReferences(b)
	}
	r, err := ParseReferences(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Path(c.References), err)
	}
	return r, nil
}

// Secret is the owner's recovery secret file: with it, `verifier recover`
// hands a keyd that lost it the cluster master secret.
type Secret struct {
	Format       int    `json:"format"`
	ClusterID    string `json:"cluster_id"`
	MasterSecret string `json:"master_secret"`
}

// ParseSecret reads a secret file.
func ParseSecret(b []byte) ([]byte, string, error) {
	var s Secret
	if err := strictJSON(b, &s); err != nil {
		return nil, "", fmt.Errorf("secret: %w", err)
	}
	if s.Format != 1 {
		return nil, "", fmt.Errorf("secret.format: %d, want 1", s.Format)
	}
	m, err := hex.DecodeString(s.MasterSecret)
	if err != nil || len(m) != 32 {
		return nil, "", errors.New("secret.master_secret: want 64 hex digits")
	}
	return m, s.ClusterID, nil
}

// ReadSecret reads the owner's secret file of this cluster.
func (c *Config) ReadSecret() ([]byte, error) {
	b, err := readFile(c.Path(c.Secret))
	if err != nil {
		return nil, fmt.Errorf("config.secret: %w", err)
	}
	m, cluster, err := ParseSecret(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Path(c.Secret), err)
	}
	if cluster != c.ClusterID {
		return nil, fmt.Errorf("%s: secret of cluster %q, config is for %q", c.Path(c.Secret), cluster, c.ClusterID)
	}
	return m, nil
}

// EncodeSecret is the content of a new secret file.
func EncodeSecret(cluster string, master []byte) []byte {
	b, _ := json.MarshalIndent(Secret{Format: 1, ClusterID: cluster, MasterSecret: hex.EncodeToString(master)}, "", "  ")
	return append(b, '\n')
}

// LastCheckpoint returns the signed checkpoint this owner saw last, or nil
// if none was stored yet.
func (c *Config) LastCheckpoint() ([]byte, error) {
	b, err := readFile(filepath.Join(c.dir, CheckpointName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// SaveCheckpoint replaces the stored checkpoint atomically (rename), so a
// crash leaves the old or the new one, never a torn file.
func (c *Config) SaveCheckpoint(msg []byte) error {
	return atomicfile.Write(filepath.Join(c.dir, CheckpointName), msg, 0o600)
}

// AcceptedVersion is the highest image security version this owner's
// `verifier image` accepted (AcceptedVersionName), 0 if none yet.
func (c *Config) AcceptedVersion() (uint64, error) {
	p := filepath.Join(c.dir, AcceptedVersionName)
	b, err := readFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	s := strings.TrimSuffix(string(b), "\n")
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || strconv.FormatUint(v, 10) != s {
		return 0, fmt.Errorf("%s: %q is not a security version (one decimal number); it is the image rollback floor, restore it rather than delete it", p, b)
	}
	return v, nil
}

// SaveAcceptedVersion records v as the rollback floor if it is above the
// stored one; the file is replaced atomically, so a crash leaves the old
// or the new floor.
func (c *Config) SaveAcceptedVersion(v uint64) error {
	old, err := c.AcceptedVersion()
	if err != nil || v <= old {
		return err
	}
	return atomicfile.Write(filepath.Join(c.dir, AcceptedVersionName), []byte(strconv.FormatUint(v, 10)+"\n"), 0o600)
}

// isSignedManifest says b is a signed manifest bundle (internal/manifest:
// {"dsse": …}) rather than a plain reference file.
func isSignedManifest(b []byte) bool {
	var probe struct {
		DSSE json.RawMessage `json:"dsse"`
	}
	return json.Unmarshal(b, &probe) == nil && len(probe.DSSE) > 0
}

// signedReferences reads the references out of a signed manifest bundle,
// the way keyd and nodes do: signed by config.manifest_key AND proven in
// the Rekor log pinned by config.rekor_key, offline (ARCHITECTURE §6: a
// manifest without a verified log proof is never accepted).
func (c *Config) signedReferences(b []byte) (*References, error) {
	key, err := c.ReadManifestKey()
	if err != nil {
		return nil, fmt.Errorf("config.references %s is a signed manifest: %w", c.Path(c.References), err)
	}
	rekor, err := c.ReadRekorKey()
	if err != nil {
		return nil, fmt.Errorf("config.references %s is a signed manifest, accepted only with its Rekor proof: %w", c.Path(c.References), err)
	}
	res, err := manifest.Verify(b, manifest.Options{Keys: []crypto.PublicKey{key},
		Log: &manifest.RekorVerifier{LogKey: rekor, ManifestKeys: []crypto.PublicKey{key}}})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Path(c.References), err)
	}
	m := res.Manifest
	r := &References{Format: 1, SecurityVersion: m.SecurityVersion}
	for _, set := range []struct {
		role attest.Role
		refs []attest.Reference
	}{{attest.RoleNode, m.References}, {attest.RoleKeyd, m.Keyd}} {
		for i := range set.refs {
			r.References = append(r.References, RoleReference{Role: set.role, Reference: &set.refs[i]})
		}
	}
	return r, nil
}
