package provisioner_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/palisade-cc/palisade/provisioner"
	"github.com/palisade-cc/palisade/provisioner/config"
	"github.com/palisade-cc/palisade/provisioner/inventory"
	"github.com/palisade-cc/palisade/provisioner/pxetest"
	"github.com/palisade-cc/palisade/provisioner/tftp"
)

// stormResult is what one machine saw; it crosses the process boundary as JSON.
type stormResult struct {
	MAC    string `json:"mac"`
	HTTP   bool   `json:"http"`
	IP     string `json:"ip"`
	File   string `json:"file"`
	Next   string `json:"next"` // siaddr, TFTP only
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	Stage  string `json:"stage,omitempty"`
	Err    string `json:"err,omitempty"`
}

// Storm test addresses: a private /16 that exists only inside the test's
// two network namespaces.
const (
	stormServerIP = "10.78.0.1"
	stormClientIP = "10.78.0.2"
	stormToken    = "storm-admin-token-0123456789"
	stormTFTP     = 10
	stormHTTP     = 10
)

// TestStorm: 20 simulated UEFI machines (10 PXE/TFTP, 10 HTTP boot) do
// broadcast DHCP against provisioner.Run in a network namespace, fetch the
// image, get it byte for byte, and the inventory shows each of them booting.
// The test binary re-executes itself inside the namespaces
// (PALISADE_STORM_ROLE=server|clients), because a namespace belongs to a
// thread and the Go runtime moves goroutines between threads.
func TestStorm(t *testing.T) {
	switch os.Getenv("PALISADE_STORM_ROLE") {
	case "server":
		stormServer(t)
		return
	case "clients":
		stormClients(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and binds DHCP ports 67/68 inside them")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) to create the network namespaces")
	}
	dir := t.TempDir()
	srvNS, cliNS := fmt.Sprintf("pst-s-%d", os.Getpid()), fmt.Sprintf("pst-c-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	// Registered first so it runs last, after the server stopped.
	t.Cleanup(func() {
		for _, ns := range []string{srvNS, cliNS} {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		}
	})
	ip("netns", "add", srvNS)
	ip("netns", "add", cliNS)
	ip("link", "add", "vsrv", "netns", srvNS, "type", "veth", "peer", "name", "vcli", "netns", cliNS)
	ip("-n", srvNS, "addr", "add", stormServerIP+"/16", "dev", "vsrv")
	ip("-n", cliNS, "addr", "add", stormClientIP+"/16", "dev", "vcli")
	for _, a := range [][]string{{srvNS, "lo"}, {cliNS, "lo"}, {srvNS, "vsrv"}, {cliNS, "vcli"}} {
		ip("-n", a[0], "link", "set", a[1], "up")
	}

	// A UKI-sized image of random bytes, the token and the config file.
	image := make([]byte, 2<<20)
	if _, err := io.ReadFull(rand.Reader, image); err != nil {
		t.Fatal(err)
	}
	images := filepath.Join(dir, "data", "images")
	os.MkdirAll(images, 0o755)
	if err := os.WriteFile(filepath.Join(images, "uki.efi"), image, 0o644); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte(stormToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "provisioner.json")
	// Every simulated machine fetches from the client namespace's one
	// address, so the per-address TFTP limit (default 8) is raised to the
	// machine count; real machines fetch from their own leases.
	cfg := fmt.Sprintf(`{
  "version": 1,
  "data_dir": %q,
  "api": {"listen": "%s:8081", "admin_token_file": %q},
  "dhcp": {"mode": "authoritative", "interfaces": ["vsrv"],
    "subnets": [{"cidr": "10.78.0.0/16", "range_start": "10.78.1.0", "range_end": "10.78.1.255", "lease_time": "1h"}]},
  "tftp": {"listen": "%s:69", "max_per_client": %d},
  "http": {"listen": "%s:8080"},
  "boot": {"default_profile": "worker"},
  "accept": [{"name": "storm", "mac_prefix": "02:53"}],
  "profiles": [{"name": "worker", "image": "uki.efi", "platform": "tpm", "role": "worker"}],
  "log": {"level": "warn"}
}`, filepath.Join(dir, "data"), stormServerIP, tok, stormServerIP, stormTFTP, stormServerIP)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs the binary, so the child's PID is the server's own.
	var srvOut bytes.Buffer
	srv := exec.Command("ip", "netns", "exec", srvNS, exe, "-test.run=^TestStorm$")
	srv.Env = append(os.Environ(), "PALISADE_STORM_ROLE=server", "PALISADE_STORM_CONFIG="+cfgPath)
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- srv.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server: %v\n%s", err, srvOut.String())
			}
		case <-time.After(15 * time.Second):
			srv.Process.Kill()
			<-done
			t.Errorf("server did not stop on SIGTERM\n%s", srvOut.String())
		}
	})

	report := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cli := exec.CommandContext(ctx, "ip", "netns", "exec", cliNS, exe, "-test.run=^TestStorm$")
	cli.Env = append(os.Environ(), "PALISADE_STORM_ROLE=clients", "PALISADE_STORM_REPORT="+report)
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("clients: %v\n%s\nserver:\n%s", err, out, srvOut.String())
	}
	var rep stormReport
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}

	sum := fmt.Sprintf("%x", sha256.Sum256(image))
	var got, want []stormResult
	wantStates := map[string]inventory.State{}
	for i := range stormTFTP + stormHTTP {
		c := pxetest.NewMachine(i+1, i >= stormTFTP)
		w := stormResult{MAC: c.MAC.String(), HTTP: c.HTTP, File: "uki.efi", Next: stormServerIP, Bytes: int64(len(image)), SHA256: sum}
		if c.HTTP {
			w.File, w.Next = "http://"+stormServerIP+":8080/uki.efi", ""
		}
		want = append(want, w)
		wantStates[w.MAC] = inventory.Booting
	}
	leases := map[string]bool{}
	for _, r := range rep.Results {
		if r.IP == "" || leases[r.IP] {
			t.Errorf("%s: lease %q missing or given twice", r.MAC, r.IP)
		}
		leases[r.IP] = true
		r.IP = ""
		got = append(got, r)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("machines (-want +got):\n%s", d)
	}
	states := map[string]inventory.State{}
	for _, m := range rep.Machines {
		states[m.MAC] = m.State
	}
	if d := cmp.Diff(wantStates, states); d != "" {
		t.Errorf("inventory states (-want +got):\n%s", d)
	}
}

