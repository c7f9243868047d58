package meshd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/keyd/api"
)

// Config is meshd's configuration (version 1).
type Config struct {
	Version int `json:"version"`
	// Interface is the WireGuard interface (default "palisade0").
	Interface string `json:"interface"`
	// CreateInterface creates a kernel WireGuard interface if missing
	// (false: a userspace device such as wireguard-go already provides it).
	CreateInterface bool `json:"create_interface"`
	// KeyFile holds the node's private key, mode 0600, created on first
	// start; empty keeps it in memory only (a new key every boot).
	KeyFile string `json:"key_file"`
	// ListenPort is the UDP port (default 51820).
	ListenPort int `json:"listen_port"`
	// MTU of the interface (default 1420: 1500 minus WireGuard's 80 bytes
	// of IPv6+UDP+header overhead).
	MTU int `json:"mtu"`
	// PersistentKeepaliveSeconds for every peer (0: off; useful behind NAT).
	PersistentKeepaliveSeconds int `json:"persistent_keepalive_seconds"`
	// MeshIPv4Bits is the prefix length of the cluster's IPv4 range, used
	// when keyd assigns an IPv4 address (default 16).
	MeshIPv4Bits int `json:"mesh_ipv4_bits"`
	// PollWaitSeconds is the long-poll duration (default 25, at most 60).
	PollWaitSeconds int `json:"poll_wait_seconds"`
	// StatusListen serves /metrics and /status (default 127.0.0.1:9474;
	// "-" disables it). Keep it on loopback: it lists the mesh.
	StatusListen string `json:"status_listen"`
}

// DefaultStatusListen is where `meshd status` looks by default.
const DefaultStatusListen = "127.0.0.1:9474"

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Interface == "" {
		c.Interface = "palisade0"
	}
	if c.ListenPort == 0 {
		c.ListenPort = 51820
	}
	if c.MTU == 0 {
		c.MTU = 1420
	}
	if c.MeshIPv4Bits == 0 {
		c.MeshIPv4Bits = 16
	}
	if c.PollWaitSeconds == 0 {
		c.PollWaitSeconds = 25
	}
	if c.StatusListen == "" {
		c.StatusListen = DefaultStatusListen
	}
}

// Validate names the first bad field and what is allowed.
func (c *Config) Validate() error {
	switch {
	case c.Version != 1:
		return fmt.Errorf("config.version %d: want 1", c.Version)
	case c.Interface == "" || len(c.Interface) > 15:
		return fmt.Errorf("config.interface %q: want 1 to 15 bytes (IFNAMSIZ)", c.Interface)
	case c.ListenPort < 1 || c.ListenPort > 65535:
		return fmt.Errorf("config.listen_port %d: want 1..65535", c.ListenPort)
	case c.MTU < 1280 || c.MTU > 9000:
		return fmt.Errorf("config.mtu %d: want 1280..9000 (IPv6 needs at least 1280, RFC 8200 §5)", c.MTU)
	case c.PersistentKeepaliveSeconds < 0 || c.PersistentKeepaliveSeconds > 65535:
		return fmt.Errorf("config.persistent_keepalive_seconds %d: want 0..65535", c.PersistentKeepaliveSeconds)
	case c.MeshIPv4Bits < 8 || c.MeshIPv4Bits > 30:
		return fmt.Errorf("config.mesh_ipv4_bits %d: want 8..30", c.MeshIPv4Bits)
	case c.PollWaitSeconds < 1 || time.Duration(c.PollWaitSeconds)*time.Second > 60*time.Second:
		return fmt.Errorf("config.poll_wait_seconds %d: want 1..60", c.PollWaitSeconds)
	}
	if c.StatusListen != "-" {
		host, _, err := net.SplitHostPort(c.StatusListen)
		if err != nil {
			return fmt.Errorf("config.status_listen %q: want host:port or \"-\"", c.StatusListen)
		}
		if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
			return fmt.Errorf("config.status_listen %q: want a loopback address (it lists the mesh)", c.StatusListen)
		}
	}
	return nil
}

