package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/verifier/config"
)

// TestInitJoinCluster: init → nodes join → cluster green, as one flow; a
// second run checks consistency with the stored checkpoint.
func TestInitJoinCluster(t *testing.T) {
	w := newWorld(t)
	addr, _ := w.honest()
	for i := range 2 {
		code, out, errs := w.run(Env{}, "cluster", "--json", addr)
		if code != ExitOK {
			t.Fatalf("run %d: exit %d\n%s%s", i, code, out, errs)
		}
		var rep Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range rep.Nodes {
			got = append(got, n.NodeID+"="+n.Status)
		}
		if d := cmp.Diff([]string{"node-a=ok", "node-b=ok"}, got); d != "" {
			t.Errorf("run %d nodes (-want +got):\n%s", i, d)
		}
		if i == 1 && rep.PreviousSize != rep.LogSize {
			t.Errorf("second run: previous size %d, want the stored %d", rep.PreviousSize, rep.LogSize)
		}
	}
	// init refuses to overwrite the owner's secret.
	if code, _, errs := w.run(Env{}, "init", addr); code == ExitOK || !strings.Contains(errs, "refusing to overwrite") {
		t.Errorf("second init: exit %d, %s", code, errs)
	}
	fi, err := os.Stat(filepath.Join(w.dir, "owner-secret.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret file: %v %v, want mode 0600", fi.Mode(), err)
	}
}

// TestRevokeRecoverNode: revoke shows as revoked; node attests one node.
func TestRevokeNode(t *testing.T) {
	w := newWorld(t)
	addr, _ := w.honest()
	if code, out, errs := w.run(Env{}, "revoke", "node-b"); code != 0 {
		t.Fatalf("revoke: exit %d %s%s", code, out, errs)
	}
	code, out, errs := w.run(Env{}, "cluster", addr)
	if code != ExitOK || !strings.Contains(out, "revoked") {
		t.Fatalf("cluster after revoke: exit %d\n%s%s", code, out, errs)
	}
	code, out, errs = w.run(Env{}, "node", addr)
	if code != ExitOK || !strings.Contains(out, "role:      keyd") {
		t.Fatalf("node: exit %d\n%s%s", code, out, errs)
	}
}

