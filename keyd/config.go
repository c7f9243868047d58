package keyd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/roots"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
)

// ConfigVersion is the version of the configuration file format.
const ConfigVersion = 1

// Config is keyd's configuration file (JSON; docs/keyd.md §Configuration).
type Config struct {
	Version int `json:"version"`
	// ClusterID is the cluster every peer attests for.
	ClusterID string `json:"cluster_id"`
	// NodeID and Profile are this keyd's own claims; Profile names its
	// keyd-role reference in the manifest.
	NodeID  string `json:"node_id"`
	Profile string `json:"profile"`
	// Listen is the aTLS address (host:port).
	Listen string `json:"listen"`
	// MetricsListen serves /metrics over plain HTTP; empty: off.
	MetricsListen string `json:"metrics_listen,omitempty"`
	// StatePath is the bbolt file of keyd's state (store kind bbolt).
	StatePath string `json:"state_path,omitempty"`
	// Store selects the state backend; the zero value is bbolt at
	// StatePath.
	Store StoreConfig `json:"store,omitempty"`
	// ManifestPath is the signed manifest bundle (images sign; see
	// internal/manifest): DSSE envelope and transparency-log proof.
	ManifestPath string `json:"manifest_path"`
	// ManifestKeys are PEM public keys (Ed25519 or ECDSA P-256) pinned to
	// sign manifests; a key from the bundle is never used.
	ManifestKeys []string `json:"manifest_keys"`
	// ManifestLogKey is the PEM public key file of the Rekor transparency
	// log manifests are recorded in: a manifest is accepted only with a
	// log proof that verifies with it, offline (internal/manifest
	// RekorVerifier, docs/images.md §Rekor).
	ManifestLogKey string `json:"manifest_log_key,omitempty"`
	// ManifestWithoutLogProof accepts a manifest without a verified
	// transparency-log proof: test clusters only, each such manifest is
	// logged at error level. Exclusive with manifest_log_key.
	ManifestWithoutLogProof bool `json:"manifest_without_log_proof,omitempty"`
	// SealKeyFile, if set, holds 32 bytes (raw or 64 hex digits) that
	// seal the master secret into the store, so keyd unlocks itself after
	// a restart. Empty: the secret lives in memory only and a restarted
	// keyd waits for recover or replica join (docs/keyd.md §Threat model).
	SealKeyFile string `json:"seal_key_file,omitempty"`
	// LogKeyFile holds the Ed25519 seed (32 bytes, raw or hex) that signs
	// the admission log's checkpoints; created if missing.
	LogKeyFile string `json:"log_key_file"`
	// JoinFrom is an existing keyd (host:port) to get the master secret
	// from by replica join when this keyd has none.
	JoinFrom string `json:"join_from,omitempty"`
	// Kube, when set, makes keyd issue kubeadm join material to admitted
	// nodes (a keyd built with Kubernetes support: build tag kube).
	Kube *KubeConfig `json:"kube,omitempty"`
	// Attester says how this keyd attests itself.
	Attester AttesterConfig `json:"attester"`
	// Roots are the pinned trust anchors of the peers' platforms.
	Roots  RootsConfig `json:"roots"`
	Limits Limits      `json:"limits"`
}

// AttesterConfig selects this keyd's platform.
type AttesterConfig struct {
	Platform attest.Platform `json:"platform"`
	// TPMPath is the TPM device or swtpm address (tpm only).
	TPMPath string `json:"tpm_path,omitempty"`
	// EventLogPath overrides the TPM event log path (tpm only).
	EventLogPath string `json:"event_log_path,omitempty"`
	// CCELPath overrides the CC event log path (tdx only).
	CCELPath string `json:"ccel_path,omitempty"`
}

// Store kinds.
const (
	StoreBbolt = "bbolt"
	StoreEtcd  = "etcd"
)

// StoreConfig selects keyd's state backend: bbolt (one keyd, the file at
// state_path) or etcd (several keyd replicas sharing one registry and one
// admission log).
type StoreConfig struct {
	// Kind is "bbolt" (default) or "etcd".
	Kind string `json:"kind,omitempty"`
	// Endpoints are the etcd client URLs (etcd only).
	Endpoints []string `json:"endpoints,omitempty"`
	// Prefix is the etcd key prefix of this cluster's state (etcd only;
	// default "/palisade/keyd/<cluster_id>"). Replicas of one cluster share
	// it; two clusters must not.
	Prefix string `json:"prefix,omitempty"`
}

