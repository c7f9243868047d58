// Package config is the verifier's typed, versioned configuration file, the
// reference values it attests against and the state it keeps between runs.
// It is not a trust decision: it only says which roots and keys are pinned.
package config

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/boundedfile"
	"github.com/palisade-cc/palisade/internal/roots"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
)

// Version is the version of the configuration file format.
const Version = 1

// File names inside the configuration directory.
const (
	FileName       = "verifier.json"
	CheckpointName = "checkpoint"
	OwnerKeyName   = "owner.key"
	SecretName     = "owner-secret.json"
	// AcceptedVersionName holds the highest image security version
	// `verifier image` accepted: its rollback floor across runs.
	AcceptedVersionName = "image-security-version"
)

// maxFile bounds every file the verifier reads: configs, references, keys.
const maxFile = 4 << 20

// Config is verifier.json. Relative paths are relative to the directory
// the file is in.
type Config struct {
	Version int `json:"version"`
	// ClusterID is the cluster keyd and nodes attest for (protocol.md §1).
	ClusterID string `json:"cluster_id"`
	// Keyd lists keyd addresses (host:port); the first is the default.
	Keyd []string `json:"keyd"`
	// References is the reference values file (keyd's JSON manifest format,
	// docs/keyd.md §References) keyd and nodes are attested against.
	References string `json:"references"`
	// ManifestKey is the PEM public key file that signs image manifests
	// (`verifier image`).
	ManifestKey string `json:"manifest_key,omitempty"`
	// RekorKey is the PEM public key file of the Rekor transparency log
	// image manifests are recorded in: `verifier image` checks a manifest's
	// inclusion proof against it, offline (docs/images.md §Rekor).
	RekorKey string `json:"rekor_key,omitempty"`
	// LogKey is keyd's checkpoint verifier key in note form
	// ("name+hash+base64"); its name is the log's origin.
	LogKey string `json:"log_key"`
	// OwnerKey is the Ed25519 owner key file (hex seed, mode 0600); it
	// signs revocations. `verifier init` creates it.
	OwnerKey string `json:"owner_key"`
	// Secret is the owner's recovery secret file (mode 0600).
	Secret string `json:"secret"`
	// AttestPort is the port of a node's aTLS attestation endpoint, on the
	// host of its first claimed endpoint; 0: nodes are not attested live.
	AttestPort int `json:"attest_port,omitempty"`
	// Roots pin the trust anchors per platform.
	Roots Roots `json:"roots"`

	dir string
}

// Roots pins each platform's roots (internal/roots, the same section keyd
// reads); a platform without roots is denied.
type Roots = roots.Config

// SNPRoots are the AMD KDS cert_chain files of one product line.
type SNPRoots = roots.SNP

// Dir is the default configuration directory: os.UserConfigDir()/palisade.
func Dir() (string, error) {
	d, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "palisade"), nil
}

var idRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// Validate checks the configuration and names the first bad field.
func (c *Config) Validate() error {
	if c.Version != Version {
		return fmt.Errorf("config.version: %d, want %d", c.Version, Version)
	}
	if !idRE.MatchString(c.ClusterID) {
		return fmt.Errorf("config.cluster_id %q: want 1-63 of [a-z0-9.-], alphanumeric at both ends", c.ClusterID)
	}
	if len(c.Keyd) == 0 {
		return errors.New("config.keyd: empty, want at least one host:port")
	}
	for i, a := range c.Keyd {
		if _, p, err := net.SplitHostPort(a); err != nil || p == "" {
			return fmt.Errorf("config.keyd[%d] %q: want host:port", i, a)
		}
	}
	if c.References == "" {
		return errors.New("config.references: empty, want the reference values file")
	}
	if _, err := note.NewVerifier(c.LogKey); err != nil {
		return fmt.Errorf("config.log_key: %v (want keyd's checkpoint verifier key, name+hash+base64)", err)
	}
	if c.OwnerKey == "" {
		return errors.New("config.owner_key: empty, want a file path")
	}
	if c.Secret == "" {
		return errors.New("config.secret: empty, want a file path")
	}
	// A log proof binds a manifest key: a pinned log without a pinned
	// manifest key would check nothing a verification could use.
	if c.RekorKey != "" && c.ManifestKey == "" {
		return errors.New("config.rekor_key: set without config.manifest_key, want both (the manifest signing key and the Rekor log's key) or neither")
	}
	if c.AttestPort < 0 || c.AttestPort > 65535 {
		return fmt.Errorf("config.attest_port: %d, want 0-65535", c.AttestPort)
	}
	if err := c.Roots.Validate(); err != nil {
		return fmt.Errorf("config.%w", err)
	}
	return nil
}

