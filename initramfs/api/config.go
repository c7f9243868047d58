package api

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"strings"
	"time"
)

// ConfigPath is where the image builder writes the configuration inside the
// initramfs. It is part of the measured initrd, so it is as trusted as the
// init binary itself.
const ConfigPath = "/etc/palisade/init.json"

// ConfigVersion is the only configuration version this init understands.
const ConfigVersion = 1

// Profiles of the measured OS. A debug image differs in its initramfs (a
// shell, another config) and in its cmdline, so it measures differently and
// no production manifest lists its values.
const (
	ProfileProduction = "production"
	ProfileDebug      = "debug"
	// ProfileControlPlane is the production image plus keyd: the first
	// node of a cluster runs keyd ("keyd node", a daemon stage before
	// attestd) and joins it as a node itself (docs/keyd.md, "keyd on the
	// first node"). Its initrd holds keyd and another init.json, so it
	// measures unlike a node image and needs its own references.
	ProfileControlPlane = "control-plane"
)

// KeydPort is where the control-plane image's keyd listens, and where the
// node stages on that machine find it (127.0.0.1).
const KeydPort = 7443

// Stage modes.
const (
	// ModeOneshot stages must exit 0 before the next stage starts.
	ModeOneshot = "oneshot"
	// ModeDaemon stages keep running; the next stage starts right away. If
	// a daemon exits, the boot has failed.
	ModeDaemon = "daemon"
)

// Config is the init's configuration, written by the image builder.
type Config struct {
	Version int    `json:"version"`
	Profile string `json:"profile"`
	// Modules are loaded in order, with their dependencies from the
	// initramfs's modules.dep; modules built into the kernel are skipped.
	Modules []string `json:"modules"`
	// DeviceModules are drivers loaded, after Modules, only if a device
	// present at boot matches one of their aliases (the initramfs's
	// modules.alias against /sys/bus/*/devices/*/modalias), in this
	// order: a physical server's NIC and disk controller. The others stay
	// on the initramfs unused.
	DeviceModules []string      `json:"device_modules,omitempty"`
	Network       NetworkConfig `json:"network"`
	// Stages run in order: attestd (the join), attestd serve, meshd, the
	// workload.
	Stages []Stage `json:"stages"`
	// Shell is started on failure and at the end of a debug boot. It must
	// be empty in production.
	Shell string `json:"shell,omitempty"`
	// ManifestKey is the path of the pinned public key that verifies
	// manifests (a PEM SubjectPublicKeyInfo); it is handed to the stages.
	ManifestKey string `json:"manifest_key"`
	// RekorKey is the path of the pinned Rekor log's public key, if the
	// image pins one: the stages then require a manifest's inclusion proof
	// (ARCHITECTURE §6).
	RekorKey string `json:"rekor_key,omitempty"`
	// HintsPath is where the merged, untrusted hints are written for the
	// stages to read.
	HintsPath string `json:"hints_path"`
}

// NetworkConfig says how to bring the network up.
type NetworkConfig struct {
	// Interfaces is a regular expression for the interfaces to configure
	// (u-root dhclient syntax); empty means every non-loopback interface.
	Interfaces string `json:"interfaces,omitempty"`
	// Timeout is per DHCP attempt, Retries the number of attempts.
	Timeout  Duration `json:"timeout"`
	Retries  int      `json:"retries"`
	Disabled bool     `json:"disabled,omitempty"`
}

// Stage is one program the init starts.
type Stage struct {
	Name string   `json:"name"`
	Path string   `json:"path"`
	Args []string `json:"args,omitempty"`
	Mode string   `json:"mode"`
}

// Duration is a time.Duration written as a Go duration string.
type Duration time.Duration

// MarshalJSON writes d as "10s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "10s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	if c.Version != ConfigVersion {
		return fmt.Errorf("version: %d, want %d", c.Version, ConfigVersion)
	}
	switch c.Profile {
	case ProfileProduction, ProfileControlPlane:
		if c.Shell != "" {
			return fmt.Errorf("shell: %q set in profile %q; a production image has no shell", c.Shell, c.Profile)
		}
	case ProfileDebug:
	default:
		return fmt.Errorf("profile: %q, want %q, %q or %q", c.Profile, ProfileProduction, ProfileControlPlane, ProfileDebug)
	}
	for i, m := range c.Modules {
		if m == "" || strings.ContainsAny(m, "/ \t") {
			return fmt.Errorf("modules[%d]: %q is not a module name", i, m)
		}
	}
	for i, m := range c.DeviceModules {
		if m == "" || strings.ContainsAny(m, "/ \t") {
			return fmt.Errorf("device_modules[%d]: %q is not a module name", i, m)
		}
	}
	if !c.Network.Disabled {
		if c.Network.Timeout <= 0 {
			return fmt.Errorf("network.timeout: %s, want > 0", time.Duration(c.Network.Timeout))
		}
		if c.Network.Retries < 1 {
			return fmt.Errorf("network.retries: %d, want >= 1", c.Network.Retries)
		}
	}
	if len(c.Stages) == 0 {
		return fmt.Errorf("stages: empty, want at least attestd")
	}
	seen := map[string]bool{}
	for i, s := range c.Stages {
		if s.Name == "" || seen[s.Name] {
			return fmt.Errorf("stages[%d].name: %q empty or repeated", i, s.Name)
		}
		seen[s.Name] = true
		if !path.IsAbs(s.Path) {
			return fmt.Errorf("stages[%d].path: %q, want an absolute path", i, s.Path)
		}
		if s.Mode != ModeOneshot && s.Mode != ModeDaemon {
			return fmt.Errorf("stages[%d].mode: %q, want %q or %q", i, s.Mode, ModeOneshot, ModeDaemon)
		}
	}
	if c.Shell != "" && !path.IsAbs(c.Shell) {
		return fmt.Errorf("shell: %q, want an absolute path", c.Shell)
	}
	if !path.IsAbs(c.ManifestKey) {
		return fmt.Errorf("manifest_key: %q, want an absolute path", c.ManifestKey)
	}
	if c.RekorKey != "" && !path.IsAbs(c.RekorKey) {
		return fmt.Errorf("rekor_key: %q, want an absolute path", c.RekorKey)
	}
	if !path.IsAbs(c.HintsPath) {
		return fmt.Errorf("hints_path: %q, want an absolute path", c.HintsPath)
	}
	return nil
}

