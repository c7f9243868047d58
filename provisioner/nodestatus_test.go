package provisioner

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	initapi "github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/provisioner/config"
	"github.com/palisade-cc/palisade/provisioner/dhcp"
	"github.com/palisade-cc/palisade/provisioner/httpboot"
	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// TestNodeStatusBootListener: the node-report endpoint is on the boot
// listener (not the admin API's), option 224 names that listener as
// status=, and a report from the machine's lease address lands in its
// timeline through the running service.
func TestNodeStatusBootListener(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte("node-status-admin-token-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.API = config.API{Listen: "127.0.0.1:0", AdminTokenFile: tok}
	cfg.HTTP = &httpboot.Config{Listen: "127.0.0.1:0"}
	cfg.Boot.DefaultProfile = "worker"
	cfg.Profiles = []inventory.Profile{{Name: "worker", Image: "uki.efi", Platform: "tpm", Role: "worker",
		KeydHints: []string{"10.0.0.2:7443"}, Cluster: "c1"}}
	raw, _ := json.Marshal(cfg)
	cfg, err := config.Parse(raw) // defaults and Validate, as from a file
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("Serve did not return")
		}
	})
	a := p.Addrs()
	inv := p.Inventory()
	mac, _ := net.ParseMAC("52:54:00:00:0d:01")
	if _, err := inv.Accept(mac.String(), "", "test"); err != nil {
		t.Fatal(err)
	}
	// What the DHCP server does on an ACK in authoritative mode.
	pol := policy{inv}
	b, err := pol.Boot(ctx, dhcp.Client{MAC: mac, MessageType: "REQUEST"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := initapi.ParseDHCPOption(b.Hints)
	if err != nil || h.Status != "http://"+a.HTTP.String() {
		t.Fatalf("hints %q read as %+v, %v; want status=http://%s", b.Hints, h, err, a.HTTP)
	}
	pol.Leased(mac, netip.MustParseAddr("127.0.0.31"))

	post := func(base, src string) int {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: 5 * time.Second}
		resp, err := c.Post(strings.TrimSuffix(base, "/")+initapi.StatusPath, "application/json", strings.NewReader(`{"state":"attested"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := post("http://"+a.API.String(), "127.0.0.31"); st == http.StatusNoContent {
		t.Error("the admin API listener took a node report")
	}
	if st := post(h.Status, "127.0.0.32"); st != http.StatusNotFound {
		t.Errorf("report from an unleased address: %d, want 404", st)
	}
	if m, _ := inv.Machine(mac.String()); m.State != inventory.Accepted {
		t.Fatalf("state %s before the node's report", m.State)
	}
	if st := post(h.Status, "127.0.0.31"); st != http.StatusNoContent {
		t.Fatalf("report from the lease address: %d, want 204", st)
	}
	if m, _ := inv.Machine(mac.String()); m.State != inventory.Attested {
		t.Errorf("state %s after the node reported attested", m.State)
	}
	// Files are still served beside it.
	resp, err := http.Get("http://" + a.HTTP.String() + "/uki.efi")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("missing image: %d, want the file handler's 404", resp.StatusCode)
	}
}
