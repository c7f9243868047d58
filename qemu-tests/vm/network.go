package vm

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/palisade-cc/palisade/internal/netns"
)

// Network is a network namespace created for one test, with a bridge that
// holds the gateway address and the VMs' taps. Nothing in it touches the
// host's interfaces: servers of the test listen on Gateway inside it.
type Network struct {
	// NS is the namespace's name (ip netns).
	NS string
	// Bridge is the bridge inside NS.
	Bridge string
	// Prefix is the subnet; Gateway its first address, on the bridge.
	Prefix  netip.Prefix
	Gateway netip.Addr

	mu   sync.Mutex
	taps int
	fd   int
}

var netSeq atomic.Int32

// NewNetwork creates a namespace with loopback up and a bridge holding the
// first address of subnet (e.g. "10.77.0.0/24"). It is deleted, with every
// tap in it, when the test ends.
func NewNetwork(t testing.TB, subnet string) *Network {
	t.Helper()
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() > 29 {
		t.Fatalf("vm: network %q: want an IPv4 prefix of /29 or wider", subnet)
	}
	p = p.Masked()
	n := &Network{
		NS:      fmt.Sprintf("pq%d-%d", os.Getpid(), netSeq.Add(1)),
		Bridge:  "br0",
		Prefix:  p,
		Gateway: p.Addr().Next(),
		fd:      -1,
	}
	ip(t, "netns", "add", n.NS)
	t.Cleanup(n.close)
	ip(t, "-n", n.NS, "link", "set", "lo", "up")
	ip(t, "-n", n.NS, "link", "add", n.Bridge, "type", "bridge")
	ip(t, "-n", n.NS, "addr", "add", fmt.Sprintf("%s/%d", n.Gateway, p.Bits()), "dev", n.Bridge)
	ip(t, "-n", n.NS, "link", "set", n.Bridge, "up")
	fd, err := unix.Open("/run/netns/"+n.NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("vm: open namespace %s: %v", n.NS, err)
	}
	n.fd = fd
	return n
}

func (n *Network) close() {
	if n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
	}
	// Deleting the namespace removes its bridge and taps; a process still
	// inside keeps it alive, which LeftOvers reports.
	_ = exec.Command("ip", "netns", "del", n.NS).Run()
}

// Addr returns the i-th host address of the subnet (1 is the gateway).
func (n *Network) Addr(i int) netip.Addr {
	a := n.Prefix.Addr()
	for range i {
		a = a.Next()
	}
	return a
}

// Tap creates a tap device attached to the bridge and returns its name.
func (n *Network) Tap(t testing.TB) string {
	t.Helper()
	n.mu.Lock()
	name := fmt.Sprintf("tap%d", n.taps)
	n.taps++
	n.mu.Unlock()
	ip(t, "-n", n.NS, "tuntap", "add", name, "mode", "tap")
	ip(t, "-n", n.NS, "link", "set", name, "master", n.Bridge)
	ip(t, "-n", n.NS, "link", "set", name, "up")
	return name
}

// Command returns cmd run inside the namespace (ip netns exec).
func (n *Network) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.NS, name}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace, so sockets fn
// opens live there; the thread is switched back (or retired) afterwards.
func (n *Network) Do(fn func() error) error { return netns.Do(n.fd, fn) }

// Listen opens a TCP listener inside the namespace.
func (n *Network) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("vm: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}