// ParseConfig decodes and validates a configuration; unknown fields are
// errors so a typo cannot silently drop a setting.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return nil, fmt.Errorf("init config: %w", err)
	}
	if d.More() {
		return nil, fmt.Errorf("init config: trailing data")
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("init config: %w", err)
	}
	return &c, nil
}

// LoadConfig reads and parses the configuration at p.
func LoadConfig(p string) (*Config, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("init config: %w", err)
	}
	return ParseConfig(b)
}

// Default returns the configuration the image builder writes for profile.
func Default(profile string) *Config {
	c := &Config{
		Version: ConfigVersion,
		Profile: profile,
		// configfs before its mount (boot.LateMounts); virtio for VMs
		// (virtio_console carries the CVM emulator's port in tests; virtio_rng
		// seeds the kernel's RNG on VMs without RDRAND, or DHCP waits on
		// getrandom: found by the first QEMU boots);
		// sev_guest for /dev/sev-guest; ecb, xts and aesni_intel for
		// aes-xts-plain64 (dm-crypt asks for them by request_module, and
		// the initramfs has no modprobe: found by the first QEMU unlock;
		// aesni_intel is skipped without AES-NI); crc32c for ext4's
		// metadata checksums (same reason: "Cannot load crc32c driver");
		// dm-crypt, dm-integrity and ext4
		// for the LUKS2 state disk (ARCHITECTURE §5); wireguard for meshd.
		// sd_mod: disks behind ahci (or any SCSI host) appear only once it
		// is loaded, and its alias matches no device present at boot.
		Modules: []string{"configfs", "virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "virtio_rng", "sev_guest", "ecb", "xts", "aesni_intel", "dm_crypt", "dm_integrity", "crc32c_generic", "ext4", "sd_mod", "wireguard", "tpm_crb", "tpm_tis"},
		// A bare-metal server's NIC and disk controller: Intel 1/10/25/100G
		// (e1000e, igb, igc, ixgbe, i40e, ice), NVIDIA/Mellanox ConnectX
		// (mlx5_core), Broadcom (bnxt_en, tg3), Realtek (r8169), NVMe and
		// AHCI (SATA). Each loads only on a machine that has its hardware.
		DeviceModules: []string{"e1000e", "igb", "igc", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "tg3", "r8169", "nvme", "ahci"},
		Network:       NetworkConfig{Timeout: Duration(15 * time.Second), Retries: 3},
		// attestd joins and exits; `attestd serve` then holds the node's
		// attested session with keyd for meshd (a unix socket) and its
		// attestation endpoint for the owner; meshd follows keyd's peer
		// set through that socket, so it needs no attestation code.
		Stages: []Stage{
			{Name: "attestd", Path: "/bin/attestd", Mode: ModeOneshot},
			{Name: "attestd-serve", Path: "/bin/attestd", Args: []string{"serve"}, Mode: ModeDaemon},
			{Name: "meshd", Path: "/bin/meshd", Args: []string{"run"}, Mode: ModeDaemon},
			{Name: "workload", Path: "/bin/workload", Mode: ModeDaemon},
		},
		ManifestKey: "/etc/palisade/manifest.pub",
		HintsPath:   "/run/palisade/hints.json",
	}
	switch profile {
	case ProfileDebug:
		c.Shell = "/bin/gosh"
	case ProfileControlPlane:
		// keyd first, as a daemon: it must listen before attestd joins
		// it at 127.0.0.1 (attestd retries while keyd is still locked,
		// waiting for the owner's init). keyd derives its configuration
		// at boot from the hints and the measured roots and key.
		c.Stages = append([]Stage{{Name: "keyd", Path: "/bin/keyd", Args: []string{"node"}, Mode: ModeDaemon}}, c.Stages...)
	}
	return c
}
