package provisioner

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/palisade-cc/palisade/provisioner/config"
	"github.com/palisade-cc/palisade/provisioner/dhcp"
	"github.com/palisade-cc/palisade/provisioner/httpboot"
	"github.com/palisade-cc/palisade/provisioner/inventory"
	"github.com/palisade-cc/palisade/provisioner/tftp"
)

const e2eToken = "e2e-admin-token-0123456789"

// Loopback addresses of the simulated relay and of the DHCP server: the
// whole test stays on 127.0.0.0/8.
const (
	relayIP  = "127.77.0.1"
	dhcpIP   = "127.77.0.254"
	testMAC  = "52:54:00:77:00:01"
	testMAC2 = "52:54:00:77:00:02"
)

type e2e struct {
	t     *testing.T
	p     *Provisioner
	addrs Addrs
	relay *net.UDPConn
	cli   *CLI
	out   *bytes.Buffer
	done  chan error
	stop  context.CancelFunc
}

func start(t *testing.T) *e2e {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte(e2eToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.API = config.API{Listen: "127.0.0.1:0", AdminTokenFile: tok}
	cfg.DHCP = &dhcp.Config{
		Mode:   dhcp.ModeAuthoritative,
		Listen: dhcpIP + ":0",
		Subnets: []dhcp.Subnet{{
			CIDR: "127.77.0.0/24", RangeStart: "127.77.0.100", RangeEnd: "127.77.0.199", LeaseTime: "1h",
		}},
	}
	cfg.TFTP = &tftp.Config{Listen: "127.0.0.1:0"}
	cfg.HTTP = &httpboot.Config{Listen: "127.0.0.1:0"}
	cfg.Boot.DefaultProfile = "worker"
	cfg.Profiles = []inventory.Profile{{Name: "worker", Image: "uki.efi", Platform: "tpm", Role: "worker"}}
	raw, _ := json.Marshal(cfg)
	cfg, err := config.Parse(raw) // the same path a file takes: defaults, Validate
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &e2e{t: t, p: p, addrs: p.Addrs(), done: make(chan error, 1), stop: cancel, out: &bytes.Buffer{}}
	go func() { e.done <- p.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-e.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	// The relay receives the server's answers on the server port, as a real
	// relay agent does (RFC 2131 §4.1).
	e.relay, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(relayIP+":67")))
	if err != nil {
		t.Fatalf("relay socket: %v", err)
	}
	t.Cleanup(func() { e.relay.Close() })
	e.cli = &CLI{Stdout: e.out, Stderr: e.out, Getenv: func(k string) string {
		switch k {
		case "PALISADE_PROVISIONER_TOKEN":
			return e2eToken
		case "PALISADE_PROVISIONER_SERVER":
			return "http://" + e.addrs.API.String()
		}
		return ""
	}}
	return e
}

// run runs a CLI command and returns its output.
func (e *e2e) run(args ...string) string {
	e.t.Helper()
	e.out.Reset()
	if rc := e.cli.Run(context.Background(), args); rc != 0 {
		e.t.Fatalf("provisioner %s: exit %d\n%s", strings.Join(args, " "), rc, e.out)
	}
	return e.out.String()
}

// exchange sends a relayed DHCP message and returns the answer (nil if none
// within the timeout).
func (e *e2e) exchange(m *dhcpv4.DHCPv4, wait time.Duration) *dhcpv4.DHCPv4 {
	e.t.Helper()
	m.GatewayIPAddr = net.ParseIP(relayIP).To4()
	m.HopCount = 1
	var server *net.UDPAddr
	for _, a := range e.addrs.DHCP {
		if u, ok := a.(*net.UDPAddr); ok && u.IP.Equal(net.ParseIP(dhcpIP)) {
			server = u
		}
	}
	if server == nil {
		e.t.Fatalf("no DHCP listener on %s in %v", dhcpIP, e.addrs.DHCP)
	}
	if _, err := e.relay.WriteToUDP(m.ToBytes(), server); err != nil {
		e.t.Fatal(err)
	}
	buf := make([]byte, 1500)
	e.relay.SetReadDeadline(time.Now().Add(wait))
	for {
		n, _, err := e.relay.ReadFromUDP(buf)
		if err != nil {
			return nil
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && r.TransactionID == m.TransactionID {
			return r
		}
	}
}

func pxe(mac string, arch iana.Arch, vendor string) []dhcpv4.Modifier {
	hw, _ := net.ParseMAC(mac)
	return []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(hw),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendor)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat([]byte{0xab}, 16)...))),
	}
}

func (e *e2e) dora(mac string, arch iana.Arch, vendor string) (offer, ack *dhcpv4.DHCPv4) {
	e.t.Helper()
	hw, _ := net.ParseMAC(mac)
	d, err := dhcpv4.NewDiscovery(hw, pxe(mac, arch, vendor)...)
	if err != nil {
		e.t.Fatal(err)
	}
	offer = e.exchange(d, 5*time.Second)
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		e.t.Fatalf("no OFFER for %s: %v", mac, offer)
	}
	r, err := dhcpv4.NewRequestFromOffer(offer, pxe(mac, arch, vendor)...)
	if err != nil {
		e.t.Fatal(err)
	}
	ack = e.exchange(r, 5*time.Second)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		e.t.Fatalf("no ACK for %s: %v", mac, ack)
	}
	return offer, ack
}

