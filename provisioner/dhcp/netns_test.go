package dhcp

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// netnsLab is two network namespaces the test created, "srv" and "cli",
// joined by veth pairs. Nothing in it touches the host's interfaces.
type netnsLab struct {
	t        *testing.T
	srv, cli string
}

func newNetnsLab(t *testing.T) *netnsLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces (ip netns add)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%100000)
	lab := &netnsLab{t: t, srv: "pdhcp-s-" + id, cli: "pdhcp-c-" + id}
	// Cleanup is registered before creation so a half-built lab is removed.
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", lab.srv).Run()
		exec.Command("ip", "netns", "del", lab.cli).Run()
	})
	lab.ip("netns", "add", lab.srv)
	lab.ip("netns", "add", lab.cli)
	lab.ip("-n", lab.srv, "link", "set", "lo", "up")
	lab.ip("-n", lab.cli, "link", "set", "lo", "up")
	return lab
}

func (lab *netnsLab) ip(args ...string) {
	lab.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		lab.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// veth creates a pair with one end in each namespace, both ends created
// inside them, and gives the server end addr (if set).
func (lab *netnsLab) veth(srvEnd, cliEnd, addr string) {
	lab.t.Helper()
	lab.ip("link", "add", srvEnd, "netns", lab.srv, "type", "veth", "peer", "name", cliEnd, "netns", lab.cli)
	if addr != "" {
		lab.ip("-n", lab.srv, "addr", "add", addr, "dev", srvEnd)
	}
	lab.ip("-n", lab.srv, "link", "set", srvEnd, "up")
	lab.ip("-n", lab.cli, "link", "set", cliEnd, "up")
}

// in runs fn with the calling OS thread inside namespace ns. Sockets keep
// the namespace they were created in, so what fn opens stays there.
func (lab *netnsLab) in(ns string, fn func()) {
	lab.t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		lab.t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		runtime.UnlockOSThread()
		lab.t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		lab.t.Fatalf("setns %s: %v", ns, err)
	}
	defer func() {
		// A thread that cannot go back stays locked and dies with the
		// goroutine, instead of serving others in the wrong namespace.
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	fn()
}

// bcastClient is a DHCP client on an interface without an address: it
// broadcasts from 0.0.0.0:68 and takes broadcast replies, as firmware does.
type bcastClient struct {
	conn *net.UDPConn
	mac  net.HardwareAddr
}

func newBcastClient(t *testing.T, iface string) *bcastClient {
	t.Helper()
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := listenUDP(context.Background(), iface, &net.UDPAddr{IP: net.IPv4zero, Port: clientPort})
	if err != nil {
		t.Fatalf("client socket on %s: %v", iface, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &bcastClient{conn: conn, mac: ifi.HardwareAddr}
}

func (c *bcastClient) exchange(t *testing.T, m *dhcpv4.DHCPv4, dst net.IP, timeout time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	if _, err := c.conn.WriteToUDP(m.ToBytes(), &net.UDPAddr{IP: dst, Port: serverPort}); err != nil {
		t.Fatalf("send %v: %v", m.MessageType(), err)
	}
	buf := make([]byte, 1500)
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			return nil
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && r.TransactionID == m.TransactionID && r.OpCode == dhcpv4.OpcodeBootReply {
			return r
		}
	}
}

// TestNetnsBroadcastDORA: a client on a veth with no address runs a
// broadcast DORA against the server bound (SO_BINDTODEVICE) to the other
// end, configures the address and renews by unicast. A second veth in the
// server's namespace, with an address in the same subnet but not in the
// configuration, gets no answer.
func TestNetnsBroadcastDORA(t *testing.T) {
	lab := newNetnsLab(t)
	lab.veth("vs0", "vc0", "10.88.0.1/24")
	lab.veth("vs1", "vc1", "10.88.0.2/24")
	cfg := Config{
		Mode: ModeAuthoritative, Interfaces: []string{"vs0"}, LeaseDB: filepath.Join(t.TempDir(), "leases.db"),
		Subnets: []Subnet{{CIDR: "10.88.0.0/24", RangeStart: "10.88.0.100", RangeEnd: "10.88.0.200", Router: "10.88.0.1", LeaseTime: "1h"}},
	}
	var s *Server
	lab.in(lab.srv, func() {
		var err error
		if s, err = New(cfg, nil, nil, nil); err != nil {
			t.Fatalf("New in namespace: %v", err)
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	var c, other *bcastClient
	lab.in(lab.cli, func() {
		c = newBcastClient(t, "vc0")
		other = newBcastClient(t, "vc1")
	})
	bcast := net.IPv4bcast
	discover := msg(t, dhcpv4.MessageTypeDiscover, c.mac.String(), dhcpv4.WithBroadcast(true))
	offer := c.exchange(t, discover, bcast, 5*time.Second)
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("broadcast DISCOVER on vc0: got %v, want OFFER", offer)
	}
	if !offer.ServerIdentifier().Equal(net.ParseIP("10.88.0.1")) {
		t.Errorf("server identifier %v, want vs0's 10.88.0.1", offer.ServerIdentifier())
	}
	req := msg(t, dhcpv4.MessageTypeRequest, c.mac.String(), dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))
	ack := c.exchange(t, req, bcast, 5*time.Second)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("broadcast REQUEST: got %v, want ACK for %v", ack, offer.YourIPAddr)
	}

	// Configure the lease and renew by unicast to the server (RENEWING).
	lab.ip("-n", lab.cli, "addr", "add", ack.YourIPAddr.String()+"/24", "dev", "vc0")
	renew := msg(t, dhcpv4.MessageTypeRequest, c.mac.String(), dhcpv4.WithClientIP(ack.YourIPAddr))
	renew.TransactionID[0] ^= 0xff
	var r *dhcpv4.DHCPv4
	lab.in(lab.cli, func() {
		uc, err := listenUDP(context.Background(), "vc0", &net.UDPAddr{IP: ack.YourIPAddr, Port: 0})
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		r = (&bcastClient{conn: uc}).exchange(t, renew, ack.ServerIdentifier(), 5*time.Second)
	})
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("unicast renewal: got %v, want ACK", r)
	}

	// vs1 is in the subnet but not configured: silence.
	d2 := msg(t, dhcpv4.MessageTypeDiscover, other.mac.String(), dhcpv4.WithBroadcast(true))
	if r := other.exchange(t, d2, bcast, 500*time.Millisecond); r != nil {
		t.Errorf("server answered on vs1, an interface it was not given: %v", r)
	}
}

// TestNetnsProxy: proxyDHCP on a veth answers a broadcast PXE DISCOVER on
// port 67 with boot information and no address, and a REQUEST unicast to
// port 4011 with an ACK back to the client; a non-PXE client hears nothing.
func TestNetnsProxy(t *testing.T) {
	lab := newNetnsLab(t)
	lab.veth("vs0", "vc0", "10.89.0.1/24")
	var s *Server
	var c *bcastClient
	lab.in(lab.cli, func() { c = newBcastClient(t, "vc0") })
	p := &recordingPolicy{boots: map[string]Boot{c.mac.String(): {TFTPFile: "uefi/x64/palisade.efi"}}}
	lab.in(lab.srv, func() {
		var err error
		if s, err = New(Config{Mode: ModeProxy, Interfaces: []string{"vs0"}}, p, nil, nil); err != nil {
			t.Fatalf("New in namespace: %v", err)
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	pxe := []dhcpv4.Modifier{dhcpv4.WithBroadcast(true), withArch(7), withVendor("PXEClient:Arch:00007:UNDI:003016"), withUUID()}
	offer := c.exchange(t, msg(t, dhcpv4.MessageTypeDiscover, c.mac.String(), pxe...), net.IPv4bcast, 5*time.Second)
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("PXE DISCOVER: got %v, want proxy OFFER", offer)
	}
	if !offer.YourIPAddr.IsUnspecified() || offer.BootFileName != "uefi/x64/palisade.efi" || !offer.ServerIPAddr.Equal(net.ParseIP("10.89.0.1")) {
		t.Errorf("proxy OFFER yiaddr %v file %q siaddr %v", offer.YourIPAddr, offer.BootFileName, offer.ServerIPAddr)
	}
	plain := msg(t, dhcpv4.MessageTypeDiscover, c.mac.String(), dhcpv4.WithBroadcast(true))
	plain.TransactionID[0] ^= 0xff
	if r := c.exchange(t, plain, net.IPv4bcast, 500*time.Millisecond); r != nil {
		t.Errorf("proxy answered a non-PXE client: %v", r)
	}

	// The site's DHCP server would have given the client 10.89.0.50.
	lab.ip("-n", lab.cli, "addr", "add", "10.89.0.50/24", "dev", "vc0")
	var ack *dhcpv4.DHCPv4
	lab.in(lab.cli, func() {
		uc, err := listenUDP(context.Background(), "vc0", &net.UDPAddr{IP: net.ParseIP("10.89.0.50"), Port: 0})
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		req := msg(t, dhcpv4.MessageTypeRequest, c.mac.String(), append(pxe[1:], dhcpv4.WithClientIP(net.ParseIP("10.89.0.50")))...)
		req.TransactionID[1] ^= 0xff
		if _, err := uc.WriteToUDP(req.ToBytes(), &net.UDPAddr{IP: net.ParseIP("10.89.0.1"), Port: PXEPort}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		uc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := uc.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("no answer on port %d: %v", PXEPort, err)
		}
		if ack, err = dhcpv4.FromBytes(buf[:n]); err != nil {
			t.Fatal(err)
		}
	})
	if ack.MessageType() != dhcpv4.MessageTypeAck || ack.BootFileName != "uefi/x64/palisade.efi" {
		t.Errorf("port 4011 answer: %v", ack)
	}
}