// Self is what keyd told this node at admission (api.AdmitResponse).
type Self struct {
	MeshAddress string
	MeshIPv4    string
}

// Addresses returns the interface addresses: the IPv6 ULA in keyd's /64
// (docs/keyd.md, Mesh) and, if assigned, the IPv4 address in the cluster's range.
func (s Self) Addresses(ipv4Bits int) ([]netip.Prefix, error) {
	a6, err := netip.ParseAddr(s.MeshAddress)
	if err != nil || !a6.Is6() || a6.Is4In6() || a6.Zone() != "" {
		return nil, fmt.Errorf("mesh_address %q: want an IPv6 address", s.MeshAddress)
	}
	out := []netip.Prefix{netip.PrefixFrom(a6, 64)}
	if s.MeshIPv4 != "" {
		a4, err := netip.ParseAddr(s.MeshIPv4)
		if err != nil || !a4.Is4() {
			return nil, fmt.Errorf("mesh_ipv4 %q: want an IPv4 address", s.MeshIPv4)
		}
		out = append(out, netip.PrefixFrom(a4, ipv4Bits))
	}
	return out, nil
}

// Run configures the interface and follows keyd until ctx ends. src is
// keyd's peer directory: the *api.Client of the node's aTLS session
// (initramfs builds it with the node's attester, whose claims carry
// PublicKey(cfg) — so keyd lists only keys that came from attested nodes).
func Run(ctx context.Context, cfg Config, self Self, src PeerSource, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	addrs, err := self.Addresses(cfg.MeshIPv4Bits)
	if err != nil {
		return err
	}
	if cfg.KeyFile == "" {
		return errors.New("config.key_file: empty; the key must be the one the node's evidence claims")
	}
	key, err := LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return err
	}
	if cfg.CreateInterface {
		if err := (Link{}).CreateWireGuard(cfg.Interface); err != nil {
			return err
		}
	}
	wg, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	defer wg.Close()
	ap := &Applier{WG: wg, Interface: cfg.Interface, PrivateKey: key, ListenPort: cfg.ListenPort,
		Keepalive: time.Duration(cfg.PersistentKeepaliveSeconds) * time.Second, Logger: log}
	// Key and port first (with no peers), then the address and link up:
	// the interface never runs with another key.
	dev, err := wg.Device(cfg.Interface)
	if err != nil {
		return fmt.Errorf("wireguard device %s: %w", cfg.Interface, err)
	}
	if dev.PrivateKey != key || dev.ListenPort != cfg.ListenPort {
		port := cfg.ListenPort
		if err := wg.ConfigureDevice(cfg.Interface, wgtypes.Config{PrivateKey: &key, ListenPort: &port}); err != nil {
			return fmt.Errorf("wireguard device %s: set key and port: %w", cfg.Interface, err)
		}
	}
	if err := (Link{}).Configure(cfg.Interface, addrs, cfg.MTU); err != nil {
		return err
	}
	f := &Follower{Source: src, Wait: time.Duration(cfg.PollWaitSeconds) * time.Second, Logger: log}
	if cfg.StatusListen != "-" {
		ln, err := net.Listen("tcp", cfg.StatusListen)
		if err != nil {
			return fmt.Errorf("config.status_listen %s: %w", cfg.StatusListen, err)
		}
		srv := &http.Server{Handler: (&Monitor{Applier: ap, Follower: f}).Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	log.Info("meshd running", "interface", cfg.Interface, "public_key", key.PublicKey().String(), "addresses", addrs)
	err = f.Run(ctx, func(ctx context.Context, s *api.PeerSet) error { _, err := ap.Apply(ctx, s); return err })
	if errors.Is(err, context.Canceled) {
		// The interface and its peers stay: a restarted meshd (or a
		// restarted keyd) must not tear the mesh down.
		return nil
	}
	return err
}