// rewrite plays a keyd that lies in its answers to one path.
func rewrite(path string, f func([]byte) []byte) func(http.RoundTripper) http.RoundTripper {
	return func(rt http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err != nil || r.URL.Path != path {
				return resp, err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			b = f(b)
			resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
			resp.Header.Del("Content-Length")
			return resp, nil
		})
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func editNodes(f func(*api.Nodes)) func([]byte) []byte {
	return func(b []byte) []byte {
		var n api.Nodes
		if err := json.Unmarshal(b, &n); err != nil {
			return b
		}
		f(&n)
		out, _ := json.Marshal(n)
		return out
	}
}

// TestDeny: each case starts from an honest cluster that `cluster`
// passes (and whose checkpoint the owner stored), changes one thing, and
// expects the exit code of its class and a message naming it.
func TestDeny(t *testing.T) {
	cases := []struct {
		name  string
		setup func(w *world, addr string, nodes []*node) Env
		code  int
		want  string
	}{
		{"forked-log", func(w *world, _ string, nodes []*node) Env {
			// Another history, longer, signed with the same log key.
			other := w.startKeyd("keyd-fork")
			w.initDirect(other)
			w.join(nodes[0], other)
			w.join(nodes[1], other)
			w.join(w.newNode("node-c"), other)
			w.writeConfig(other)
			return Env{}
		}, ExitLog, "consistency proof does not verify"},
		{"same-size-fork", func(w *world, _ string, nodes []*node) Env {
			other := w.startKeyd("keyd-fork")
			w.initDirect(other)
			w.join(nodes[1], other)
			w.join(nodes[0], other)
			w.writeConfig(other)
			return Env{}
		}, ExitLog, "forked"},
		{"rolled-back-log", func(w *world, _ string, nodes []*node) Env {
			other := w.startKeyd("keyd-old")
			w.initDirect(other)
			w.join(nodes[0], other)
			w.writeConfig(other)
			return Env{}
		}, ExitLog, "rolled back"},
		{"bad-checkpoint-signature", func(*world, string, []*node) Env {
			return Env{Transport: rewrite(api.PathLogCheckpoint, func(b []byte) []byte {
				// Change the root's first base64 character: still a
				// well-formed checkpoint, no longer the signed one.
				var r struct {
					Checkpoint []byte `json:"checkpoint"`
				}
				json.Unmarshal(b, &r)
				lines := bytes.SplitN(r.Checkpoint, []byte("\n"), 4)
				if len(lines) == 4 && len(lines[2]) > 0 {
					lines[2][0] ^= 0x01
				}
				r.Checkpoint = bytes.Join(lines, []byte("\n"))
				out, _ := json.Marshal(r)
				return out
			})}
		}, ExitLog, "not signed by the log key"},
		{"omitted-node", func(*world, string, []*node) Env {
			return Env{Transport: rewrite(api.PathNodes, editNodes(func(n *api.Nodes) { n.Nodes = n.Nodes[:1] }))}
		}, ExitLog, "missing from keyd's node list"},
		{"revoked-listed-current", func(w *world, _ string, _ []*node) Env {
			if code, _, errs := w.run(Env{}, "revoke", "node-b"); code != 0 {
				t.Fatalf("revoke: %s", errs)
			}
			return Env{Transport: rewrite(api.PathNodes, editNodes(func(n *api.Nodes) {
				for i := range n.Nodes {
					n.Nodes[i].Revoked = false
				}
			}))}
		}, ExitLog, "listed as current"},
		{"wrong-log-index", func(*world, string, []*node) Env {
			return Env{Transport: rewrite(api.PathNodes, editNodes(func(n *api.Nodes) { n.Nodes[0].LogIndex = n.Nodes[1].LogIndex }))}
		}, ExitLog, "not this node's admission"},
		{"registry-differs-from-record", func(*world, string, []*node) Env {
			return Env{Transport: rewrite(api.PathNodes, editNodes(func(n *api.Nodes) { n.Nodes[0].Profile = "other" }))}
		}, ExitLog, "registry says"},
		{"evidence-changed", func(_ *world, _ string, nodes []*node) Env {
			m := bytes.Repeat([]byte{0xee}, 48)
			nodes[1].measurement.Store(&m)
			return Env{}
		}, ExitDenied, "node node-b: attestation denied (measurement)"},
		{"node-hardware-differs", func(*world, string, []*node) Env {
			return Env{Transport: rewrite(api.PathNodes, editNodes(func(n *api.Nodes) { n.Nodes[1].HardwareID = "00" }))}
		}, ExitLog, "registry says"},
		{"keyd-measurement", func(w *world, _ string, _ []*node) Env {
			r, _ := config.ParseReferences(w.refs)
			r.References[0].Reference.SNP.Measurement = bytes.Repeat([]byte{1}, 48)
			b, _ := json.Marshal(r)
			write(t, filepath.Join(w.dir, "references.json"), b)
			return Env{}
		}, ExitDenied, "attestation denied (measurement)"},
		{"node-unreachable", func(*world, string, []*node) Env {
			return Env{Transport: rewrite(api.PathNodes, editNodes(func(n *api.Nodes) { n.Nodes[1].Endpoints = []string{"127.0.0.250:1"} }))}
		}, ExitUnreachable, "connection refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t)
			addr, nodes := w.honest()
			if code, out, errs := w.run(Env{}, "cluster", addr); code != ExitOK {
				t.Fatalf("honest cluster: exit %d\n%s%s", code, out, errs)
			}
			e := c.setup(w, addr, nodes)
			code, out, errs := w.run(e, "cluster")
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Errorf("exit %d, want %d with %q\nstdout:\n%s\nstderr:\n%s", code, c.code, c.want, out, errs)
			}
		})
	}
}

// TestHelp: every command's --help exits 0 and shows an example.
func TestHelp(t *testing.T) {
	for _, c := range commands() {
		var out, errb bytes.Buffer
		code := Run(t.Context(), []string{c.name, "--help"}, Env{Stdout: &out, Stderr: &errb})
		if code != ExitOK || !strings.Contains(errb.String(), "example:\n  verifier "+c.name) {
			t.Errorf("%s --help: exit %d\n%s", c.name, code, errb.String())
		}
	}
	if code := Run(t.Context(), []string{"nonsense"}, Env{Stdout: io.Discard, Stderr: io.Discard}); code != ExitUsage {
		t.Errorf("unknown command: exit %d, want %d", code, ExitUsage)
	}
}
