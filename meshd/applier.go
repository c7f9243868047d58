package meshd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/keyd/api"
)

// wgClient is the part of *wgctrl.Client the applier uses; it talks to kernel
// WireGuard over generic netlink and to wireguard-go over its UAPI socket.
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// Applier makes one WireGuard interface's peers equal to a peer set.
type Applier struct {
	// WG configures the device (production: *wgctrl.Client).
	WG wgClient
	// Interface is the WireGuard interface's name.
	Interface string
	// PrivateKey is this node's key; the set's entry with its public key
	// is this node and is not a peer.
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port (0: leave the device's).
	ListenPort int
	// Keepalive is every peer's persistent keep-alive (0: off).
	Keepalive time.Duration
	// Logger receives one record per applied change (nil: discard).
	Logger *slog.Logger

	mu   sync.Mutex
	prev map[wgtypes.Key]desiredPeer
}

// Change counts what one Apply did.
type Change struct {
	Added, Removed, Updated int
}

// Apply configures the device so that its peers are exactly the set's,
// minus this node. A malformed set is refused whole and the device is left
// as it was.
func (a *Applier) Apply(_ context.Context, set *api.PeerSet) (Change, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	pub := a.PrivateKey.PublicKey()
	want, err := desiredSet(set, pub)
	if err != nil {
		return Change{}, err
	}
	dev, err := a.WG.Device(a.Interface)
	if err != nil {
		return Change{}, fmt.Errorf("wireguard device %s: %w", a.Interface, err)
	}
	cfg := wgtypes.Config{Peers: diff(dev.Peers, want, a.prev, a.Keepalive)}
	if dev.PrivateKey != a.PrivateKey {
		k := a.PrivateKey
		cfg.PrivateKey = &k
	}
	if a.ListenPort != 0 && dev.ListenPort != a.ListenPort {
		p := a.ListenPort
		cfg.ListenPort = &p
	}
	var ch Change
	for _, p := range cfg.Peers {
		switch {
		case p.Remove:
			ch.Removed++
		case p.UpdateOnly:
			ch.Updated++
		default:
			ch.Added++
		}
	}
	if len(cfg.Peers) > 0 || cfg.PrivateKey != nil || cfg.ListenPort != nil {
		if err := a.WG.ConfigureDevice(a.Interface, cfg); err != nil {
			return Change{}, fmt.Errorf("wireguard device %s: configure: %w", a.Interface, err)
		}
	}
	a.prev = want
	if ch != (Change{}) && a.Logger != nil {
		a.Logger.Info("peer set applied", "interface", a.Interface, "revision", set.Revision,
			"added", ch.Added, "removed", ch.Removed, "updated", ch.Updated, "peers", len(want))
	}
	return ch, nil
}