type stormReport struct {
	Results  []stormResult
	Machines []inventory.Machine
}

// stormServer runs inside the server namespace: provisioner.Run until SIGTERM.
func stormServer(t *testing.T) {
	cfg, err := config.Load(os.Getenv("PALISADE_STORM_CONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := provisioner.Run(ctx, cfg, provisioner.NewLogger(cfg.Log)); err != nil {
		t.Fatal(err)
	}
}

// stormClients runs inside the client namespace: every machine does DORA,
// then (once all hold an ACK, so the inventory has offered the image to each
// before any transfer is attributed) every machine fetches its file at once.
func stormClients(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api := "http://" + stormServerIP + ":8081/api/v1/"
	get := func(path string, v any) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, api+path, nil)
		req.Header.Set("Authorization", "Bearer "+stormToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return json.NewDecoder(resp.Body).Decode(v)
	}
	// The server is up once its API answers (New binds every listener first).
	for {
		var who map[string]string
		if err := get("whoami", &who); err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("server not up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s, err := pxetest.Listen(ctx, "vcli")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	n := stormTFTP + stormHTTP
	res := make([]stormResult, n)
	acks := make([]*dhcpv4.DHCPv4, n)
	var wg sync.WaitGroup
	for i := range n {
		c := pxetest.NewMachine(i+1, i >= stormTFTP)
		res[i] = stormResult{MAC: c.MAC.String(), HTTP: c.HTTP}
		wg.Go(func() {
			ack, _, stage, err := c.DORA(ctx, s, time.Second, 4)
			if err != nil {
				res[i].Stage, res[i].Err = stage, err.Error()
				return
			}
			acks[i] = ack
			res[i].IP = ack.YourIPAddr.String()
		})
	}
	wg.Wait()
	for i := range n {
		if acks[i] == nil {
			continue
		}
		c := pxetest.NewMachine(i+1, i >= stormTFTP)
		wg.Go(func() {
			f, stage, err := c.Fetch(ctx, acks[i], tftp.ClientOptions{BlockSize: 1468, WindowSize: 16, TSize: true},
				&http.Client{Transport: &http.Transport{DisableKeepAlives: true}})
			res[i].File, res[i].Bytes, res[i].SHA256 = f.File, f.Bytes, fmt.Sprintf("%x", f.SHA256)
			if f.Next.IsValid() {
				res[i].Next = f.Next.String()
			}
			if err != nil {
				res[i].Stage, res[i].Err = stage, err.Error()
			}
		})
	}
	wg.Wait()

	// Observers report a transfer when the server sees it end, which the
	// client may see a little earlier: poll the inventory briefly.
	var machines []inventory.Machine
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		machines = nil
		if err := get("machines", &machines); err != nil {
			t.Fatal(err)
		}
		booting := 0
		for _, m := range machines {
			if m.State == inventory.Booting {
				booting++
			}
		}
		if booting == n || time.Now().After(deadline) {
			break
		}
	}
	raw, err := json.Marshal(stormReport{Results: res, Machines: machines})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv("PALISADE_STORM_REPORT"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
}