// Parse reads a configuration strictly (unknown fields and trailing data
// are errors) and validates it; dir resolves relative paths.
func Parse(b []byte, dir string) (*Config, error) {
	var c Config
	if err := strictJSON(StripComments(b), &c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c.dir = dir
	return &c, nil
}

// Load reads dir/verifier.json.
func Load(dir string) (*Config, error) {
	b, err := readFile(filepath.Join(dir, FileName))
	if err != nil {
		return nil, err
	}
	c, err := Parse(b, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, FileName), err)
	}
	return c, nil
}

// Path resolves p against the configuration's directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Dir is the directory the configuration and state live in.
func (c *Config) Dir() string { return c.dir }

// LogVerifier is the pinned checkpoint key.
func (c *Config) LogVerifier() note.Verifier {
	v, _ := note.NewVerifier(c.LogKey) // checked by Validate
	return v
}

func strictJSON(b []byte, v any) error {
	if len(b) > maxFile {
		return fmt.Errorf("%d bytes, at most %d", len(b), maxFile)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func readFile(path string) ([]byte, error) { return boundedfile.Read(path, maxFile) }

// Verifiers builds one verifier per platform that has pinned roots; they
// read collateral only from the configured directories (no network).
// Relative paths are relative to the configuration's directory.
func (c *Config) Verifiers() (map[attest.Platform]attest.Verifier, error) {
	return c.Roots.Verifiers(c.dir)
}

// OwnerKey reads the owner's Ed25519 key. The file must not be readable by
// others (mode 0600 or stricter): it authorises revocations.
func (c *Config) ReadOwnerKey() (ed25519.PrivateKey, error) {
	p := c.Path(c.OwnerKey)
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("config.owner_key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("config.owner_key %s: mode %v, want 0600 (the key authorises revocations)", p, fi.Mode().Perm())
	}
	b, err := readFile(p)
	if err != nil {
		return nil, fmt.Errorf("config.owner_key: %w", err)
	}
	seed, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("config.owner_key %s: want %d hex-encoded bytes (an Ed25519 seed)", p, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// WriteExclusive creates path with mode 0600 and writes b; it refuses to
// overwrite an existing file (a secret lost by overwriting is lost for good).
func WriteExclusive(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w (refusing to overwrite)", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// ReadManifestKey reads config.manifest_key, the image manifest signing key.
func (c *Config) ReadManifestKey() (crypto.PublicKey, error) {
	return c.readPublicKey("manifest_key", c.ManifestKey)
}

// ReadRekorKey reads config.rekor_key, the Rekor log's pinned key.
func (c *Config) ReadRekorKey() (crypto.PublicKey, error) {
	return c.readPublicKey("rekor_key", c.RekorKey)
}

func (c *Config) readPublicKey(field, p string) (crypto.PublicKey, error) {
	if p == "" {
		return nil, fmt.Errorf("config.%s: empty, want a PEM public key file", field)
	}
	b, err := readFile(c.Path(p))
	if err != nil {
		return nil, fmt.Errorf("config.%s: %w", field, err)
	}
	k, err := manifest.ParsePublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("config.%s %s: %w", field, c.Path(p), err)
	}
	return k, nil
}
