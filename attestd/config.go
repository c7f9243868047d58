package attestd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/boundedfile"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/palisade-cc/palisade/attestd/disk"
	iapi "github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/roots"
)

// Default paths inside the measured initramfs and its /run tmpfs.
const (
	DefaultRootsPath    = "/etc/palisade/roots/roots.json"
	DefaultRunDir       = "/run/palisade"
	DefaultDeadline     = 10 * time.Minute
	DefaultBackoffMin   = time.Second
	DefaultBackoffMax   = 30 * time.Second
	DefaultAttemptLimit = 45 * time.Second
)

// Config says where attestd finds its pinned state and how long it tries.
// The zero value of every field but ManifestKeyPath and HintsPath is the
// production default (SetDefaults).
type Config struct {
	// RootsPath is the pinned roots section (internal/roots.Config, JSON);
	// relative paths in it resolve against its directory.
	RootsPath string
	// ManifestKeyPath is the PEM public key that signs manifests
	// (PALISADE_MANIFEST_KEY).
	ManifestKeyPath string
	// HintsPath is the untrusted hints file the init wrote
	// (PALISADE_HINTS, initramfs/api.Hints as JSON).
	HintsPath string
	// TPMPath forces the TPM device ("" probes /dev/tpmrm0, /dev/tpm0).
	TPMPath string
	// CVMPortPath forces the emulated CVM port ("" searches for it).
	CVMPortPath string
	// CCELPath is the CC event log the TDX attester sends: read from
	// firmware's table on hardware (default tdx.DefaultCCELPath); on an
	// emulated CVM port attestd first writes the port's log there
	// (default RunDir/ccel).
	CCELPath string
	// RunDir receives admission.json (non-secret) and, by default, the
	// WireGuard key and the emulated CCEL.
	RunDir string
	// WireGuardKeyPath receives the node's fresh WireGuard private key,
	// mode 0600, for meshd (default RunDir/wg.key).
	WireGuardKeyPath string
	// RekorKeyPath is the pinned Rekor log's PEM public key
	// (PALISADE_REKOR_KEY): a manifest must then carry an inclusion proof
	// of its dsse entry, verified offline (docs/images.md §Rekor).
	RekorKeyPath string
	// ManifestWithoutLogProof accepts a manifest without a verified
	// transparency-log proof. Test images only; logged at error level.
	ManifestWithoutLogProof bool
	// Deadline bounds the whole join, retries included.
	Deadline time.Duration
	// BackoffMin and BackoffMax bound the pause between rounds over the
	// hints; it doubles each round, with jitter.
	BackoffMin, BackoffMax time.Duration
	// AttemptTimeout bounds one connection to one keyd (handshake and
	// request).
	AttemptTimeout time.Duration
	// Disk is the state-disk step (docs/attestd.md §Disks). Its zero
	// Mode is off: only the command turns it on by default.
	Disk disk.Config
	// WireGuardPort is meshd's UDP port, claimed in the endpoints (0:
	// DefaultWireGuardPort; it must equal meshd's listen_port).
	WireGuardPort int
}

// SetDefaults fills the zero fields with the production values.
func (c *Config) SetDefaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.RootsPath, DefaultRootsPath)
	def(&c.RunDir, DefaultRunDir)
	def(&c.WireGuardKeyPath, filepath.Join(c.RunDir, "wg.key"))
	if c.WireGuardPort == 0 {
		c.WireGuardPort = DefaultWireGuardPort
	}
	for _, d := range []struct {
		p *time.Duration
		v time.Duration
	}{{&c.Deadline, DefaultDeadline}, {&c.BackoffMin, DefaultBackoffMin}, {&c.BackoffMax, DefaultBackoffMax},
		{&c.AttemptTimeout, DefaultAttemptLimit}} {
		if *d.p == 0 {
			*d.p = d.v
		}
	}
	c.Disk.SetDefaults()
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	for name, p := range map[string]string{"roots": c.RootsPath, "manifest-key": c.ManifestKeyPath,
		"hints": c.HintsPath, "run-dir": c.RunDir, "wireguard-key": c.WireGuardKeyPath} {
		if p == "" {
			return fmt.Errorf("config %s: empty, want a file path", name)
		}
	}
	if c.Deadline <= 0 || c.AttemptTimeout <= 0 || c.BackoffMin <= 0 {
		return fmt.Errorf("config: deadline %s, attempt timeout %s, backoff-min %s: want > 0", c.Deadline, c.AttemptTimeout, c.BackoffMin)
	}
	if c.RekorKeyPath != "" && c.ManifestWithoutLogProof {
		return fmt.Errorf("config: rekor-key and manifest-without-log-proof together: a pinned log must be used")
	}
	if c.WireGuardPort < 1 || c.WireGuardPort > 65535 {
		return fmt.Errorf("config wireguard-port %d: want 1-65535", c.WireGuardPort)
	}
	if c.BackoffMax < c.BackoffMin {
		return fmt.Errorf("config backoff-max %s: below backoff-min %s", c.BackoffMax, c.BackoffMin)
	}
	if err := c.Disk.Validate(); err != nil {
		return fmt.Errorf("config %w", err)
	}
	return nil
}

// maxSmallFile bounds the small files attestd reads (roots, key, hints).
const maxSmallFile = 1 << 20

func readSmall(path string) ([]byte, error) { return boundedfile.Read(path, maxSmallFile) }

// LoadRoots reads the pinned roots section strictly: an unknown field is an
// error, so a typo cannot silently unpin a platform.
func LoadRoots(path string) (*roots.Config, error) {
	b, err := readSmall(path)
	if err != nil {
		return nil, fmt.Errorf("roots: %w", err)
	}
	var c roots.Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("roots %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("roots %s: trailing data", path)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// ErrNoHints is returned when the hints name no keyd or no cluster.
var ErrNoHints = errors.New("hints name no keyd address or no cluster")

// ParseHints reads the hints file the init wrote. The hints are untrusted;
// this only makes sure they are usable: a cluster, 1-MaxHints keyd
// addresses in host:port form, no duplicates.
func ParseHints(b []byte) (*iapi.Hints, error) {
	var h iapi.Hints
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("hints: %w", err)
	}
	if dec.More() {
		return nil, errors.New("hints: trailing data")
	}
	if h.Cluster == "" || len(h.Keyd) == 0 {
		return nil, fmt.Errorf("hints: cluster %q, %d keyd addresses: %w", h.Cluster, len(h.Keyd), ErrNoHints)
	}
	if len(h.Cluster) > 64 {
		return nil, fmt.Errorf("hints cluster: %d bytes, want at most 64", len(h.Cluster))
	}
	if len(h.Keyd) > iapi.MaxHints {
		return nil, fmt.Errorf("hints keyd: %d addresses, want at most %d", len(h.Keyd), iapi.MaxHints)
	}
	seen := map[string]bool{}
	for i, a := range h.Keyd {
		if err := checkHostPort(a); err != nil {
			return nil, fmt.Errorf("hints keyd[%d] %q: %w", i, a, err)
		}
		if seen[a] {
			return nil, fmt.Errorf("hints keyd[%d] %q: repeated", i, a)
		}
		seen[a] = true
	}
	return &h, nil
}

func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("empty host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return errors.New("port out of 1-65535")
	}
	return nil
}
