package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/diskkey"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/verifier/config"
)

const (
	recDiskA = "0f0e0d0c-0b0a-4908-8706-050403020100"
	recDiskB = "11111111-2222-4333-8444-555555555555"
)

// admitWithDisks admits n claiming disks and returns what keyd sent it.
func (w *world) admitWithDisks(n *node, addr string, disks ...string) *api.AdmitResponse {
	w.t.Helper()
	n.claims.DiskUUIDs = disks
	cl, err := api.NewClient(addr, &atls.Config{ClusterID: testCluster, Claims: n.claims, Attester: n.att,
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: w.snpVerifier()},
		Reference: func(_ context.Context, p attest.Claims) (*attest.Reference, error) {
			r, _ := config.ParseReferences(w.refs)
			return r.Lookup(p.Role, p.Profile)
		}})
	if err != nil {
		w.t.Fatal(err)
	}
	defer cl.Close()
	resp, err := cl.Admit(ctxT(w.t))
	if err != nil {
		w.t.Fatalf("admit %s: %v", n.id, err)
	}
	return resp
}

// The passphrase the owner prints offline is the one the node formatted
// its disk with: keyd's recovery key for that node and UUID, rendered.
func TestDiskRecoveryKeyMatchesKeyd(t *testing.T) {
	w := newWorld(t)
	addr := w.startKeyd("keyd-0")
	w.writeConfig(addr)
	if code, out, errs := w.run(Env{}, "init", addr); code != 0 {
		t.Fatalf("init: exit %d\n%s%s", code, out, errs)
	}
	a := w.admitWithDisks(w.newNode("node-a"), addr, recDiskA, recDiskB)
	b := w.admitWithDisks(w.newNode("node-b"), addr, recDiskA)
	typed := func(r *api.AdmitResponse, i int) string {
		t.Helper()
		p, err := diskkey.Passphrase(r.DiskKeys[i].Recovery)
		if err != nil {
			t.Fatalf("keyd's recovery key of %s: %v", r.DiskKeys[i].UUID, err)
		}
		return string(p) + "\n"
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"node-a disk A", []string{"--node", "node-a", "--uuid", recDiskA}, typed(a, 0)},
		{"node-a disk B", []string{"--node", "node-a", "--uuid", recDiskB}, typed(a, 1)},
		{"node-b disk A", []string{"--node", "node-b", "--uuid", recDiskA}, typed(b, 0)},
		{"explicit cluster", []string{"--cluster", testCluster, "--node", "node-a", "--uuid", recDiskA}, typed(a, 0)},
		// As blkid or a label might show it: the same disk.
		{"upper-case uuid", []string{"--node", "node-a", "--uuid", strings.ToUpper(recDiskA)}, typed(a, 0)},
	} {
		code, out, errs := w.run(Env{}, append([]string{"disk-recovery-key"}, c.args...)...)
		if code != ExitOK || out != c.want {
			t.Errorf("%s: exit %d, printed %q, want %q\n%s", c.name, code, out, c.want, errs)
		}
	}
	if typed(a, 0) == typed(a, 1) || typed(a, 0) == typed(b, 0) {
		t.Error("recovery passphrases repeat across disks or nodes")
	}
	// stdout is the passphrase alone, one line, so it can be piped.
	code, out, errs := w.run(Env{}, "disk-recovery-key", "--node", "node-a", "--uuid", recDiskA)
	if code != ExitOK || strings.Count(out, "-") != 12 || len(strings.TrimSpace(out)) != diskkey.PassphraseLen {
		t.Errorf("exit %d, output %q: want one passphrase of %d characters\n%s", code, out, diskkey.PassphraseLen, errs)
	}
}

func TestDiskRecoveryKeyRefusals(t *testing.T) {
	w := newWorld(t)
	w.writeConfig("127.0.0.1:1")
	m := make([]byte, api.MasterSecretSize)
	write(t, w.dir+"/owner-secret.json", config.EncodeSecret(testCluster, m))
	code, good, errs := w.run(Env{}, "disk-recovery-key", "--node", "node-a", "--uuid", recDiskA)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no node", []string{"--uuid", recDiskA}, ExitUsage, "--node and --uuid are required"},
		{"no uuid", []string{"--node", "node-a"}, ExitUsage, "--node and --uuid are required"},
		{"bad uuid", []string{"--node", "node-a", "--uuid", "sda1"}, ExitUsage, `--uuid "sda1"`},
		{"bad node", []string{"--node", "Node_A", "--uuid", recDiskA}, ExitUsage, `--node "Node_A"`},
		{"other cluster", []string{"--cluster", "prod", "--node", "node-a", "--uuid", recDiskA}, ExitUsage, `--cluster "prod"`},
		{"argument", []string{"--node", "node-a", "--uuid", recDiskA, "extra"}, ExitUsage, "want 0 argument"},
	} {
		code, out, errs := w.run(Env{}, append([]string{"disk-recovery-key"}, c.args...)...)
		if code != c.code || out != "" || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d (want %d), stdout %q, stderr %q (want %q)", c.name, code, c.code, out, errs, c.want)
		}
	}
	// A secret file of another cluster is refused, not used.
	write(t, w.dir+"/owner-secret.json", config.EncodeSecret("prod", m))
	if code, out, errs := w.run(Env{}, "disk-recovery-key", "--node", "node-a", "--uuid", recDiskA); code == ExitOK || out != "" {
		t.Errorf("secret of another cluster: exit %d, printed %q\n%s", code, out, errs)
	}
	// Another master secret gives another passphrase.
	m[0] = 1
	write(t, w.dir+"/owner-secret.json", config.EncodeSecret(testCluster, m))
	if code, out, _ := w.run(Env{}, "disk-recovery-key", "--node", "node-a", "--uuid", recDiskA); code != ExitOK || out == good {
		t.Errorf("another master secret: exit %d, same passphrase %q", code, out)
	}
}