// prefix is the configured etcd prefix or the cluster's default.
func (s StoreConfig) prefix(cluster string) string {
	if s.Prefix != "" {
		return s.Prefix
	}
	return "/palisade/keyd/" + cluster
}

func (s StoreConfig) validate(statePath string) error {
	switch s.Kind {
	case "", StoreBbolt:
		if statePath == "" {
			return errors.New("config.state_path: empty, want a file path (store kind bbolt)")
		}
		if len(s.Endpoints) > 0 || s.Prefix != "" {
			return errors.New("config.store: endpoints and prefix are for kind etcd only")
		}
	case StoreEtcd:
		if statePath != "" {
			return errors.New("config.state_path: set, but config.store.kind is etcd (state lives in etcd)")
		}
		if len(s.Endpoints) == 0 {
			return errors.New("config.store.endpoints: empty, want etcd client URLs")
		}
		for i, e := range s.Endpoints {
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return fmt.Errorf("config.store.endpoints[%d] %q: want http(s)://host:port", i, e)
			}
		}
		if s.Prefix != "" && (!strings.HasPrefix(s.Prefix, "/") || strings.HasSuffix(s.Prefix, "/") || len(s.Prefix) > 256) {
			return fmt.Errorf("config.store.prefix %q: want /… without a trailing slash, at most 256 bytes", s.Prefix)
		}
	default:
		return fmt.Errorf("config.store.kind %q: want %q or %q", s.Kind, StoreBbolt, StoreEtcd)
	}
	return nil
}

// RootsConfig pins the roots of each platform keyd verifies (internal/roots,
// the same section the owner's verifier reads).
type RootsConfig = roots.Config

// SNPRoots are the KDS cert_chain files of one product.
type SNPRoots = roots.SNP

