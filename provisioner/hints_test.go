package provisioner

import (
	"context"
	"errors"
	"flag"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	initapi "github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/provisioner/api"
	"github.com/palisade-cc/palisade/provisioner/dhcp"
	"github.com/palisade-cc/palisade/provisioner/inventory"
)

const hintsAdminTok = "hints-test-admin-token-0123"

func hintsAPI(t *testing.T) (*inventory.Store, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	im, err := api.NewImages(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := api.New(inv, api.Options{AdminToken: hintsAdminTok, Images: im})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return inv, map[string]string{"PALISADE_PROVISIONER_SERVER": srv.URL, "PALISADE_PROVISIONER_TOKEN": hintsAdminTok}
}

// TestCLIProfileCluster: profiles set --cluster is stored, listed and shown;
// a bad one is refused by its flag name before anything is sent, and the
// API refuses it by field name from clients that skip the CLI's check.
func TestCLIProfileCluster(t *testing.T) {
	inv, env := hintsAPI(t)
	set := []string{"profiles", "set", "worker", "--image", "uki.efi", "--keyd-hint", "10.0.0.2:7443", "--keyd-hint", "keyd.rack.example:7443"}
	if rc, out := runCLI(t, env, append(set, "--cluster", "prod-1")...); rc != 0 {
		t.Fatalf("profiles set --cluster prod-1: %d %s", rc, out)
	}
	p, err := inv.Profile("worker")
	if err != nil || p.Cluster != "prod-1" || p.HintText() != "keyd=10.0.0.2:7443,keyd.rack.example:7443 cluster=prod-1" {
		t.Fatalf("stored %+v, %v", p, err)
	}
	if rc, out := runCLI(t, env, "profiles", "list"); rc != 0 || !strings.Contains(out, "CLUSTER") || !strings.Contains(out, "prod-1") {
		t.Errorf("profiles list: %d\n%s", rc, out)
	}
	if rc, out := runCLI(t, env, "profiles", "show", "worker"); rc != 0 || !strings.Contains(out, `"cluster": "prod-1"`) {
		t.Errorf("profiles show: %d\n%s", rc, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster", "prod 1"}, "--cluster: "},
		{[]string{"--cluster", strings.Repeat("c", 65)}, "--cluster: "},
		{[]string{"--cluster", "prod/1"}, "--cluster: "},
		{[]string{"--keyd-hint", "10.0.0.4:0"}, "--keyd-hint: "},
	} {
		rc, out := runCLI(t, env, append(set, tc.args...)...)
		if rc != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("profiles set %v: exit %d, want 1 and %q\n%s", tc.args, rc, tc.want, out)
		}
	}
	if p, _ := inv.Profile("worker"); p.Cluster != "prod-1" {
		t.Errorf("a refused set changed the profile: %+v", p)
	}
	// The server checks on its own.
	cl := &api.Client{Base: env["PALISADE_PROVISIONER_SERVER"], Token: hintsAdminTok}
	bad := p
	bad.Cluster = "a=b"
	var e *api.Error
	if err := cl.PutProfile(context.Background(), bad); !errors.As(err, &e) || e.Status != 400 || e.Field != "cluster" {
		t.Errorf("PUT with cluster %q: %v; want 400 on field cluster", bad.Cluster, err)
	}
}

// TestPolicyHints: through the adapter the DHCP server uses, an accepted
// machine's booted OS (no PXEClient) gets hints the init parses; its
// discovered neighbour gets nothing.
func TestPolicyHints(t *testing.T) {
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.Options{DefaultProfile: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	if err := inv.PutProfile(inventory.Profile{Name: "worker", Image: "uki.efi", Platform: "tpm", Role: "worker",
		KeydHints: []string{"10.0.0.2:7443", "[fd00::2]:7443"}, Cluster: "c1"}); err != nil {
		t.Fatal(err)
	}
	accepted, _ := net.ParseMAC("52:54:00:00:02:01")
	stranger, _ := net.ParseMAC("52:54:00:00:02:02")
	if _, err := inv.Accept(accepted.String(), "", "test"); err != nil {
		t.Fatal(err)
	}
	pol := policy{inv}
	ctx := context.Background()
	b, err := pol.Boot(ctx, dhcp.Client{MAC: accepted, MessageType: "REQUEST"})
	if err != nil {
		t.Fatal(err)
	}
	if b.TFTPFile != "" || b.HTTPURL != "" {
		t.Errorf("OS client got a boot file: %+v", b)
	}
	h, err := initapi.ParseDHCPOption(b.Hints)
	if err != nil {
		t.Fatalf("init refuses %q: %v", b.Hints, err)
	}
	if strings.Join(h.Keyd, " ") != "10.0.0.2:7443 [fd00::2]:7443" || h.Cluster != "c1" {
		t.Errorf("init read %q as %+v", b.Hints, h)
	}
	if b, err := pol.Boot(ctx, dhcp.Client{MAC: stranger, MessageType: "DISCOVER"}); err != nil || b.Hints != nil {
		t.Errorf("discovered machine: %+v, %v; want no hints", b, err)
	}
}

// TestDocsProfileFields: docs/provisioner.md lists every profile field in
// the profiles[] row of the configuration reference and every flag of
// profiles set in the command-line synopsis, so a new field is documented.
func TestDocsProfileFields(t *testing.T) {
	b, err := os.ReadFile("../docs/provisioner.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	var row, synopsis string
	for _, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(l, "| `profiles[]` |") {
			row = l
		}
	}
	if i := strings.Index(doc, "provisioner profiles set NAME"); i >= 0 {
		synopsis, _, _ = strings.Cut(doc[i:], "\nprovisioner profiles delete")
	}
	if row == "" || synopsis == "" {
		t.Fatal("docs/provisioner.md lacks the profiles[] row or the profiles set synopsis")
	}
	for f := range reflect.TypeFor[inventory.Profile]().Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !strings.Contains(row, "`"+name+"`") {
			t.Errorf("profiles[] row lacks `%s`", name)
		}
	}
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	profileFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(synopsis, "--"+f.Name+" ") {
			t.Errorf("profiles set synopsis lacks --%s", f.Name)
		}
	})
	for _, want := range []string{"### Keyd hints: DHCP option 224", "keyd=HOST:PORT[,HOST:PORT…] cluster=ID", "RFC 3396", "Proxy mode never sends hints"} {
		if !strings.Contains(doc, want) {
			t.Errorf("docs lack %q", want)
		}
	}
}
