package meshd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/internal/netns"
	"github.com/palisade-cc/palisade/keyd/api"
)

// inNS runs fn on an OS thread switched into the network namespace nsfd.
// Sockets, TUN devices and netlink sockets created by fn belong to that
// namespace for their lifetime. The thread is returned to the scheduler only
// after it is back in its original namespace; otherwise it dies with the
// goroutine, so no other goroutine ever runs in the wrong namespace.
func inNS(nsfd int, fn func() error) error { return netns.Do(nsfd, fn) }

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// hostNode is one node: a namespace with a veth on the test's bridge and a
// wireguard-go device run in this process, reachable over its UAPI socket.
type hostNode struct {
	ns      string
	nsfd    int
	ifname  string
	key     wgtypes.Key
	under   netip.Addr // underlay address on the veth
	mesh6   netip.Addr
	mesh4   netip.Addr
	applier *Applier
}

func (n *hostNode) peer() api.Peer {
	pub := n.key.PublicKey()
	return api.Peer{NodeID: n.ns, WireGuardKey: pub[:], MeshAddress: n.mesh6.String(), MeshIPv4: n.mesh4.String(),
		Endpoints: []string{netip.AddrPortFrom(n.under, 51820).String()}}
}

type hostMesh struct {
	prefix string
	bridge string
	wg     *wgctrl.Client
}

func newHostMesh(t *testing.T) *hostMesh { return newHostMeshNamed(t, "m1m") }

// newHostMeshNamed makes the bridge namespace; tag keeps the names of two
// tests in one process apart.
func newHostMeshNamed(t *testing.T, tag string) *hostMesh {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("host mesh test needs root (network namespaces, /dev/net/tun); CI runs it as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("host mesh test needs iproute2's ip")
	}
	if testing.Short() {
		t.Skip("host mesh test skipped in -short mode")
	}
	// Names unique per process: other engineers' tests share this host,
	// and wireguard-go's UAPI sockets share /var/run/wireguard.
	m := &hostMesh{prefix: fmt.Sprintf("%s%d", tag, os.Getpid()%100000)}
	m.bridge = m.prefix + "br"
	run(t, "ip", "netns", "add", m.bridge)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", m.bridge).Run() })
	run(t, "ip", "-n", m.bridge, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", m.bridge, "link", "set", "br0", "up")
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wg.Close() })
	m.wg = wg
	return m
}

var meshPrefix = netip.MustParsePrefix("fd5a:11ce:77::/64")

// addNode is a node configured statically: fixed mesh addresses and an
// Applier the test drives.
func (m *hostMesh) addNode(t *testing.T, i int) *hostNode {
	t.Helper()
	n := m.addDevice(t, i)
	n.key = newKey(t)
	n.mesh6 = netip.MustParseAddr(fmt.Sprintf("fd5a:11ce:77::%d", i))
	n.mesh4 = netip.AddrFrom4([4]byte{10, 77, 0, byte(i)})
	// The node's addresses, MTU and link state, as meshd sets them.
	if err := (Link{NetNS: n.nsfd}).Configure(n.ifname,
		[]netip.Prefix{netip.PrefixFrom(n.mesh6, meshPrefix.Bits()), netip.PrefixFrom(n.mesh4, 24)}, 1380); err != nil {
		t.Fatal(err)
	}
	n.applier = &Applier{WG: m.wg, Interface: n.ifname, PrivateKey: n.key, ListenPort: 51820, Keepalive: time.Second}
	return n
}

// addDevice makes node i's namespace, its veth on the bridge (underlay
// 192.168.77.i/24) and a wireguard-go device with no key and no peers,
// listening on UDP 51820 inside the namespace.
func (m *hostMesh) addDevice(t *testing.T, i int) *hostNode {
	t.Helper()
	n := &hostNode{ns: fmt.Sprintf("%sn%d", m.prefix, i), ifname: fmt.Sprintf("%sw%d", m.prefix, i),
		under: netip.AddrFrom4([4]byte{192, 168, 77, byte(i)})}
	run(t, "ip", "netns", "add", n.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.ns).Run() })
	veth := fmt.Sprintf("v%d", i)
	run(t, "ip", "-n", m.bridge, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.ns)
	run(t, "ip", "-n", m.bridge, "link", "set", veth, "master", "br0", "up")
	run(t, "ip", "-n", n.ns, "addr", "add", n.under.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", n.ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
	f, err := os.Open("/run/netns/" + n.ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	n.nsfd = int(f.Fd())

	var dev *device.Device
	var uapi net.Listener
	err = inNS(n.nsfd, func() error {
		td, err := tun.CreateTUN(n.ifname, device.DefaultMTU)
		if err != nil {
			return fmt.Errorf("tun %s: %w", n.ifname, err)
		}
		dev = device.NewDevice(td, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
		// The UDP socket is opened here, inside the namespace.
		if err := dev.IpcSet("listen_port=51820\n"); err != nil {
			return err
		}
		if err := dev.Up(); err != nil {
			return err
		}
		uf, err := ipc.UAPIOpen(n.ifname)
		if err != nil {
			return fmt.Errorf("uapi %s: %w", n.ifname, err)
		}
		uapi, err = ipc.UAPIListen(n.ifname, uf)
		return err
	})
	if dev != nil {
		t.Cleanup(dev.Close)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uapi.Close() })
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			// Each UAPI request is served inside the namespace, as the
			// wireguard-go daemon would serve it: a listen_port change
			// reopens the UDP socket on the handling thread.
			go inNS(n.nsfd, func() error { dev.IpcHandle(c); return nil })
		}
	}()
	return n
}