func (e *e2e) machine(mac string) inventory.Machine {
	e.t.Helper()
	var m inventory.Machine
	if err := json.Unmarshal([]byte(e.run("machines", "show", mac, "--json")), &m); err != nil {
		e.t.Fatal(err)
	}
	return m
}

// TestEndToEnd: a machine is discovered over relayed DHCP, gets no image
// until accepted through the CLI, then gets its boot answer, fetches the
// image over TFTP and HTTP, and its state advances.
func TestEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the simulated relay binds UDP port 67 on loopback")
	}
	e := start(t)
	image := bytes.Repeat([]byte("palisade UKI "), 50_000) // 650 kB
	src := filepath.Join(t.TempDir(), "uki.efi")
	os.WriteFile(src, image, 0o644)
	if out := e.run("images", "add", src); !strings.Contains(out, "uki.efi 650000 bytes sha256:") {
		t.Errorf("images add: %q", out)
	}

	// Unaccepted: an address, but no boot file.
	offer, ack := e.dora(testMAC, iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016")
	if ack.BootFileName != "" || offer.BootFileName != "" {
		t.Errorf("unaccepted machine got boot file %q/%q", offer.BootFileName, ack.BootFileName)
	}
	var list []inventory.Machine
	json.Unmarshal([]byte(e.run("machines", "list", "--json")), &list)
	if len(list) != 1 || list[0].MAC != testMAC || list[0].State != inventory.Discovered || list[0].Relay != relayIP {
		t.Fatalf("after DISCOVER: %+v", list)
	}
	if list[0].UUID != "abababab-abab-abab-abab-abababababab" || list[0].ArchName != "x64-uefi" {
		t.Errorf("recorded identity: %+v", list[0])
	}

	// Accepted through the CLI: the boot file comes.
	if out := e.run("machines", "accept", testMAC); !strings.Contains(out, "accepted") {
		t.Errorf("accept: %q", out)
	}
	_, ack = e.dora(testMAC, iana.EFI_X86_64, "PXEClient:Arch:00007:UNDI:003016")
	if ack.BootFileName != "uki.efi" {
		t.Fatalf("accepted machine: boot file %q, want uki.efi", ack.BootFileName)
	}
	var got bytes.Buffer
	if _, err := tftp.Get(context.Background(), e.addrs.TFTP, ack.BootFileName, &got, tftp.ClientOptions{BlockSize: 1468, WindowSize: 8, TSize: true}); err != nil {
		t.Fatalf("TFTP get: %v", err)
	}
	if !bytes.Equal(got.Bytes(), image) {
		t.Fatalf("TFTP image differs: %d bytes", got.Len())
	}
	waitState(t, e, testMAC, inventory.Booting)

	// UEFI HTTP boot: the answer is a URL, and the URL serves the image.
	_, ack = e.dora(testMAC2, iana.EFI_X86_64_HTTP, "HTTPClient:Arch:00016:UNDI:003001")
	if ack.BootFileName != "" {
		t.Errorf("unaccepted HTTP client got %q", ack.BootFileName)
	}
	e.run("machines", "accept", testMAC2, "--profile", "worker")
	_, ack = e.dora(testMAC2, iana.EFI_X86_64_HTTP, "HTTPClient:Arch:00016:UNDI:003001")
	want := "http://" + e.addrs.HTTP.String() + "/uki.efi"
	if ack.BootFileName != want || ack.ClassIdentifier() != "HTTPClient" {
		t.Fatalf("HTTP boot answer %q (option 60 %q), want %q", ack.BootFileName, ack.ClassIdentifier(), want)
	}
	resp, err := http.Get(ack.BootFileName)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, image) {
		t.Fatalf("HTTP image: %d, %d bytes", resp.StatusCode, len(body))
	}
	waitState(t, e, testMAC2, inventory.Booting)

	// The cluster reports; the timeline shows the whole story.
	e.run("machines", "report", testMAC, "joined", "--detail", "node-1")
	out := e.run("machines", "show", testMAC)
	for _, w := range []string{"joined since", "discover", "accept", "tftp", "uki.efi", "650000 bytes", "→ booting", "→ joined"} {
		if !strings.Contains(out, w) {
			t.Errorf("machines show lacks %q:\n%s", w, out)
		}
	}

	// /metrics has the inventory, DHCP and TFTP series.
	resp, err = http.Get("http://" + e.addrs.API.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, w := range []string{`provisioner_inventory_machines{state="joined"} 1`, `provisioner_inventory_machines{state="booting"} 1`, "provisioner_dhcp_", "provisioner_tftp_", "provisioner_http_"} {
		if !strings.Contains(string(metrics), w) {
			t.Errorf("/metrics lacks %q", w)
		}
	}
	// The UI is served by the same listener.
	resp, err = http.Get("http://" + e.addrs.API.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("UI: %d", resp.StatusCode)
	}
}

func waitState(t *testing.T, e *e2e, mac string, want inventory.State) {
	t.Helper()
	// Observers report when the transfer ends, which the client may see
	// a little earlier; poll briefly instead of sleeping.
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := e.machine(mac)
		if m.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %s, want %s", mac, m.State, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