// Limits bound what peers can make keyd do.
type Limits struct {
	// MaxVerifications bounds evidence verifications running at once
	// (0: 2 × CPUs); more wait for a slot within the handshake time-out.
	MaxVerifications int `json:"max_verifications,omitempty"`
	// MaxHandshakes bounds aTLS handshakes in progress (0: atls default).
	MaxHandshakes int `json:"max_handshakes,omitempty"`
	// HandshakeTimeout bounds one handshake (0: atls default).
	HandshakeTimeout Duration `json:"handshake_timeout,omitempty"`
	// RequestTimeout bounds one request, long polls excepted (0: 10s).
	RequestTimeout Duration `json:"request_timeout,omitempty"`
	// MaxEvidenceSize bounds an evidence frame in bytes (0: atls default).
	MaxEvidenceSize int `json:"max_evidence_size,omitempty"`
	// RatePerSource and BurstPerSource are the token bucket of each
	// source IP, for connections and requests alike (0: 20/s, burst 40).
	RatePerSource  float64 `json:"rate_per_source,omitempty"`
	BurstPerSource int     `json:"burst_per_source,omitempty"`
	// MaxAdmissions bounds admissions writing to the store at once; more
	// get 503 "retry later" (0: 256).
	MaxAdmissions int `json:"max_admissions,omitempty"`
	// InlinePeers: the admit response carries the peer set while it has
	// at most this many peers (0: 64; negative: never).
	InlinePeers int `json:"inline_peers,omitempty"`
	// DenialSummaryInterval is how often denials are summarised into the
	// admission log (0: 1 minute).
	DenialSummaryInterval Duration `json:"denial_summary_interval,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// MarshalJSON writes d as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

var idRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// Validate checks cfg and names the first bad field and what is allowed.
func (c *Config) Validate() error {
	if c.Version != ConfigVersion {
		return fmt.Errorf("config.version: %d, want %d", c.Version, ConfigVersion)
	}
	if c.ClusterID == "" || len(c.ClusterID) > 64 {
		return fmt.Errorf("config.cluster_id: length %d, want 1-64", len(c.ClusterID))
	}
	if !idRE.MatchString(c.NodeID) {
		return fmt.Errorf("config.node_id %q: want 1-63 of [a-z0-9.-]", c.NodeID)
	}
	if c.Kube != nil {
		if err := c.Kube.Validate(); err != nil {
			return err
		}
	}
	if !idRE.MatchString(c.Profile) {
		return fmt.Errorf("config.profile %q: want 1-63 of [a-z0-9.-]", c.Profile)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("config.listen %q: want host:port: %w", c.Listen, err)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("config.metrics_listen %q: want host:port: %w", c.MetricsListen, err)
		}
	}
	if c.JoinFrom != "" {
		if _, _, err := net.SplitHostPort(c.JoinFrom); err != nil {
			return fmt.Errorf("config.join_from %q: want host:port: %w", c.JoinFrom, err)
		}
	}
	if err := c.Store.validate(c.StatePath); err != nil {
		return err
	}
	for name, p := range map[string]string{"manifest_path": c.ManifestPath, "log_key_file": c.LogKeyFile} {
		if p == "" {
			return fmt.Errorf("config.%s: empty, want a file path", name)
		}
	}
	if len(c.ManifestKeys) == 0 {
		return errors.New("config.manifest_keys: empty, want the PEM public keys that sign manifests")
	}
	for i, p := range c.ManifestKeys {
		if p == "" {
			return fmt.Errorf("config.manifest_keys[%d]: empty, want a file path", i)
		}
	}
	if c.ManifestLogKey != "" && c.ManifestWithoutLogProof {
		return errors.New("config.manifest_log_key: set together with manifest_without_log_proof, want one of them (the log key; the other is for test clusters)")
	}
	if err := c.Attester.Platform.Validate(); err != nil {
		return fmt.Errorf("config.attester.platform: %w", err)
	}
	if err := c.Roots.Validate(); err != nil {
		return fmt.Errorf("config.%w", err)
	}
	return c.Limits.validate()
}

func (l *Limits) validate() error {
	for name, v := range map[string]int{"max_verifications": l.MaxVerifications, "max_handshakes": l.MaxHandshakes,
		"max_evidence_size": l.MaxEvidenceSize, "burst_per_source": l.BurstPerSource, "max_admissions": l.MaxAdmissions} {
		if v < 0 {
			return fmt.Errorf("config.limits.%s: %d, want ≥ 0 (0: default)", name, v)
		}
	}
	if l.MaxEvidenceSize > atls.MaxMessageSizeLimit {
		return fmt.Errorf("config.limits.max_evidence_size: %d, at most %d", l.MaxEvidenceSize, atls.MaxMessageSizeLimit)
	}
	if l.RatePerSource < 0 {
		return fmt.Errorf("config.limits.rate_per_source: %g, want ≥ 0", l.RatePerSource)
	}
	for name, d := range map[string]Duration{"handshake_timeout": l.HandshakeTimeout, "request_timeout": l.RequestTimeout,
		"denial_summary_interval": l.DenialSummaryInterval} {
		if d < 0 {
			return fmt.Errorf("config.limits.%s: %s, want ≥ 0", name, time.Duration(d))
		}
	}
	return nil
}

// withDefaults returns l with zero fields set to their defaults.
func (l Limits) withDefaults() Limits {
	if l.MaxVerifications == 0 {
		l.MaxVerifications = 2 * runtime.NumCPU()
	}
	if l.RequestTimeout == 0 {
		l.RequestTimeout = Duration(10 * time.Second)
	}
	if l.RatePerSource == 0 {
		l.RatePerSource = 20
	}
	if l.BurstPerSource == 0 {
		l.BurstPerSource = 40
	}
	if l.MaxAdmissions == 0 {
		l.MaxAdmissions = 256
	}
	if l.InlinePeers == 0 {
		l.InlinePeers = 64
	}
	if l.DenialSummaryInterval == 0 {
		l.DenialSummaryInterval = Duration(time.Minute)
	}
	return l
}

// ParseConfig reads a configuration strictly (unknown fields are errors)
// and validates it.
func ParseConfig(b []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("config: trailing data after the JSON object")
	}
	return &c, c.Validate()
}

// LoadConfig reads and validates a configuration file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