// echo serves a TCP echo on the node's mesh addresses.
func (n *hostNode) echo(t *testing.T) {
	t.Helper()
	var ln net.Listener
	if err := inNS(n.nsfd, func() (err error) { ln, err = net.Listen("tcp", "[::]:7"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

// talk dials to's echo from n over the mesh and checks one round trip.
func (n *hostNode) talk(to netip.Addr, timeout time.Duration) error {
	var c net.Conn
	if err := inNS(n.nsfd, func() (err error) {
		c, err = (&net.Dialer{Timeout: timeout}).Dial("tcp", netip.AddrPortFrom(to, 7).String())
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	msg := "hello from " + n.ns + "\n"
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func TestHostMesh(t *testing.T) {
	m := newHostMesh(t)
	nodes := []*hostNode{m.addNode(t, 1), m.addNode(t, 2), m.addNode(t, 3)}
	// A fourth node that keyd never listed (failed attestation): it knows
	// node 1's key and endpoint and configures itself to reach it.
	rogue := m.addNode(t, 4)
	for _, n := range nodes {
		n.echo(t)
	}

	k := newFakeKeyd(t)
	k.update(func(s *api.PeerSet) {
		for _, n := range nodes {
			s.Peers = append(s.Peers, n.peer())
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, n := range nodes {
		f := &Follower{Source: k.client(), Wait: 2 * time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.Run(ctx, func(ctx context.Context, s *api.PeerSet) error { _, err := n.applier.Apply(ctx, s); return err })
		}()
	}
	if _, err := rogue.applier.Apply(ctx, &api.PeerSet{Revision: 1, Peers: []api.Peer{rogue.peer(), nodes[0].peer()}}); err != nil {
		t.Fatal(err)
	}

	// Every admitted pair talks, over IPv6 and IPv4 mesh addresses.
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			for _, to := range []netip.Addr{b.mesh6, b.mesh4} {
				var err error
				for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
					if err = a.talk(to, time.Second); err == nil {
						break
					}
				}
				if err != nil {
					t.Fatalf("%s → %v over the mesh: %v", a.ns, to, err)
				}
			}
		}
	}
	// Status and metrics show WireGuard's own numbers after the traffic.
	mon := &Monitor{Applier: nodes[0].applier}
	st, err := mon.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 2 {
		t.Fatalf("status of %s: %d peers, want 2", nodes[0].ns, len(st.Peers))
	}
	for _, p := range st.Peers {
		if p.NodeID == "" || p.LastHandshake.IsZero() || p.RxBytes == 0 || p.TxBytes == 0 {
			t.Errorf("status peer %+v: want node ID, a handshake and bytes both ways", p)
		}
	}
	rec := httptest.NewRecorder()
	mon.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{"meshd_peers 2", "meshd_peer_handshake_age_seconds{key=", `meshd_peer_receive_bytes_total{key="` + nodes[1].key.PublicKey().String() + `",node="` + nodes[1].ns + `"}`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, rec.Body.String())
		}
	}

	// The unlisted node gets nowhere: node 1 has no peer with its key.
	if err := rogue.talk(nodes[0].mesh6, 2*time.Second); err == nil {
		t.Error("an unlisted node reached an admitted node over the mesh")
	}

	// An open connection from node 3 to node 1, then node 3 is revoked.
	var live net.Conn
	if err := inNS(nodes[2].nsfd, func() (err error) {
		live, err = net.DialTimeout("tcp", netip.AddrPortFrom(nodes[0].mesh6, 7).String(), time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	start := time.Now()
	k.update(func(s *api.PeerSet) { s.Peers = s.Peers[:2] })
	revokedKey := nodes[2].key.PublicKey()
	gone := func(n *hostNode) bool {
		d, err := m.wg.Device(n.ifname)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range d.Peers {
			if p.PublicKey == revokedKey {
				return false
			}
		}
		return true
	}
	for !gone(nodes[0]) || !gone(nodes[1]) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("revoked node still configured on its peers after 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("revocation → removed from both peers in %v", time.Since(start))
	live.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(live, "still there?\n"); err == nil {
		if _, err := bufio.NewReader(live).ReadString('\n'); err == nil {
			t.Error("the revoked node's open connection still carries data")
		}
	}
	if err := nodes[2].talk(nodes[0].mesh6, time.Second); err == nil {
		t.Error("the revoked node opened a new connection")
	}
	// The remaining two still talk.
	if err := nodes[0].talk(nodes[1].mesh6, 2*time.Second); err != nil {
		t.Errorf("admitted nodes after a revocation: %v", err)
	}
}
