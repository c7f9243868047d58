package dhcp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
)

// childEnv names the config file a re-executed test binary serves
// (TestCrashLosesNoAckedLease's server child).
const childEnv = "PROVISIONER_DHCP_TEST_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(runChild(path))
	}
	os.Exit(m.Run())
}

func runChild(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s, err := New(cfg, nil, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(s.Addrs()[0])
	if err := s.Serve(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func loopbackConfig(t *testing.T) Config {
	t.Helper()
	return Config{
		Mode: ModeAuthoritative, Listen: "127.0.0.1:0", LeaseDB: filepath.Join(t.TempDir(), "leases.db"),
		Subnets: []Subnet{{CIDR: "127.0.0.0/16", RangeStart: "127.0.1.0", RangeEnd: "127.0.255.254", LeaseTime: "1h"}},
	}
}

// relayClient speaks to a server on loopback as a relay at 127.0.0.1 would.
type relayClient struct {
	t    testing.TB
	conn *net.UDPConn
	srv  *net.UDPAddr
}

func newRelayClient(t testing.TB, srv net.Addr) *relayClient {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &relayClient{t: t, conn: c, srv: srv.(*net.UDPAddr)}
}

// exchange sends m and waits for the reply with its transaction ID.
func (c *relayClient) exchange(m *dhcpv4.DHCPv4, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	m.GatewayIPAddr = net.IPv4(127, 0, 0, 1).To4()
	if _, err := c.conn.WriteToUDP(m.ToBytes(), c.srv); err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(timeout)
	for {
		c.conn.SetReadDeadline(deadline)
		n, err := c.conn.Read(buf)
		if err != nil {
			return nil, err
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || r.TransactionID != m.TransactionID {
			continue
		}
		return r, nil
	}
}

func (c *relayClient) dora(mac net.HardwareAddr, timeout time.Duration) (net.IP, error) {
	offer, err := c.exchange(msg(c.t, dhcpv4.MessageTypeDiscover, mac.String()), timeout)
	if err != nil {
		return nil, fmt.Errorf("DISCOVER: %w", err)
	}
	ack, err := c.exchange(msg(c.t, dhcpv4.MessageTypeRequest, mac.String(),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))), timeout)
	if err != nil {
		return nil, fmt.Errorf("REQUEST: %w", err)
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		return nil, fmt.Errorf("REQUEST answered with %v", ack.MessageType())
	}
	return ack.YourIPAddr, nil
}

func TestServeLoopback(t *testing.T) {
	cfg := loopbackConfig(t)
	reg := prometheus.NewRegistry()
	s, err := New(cfg, nil, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c := newRelayClient(t, s.Addrs()[0])
	var ips []string
	for i := 0; i < 3; i++ {
		ip, err := c.dora(net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}, 5*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		ips = append(ips, ip.String())
	}
	if want := []string{"127.0.1.0", "127.0.1.1", "127.0.1.2"}; strings.Join(ips, " ") != strings.Join(want, " ") {
		t.Errorf("leases %v, want %v", ips, want)
	}
	// Junk is counted, not answered, and the server keeps serving.
	c.conn.WriteToUDP([]byte("junk"), c.srv)
	if _, err := c.dora(net.HardwareAddr{2, 0, 0, 0, 0, 9}, 5*time.Second); err != nil {
		t.Fatalf("after junk: %v", err)
	}
	for _, name := range []string{
		"provisioner_dhcp_leases_in_use", "provisioner_dhcp_bad_packets_total", "provisioner_dhcp_packets_total",
		"provisioner_dhcp_commit_batch_size", "provisioner_dhcp_commit_seconds", "provisioner_dhcp_commit_errors_total",
	} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n == 0 {
			t.Errorf("metric %s not registered (%v)", name, err)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP provisioner_dhcp_leases_in_use Bound, unexpired leases.
# TYPE provisioner_dhcp_leases_in_use gauge
provisioner_dhcp_leases_in_use 4
# HELP provisioner_dhcp_bad_packets_total DHCP packets dropped as malformed, by reason.
# TYPE provisioner_dhcp_bad_packets_total counter
provisioner_dhcp_bad_packets_total{reason="truncated"} 1
`), "provisioner_dhcp_leases_in_use", "provisioner_dhcp_bad_packets_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(s.met.packets.WithLabelValues("request", resultAnswered)); got != 4 {
		t.Errorf("answered REQUESTs = %v, want 4", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	// Everything is closed: the port and the lease file can be taken again.
	cfg.Listen = s.Addrs()[0].String()
	s2, err := New(cfg, nil, nil, nil)
	if err != nil {
		t.Fatalf("restart on the same port and file: %v", err)
	}
	defer s2.Close()
	if got := s2.table.inUse(time.Now()); got != 4 {
		t.Errorf("leases after restart = %d, want 4", got)
	}
}

func TestRefusesInterfaceWithoutSubnet(t *testing.T) {
	cfg := authConfig(t)
	cfg.Listen = ""
	cfg.Interfaces = []string{"lo"} // 127.0.0.1/8: no configured subnet
	reg := prometheus.NewRegistry()
	_, err := New(cfg, nil, reg, nil)
	if err == nil || !strings.Contains(err.Error(), "lo has no IPv4 address inside a configured subnet") {
		t.Fatalf("New on lo with subnet 10.0.0.0/24: %v, want a refusal naming lo", err)
	}
	if _, statErr := os.Stat(cfg.LeaseDB); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("refused start still created the lease file (%v)", statErr)
	}
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Errorf("refused start registered %d metrics", n)
	}
	cfg.Interfaces = []string{"nosuchif0"}
	if _, err := New(cfg, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "nosuchif0") {
		t.Errorf("New on a missing interface: %v", err)
	}
}

// TestCrashLosesNoAckedLease runs the server as a child process, storms it
// with DORAs from several clients, kills it with SIGKILL mid-storm, and
// checks that every lease a client saw ACKed is in the lease file.
func TestCrashLosesNoAckedLease(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	cfg := loopbackConfig(t)
	path := filepath.Join(t.TempDir(), "config.json")
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child did not report its address: %v", err)
	}
	srv, err := net.ResolveUDPAddr("udp4", strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("child address %q: %v", line, err)
	}

	type acked struct {
		mac net.HardwareAddr
		ip  net.IP
	}
	var (
		mu    sync.Mutex
		seen  []acked
		wg    sync.WaitGroup
		stop  = make(chan struct{})
		first = make(chan struct{}, 1)
	)
	const workers = 8
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newRelayClient(t, srv)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				mac := net.HardwareAddr{2, 1, byte(w), byte(i >> 16), byte(i >> 8), byte(i)}
				ip, err := c.dora(mac, 500*time.Millisecond)
				if err != nil {
					continue // server gone or a reply lost; only ACKs count
				}
				mu.Lock()
				seen = append(seen, acked{mac, ip})
				n := len(seen)
				mu.Unlock()
				if n == 200 {
					first <- struct{}{}
				}
			}
		}()
	}
	select {
	case <-first:
	case <-time.After(30 * time.Second):
		t.Fatal("fewer than 200 ACKs in 30s")
	}
	// Kill mid-storm: workers are still sending.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed = true
	cmd.Wait()
	close(stop)
	wg.Wait()

	db, err := bolt.Open(cfg.LeaseDB, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open lease file after crash: %v", err)
	}
	defer db.Close()
	missing := 0
	err = db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLeases)
		for _, a := range seen {
			key := leaseKey(mustU32(t, a.ip.String()))
			v := bk.Get(key)
			l, err := decodeLease(key, v)
			if v == nil || err != nil || l.mac != string(a.mac) || l.state != stateBound {
				missing++
				if missing <= 5 {
					t.Errorf("ACKed lease %v for %v not durable: record %x (%v)", a.ip, a.mac, v, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d ACKed leases, %d missing after kill -9", len(seen), missing)
	if missing > 0 {
		t.Fatalf("%d of %d ACKed leases lost", missing, len(seen))
	}
}
