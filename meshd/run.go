package meshd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/internal/boundedfile"
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
// keyd's peer directory: in the guest, attestd's socket (SocketSource),
// which proxies to keyd on the node's attested session, whose claims carry
// the public key of cfg.KeyFile — so keyd lists only keys that came from
// attested nodes.
func Run(ctx context.Context, cfg Config, self Self, src PeerSource, log *slog.Logger) error {
	return RunConsole(ctx, cfg, self, src, log, nil)
}

// RunConsole is Run that also writes the node's console lines: one per
// peer change ("meshd: peer <id> added|removed|updated …") and
// "meshd: peer <id> handshake" when a peer's handshake time first becomes
// non-zero (again after a removal). nil console: none.
func RunConsole(ctx context.Context, cfg Config, self Self, src PeerSource, log *slog.Logger, console io.Writer) error {
	if console == nil {
		console = io.Discard
	}
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
	fmt.Fprintf(console, "meshd: running interface=%s public_key=%s addresses=%v port=%d\n", cfg.Interface, key.PublicKey(), addrs, cfg.ListenPort)
	rep := &peerReporter{self: key.PublicKey(), out: console}
	hs := &handshakeWatcher{ap: ap, out: console, log: log}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go hs.run(wctx, time.Second)
	err = f.Run(ctx, func(ctx context.Context, s *api.PeerSet) error {
		if _, err := ap.Apply(ctx, s); err != nil {
			return err
		}
		rep.report(s)
		return nil
	})
	if errors.Is(err, context.Canceled) {
		// The interface and its peers stay: a restarted meshd (or a
		// restarted keyd) must not tear the mesh down.
		return nil
	}
	return err
}

// peerReporter writes one console line per peer change between the sets
// applied; this node (by key) is not a peer.
type peerReporter struct {
	self wgtypes.Key
	out  io.Writer
	prev map[string]api.Peer
}

func (r *peerReporter) report(s *api.PeerSet) {
	cur := make(map[string]api.Peer, len(s.Peers))
	for _, p := range s.Peers {
		if k, err := wgtypes.NewKey(p.WireGuardKey); err == nil && k == r.self {
			continue
		}
		cur[p.NodeID] = p
	}
	ids := make([]string, 0, len(cur)+len(r.prev))
	for id := range cur {
		ids = append(ids, id)
	}
	for id := range r.prev {
		if _, ok := cur[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		p, now := cur[id]
		old, had := r.prev[id]
		switch {
		case now && !had:
			fmt.Fprintf(r.out, "meshd: peer %s added revision=%d endpoint=%s mesh=%s\n", id, s.Revision, firstOr(p.Endpoints, "none"), p.MeshAddress)
		case !now && had:
			fmt.Fprintf(r.out, "meshd: peer %s removed revision=%d\n", id, s.Revision)
		case !bytes.Equal(p.WireGuardKey, old.WireGuardKey) || !slices.Equal(p.Endpoints, old.Endpoints) ||
			p.MeshAddress != old.MeshAddress || p.MeshIPv4 != old.MeshIPv4:
			fmt.Fprintf(r.out, "meshd: peer %s updated revision=%d endpoint=%s mesh=%s\n", id, s.Revision, firstOr(p.Endpoints, "none"), p.MeshAddress)
		}
	}
	r.prev = cur
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// handshakeWatcher reads the device and writes "meshd: peer <id>
// handshake" the first time a configured peer's handshake time is set.
type handshakeWatcher struct {
	ap   *Applier
	out  io.Writer
	log  *slog.Logger
	seen map[wgtypes.Key]bool
}

func (h *handshakeWatcher) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		h.check()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (h *handshakeWatcher) check() {
	d, err := h.ap.WG.Device(h.ap.Interface)
	if err != nil {
		h.log.Debug("handshake watch: read device", "err", err)
		return
	}
	ids := h.ap.nodeIDs()
	on := make(map[wgtypes.Key]bool, len(d.Peers))
	if h.seen == nil {
		h.seen = map[wgtypes.Key]bool{}
	}
	for _, p := range d.Peers {
		on[p.PublicKey] = true
		if p.LastHandshakeTime.IsZero() || h.seen[p.PublicKey] {
			continue
		}
		h.seen[p.PublicKey] = true
		id := ids[p.PublicKey]
		if id == "" {
			id = p.PublicKey.String()
		}
		fmt.Fprintf(h.out, "meshd: peer %s handshake\n", id)
	}
	for k := range h.seen {
		if !on[k] {
			delete(h.seen, k)
		}
	}
}

// Admission is the part of attestd's admission record
// (RunDir/admission.json) meshd needs: who this node is in the mesh.
type Admission struct {
	NodeID string `json:"node_id"`
	Self
}

// ParseAdmission reads attestd's record. Other fields are attestd's and
// ignored (meshd may not import attestd, ARCHITECTURE §2 rule 4); the
// addresses are checked as Self.Addresses checks them.
func ParseAdmission(b []byte) (*Admission, error) {
	var raw struct {
		NodeID      string `json:"node_id"`
		MeshAddress string `json:"mesh_address"`
		MeshIPv4    string `json:"mesh_ipv4"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("admission record: %w", err)
	}
	if raw.NodeID == "" {
		return nil, errors.New("admission record.node_id: empty")
	}
	a := &Admission{NodeID: raw.NodeID, Self: Self{MeshAddress: raw.MeshAddress, MeshIPv4: raw.MeshIPv4}}
	if _, err := a.Addresses(30); err != nil {
		return nil, fmt.Errorf("admission record.%w", err)
	}
	return a, nil
}

// LoadAdmission reads attestd's record at path (at most 1 MiB).
func LoadAdmission(path string) (*Admission, error) {
	b, err := boundedfile.Read(path, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("admission record: %w", err)
	}
	a, err := ParseAdmission(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}
