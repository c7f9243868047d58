package meshd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/keyd/api"
)

// TestPeerReporter: one console line per peer added, removed or changed
// between applied sets; this node and unchanged peers print nothing.
func TestPeerReporter(t *testing.T) {
	self, a, b := newKey(t), newKey(t), newKey(t)
	var out bytes.Buffer
	r := &peerReporter{self: self.PublicKey(), out: &out}
	step := func(rev uint64, want string, peers ...api.Peer) {
		t.Helper()
		out.Reset()
		r.report(&api.PeerSet{Revision: rev, Peers: peers})
		if out.String() != want {
			t.Errorf("revision %d: console %q, want %q", rev, out.String(), want)
		}
	}
	step(1, "", peer("self", self, 1, "10.0.0.1:51820"))
	step(2, "meshd: peer n-a added revision=2 endpoint=10.0.0.2:51820 mesh=fd00:1:2:3::2\n",
		peer("self", self, 1, "10.0.0.1:51820"), peer("n-a", a, 2, "10.0.0.2:51820"))
	step(3, "", peer("n-a", a, 2, "10.0.0.2:51820"), peer("self", self, 1, "10.0.0.1:51820"))
	step(4, "meshd: peer n-a updated revision=4 endpoint=10.0.0.9:51820 mesh=fd00:1:2:3::2\nmeshd: peer n-b added revision=4 endpoint=none mesh=fd00:1:2:3::3\n",
		peer("self", self, 1, "10.0.0.1:51820"), peer("n-a", a, 2, "10.0.0.9:51820"), peer("n-b", b, 3, ""))
	step(5, "meshd: peer n-a removed revision=5\n", peer("self", self, 1, "10.0.0.1:51820"), peer("n-b", b, 3, ""))
}

// TestHandshakeWatcher: "meshd: peer <id> handshake" once, when the
// device first reports a handshake with the peer; again after the peer was
// removed and came back.
func TestHandshakeWatcher(t *testing.T) {
	self, a := newKey(t), newKey(t)
	wg := &fakeWG{}
	ap := &Applier{WG: wg, Interface: "wg0", PrivateKey: self}
	set := &api.PeerSet{Revision: 1, Peers: []api.Peer{peer("self", self, 1, ""), peer("n-a", a, 2, "10.0.0.2:51820")}}
	if _, err := ap.Apply(context.Background(), set); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	h := &handshakeWatcher{ap: ap, out: &out, log: slog.New(slog.DiscardHandler)}
	shake := func() {
		wg.mu.Lock()
		wg.dev.Peers[0].LastHandshakeTime = time.Now()
		wg.mu.Unlock()
	}
	h.check()
	if out.Len() != 0 {
		t.Fatalf("before any handshake: %q", out.String())
	}
	shake()
	h.check()
	h.check()
	if out.String() != "meshd: peer n-a handshake\n" {
		t.Fatalf("after a handshake: %q, want one line", out.String())
	}
	if _, err := ap.Apply(context.Background(), &api.PeerSet{Revision: 2, Peers: set.Peers[:1]}); err != nil {
		t.Fatal(err)
	}
	h.check()
	if _, err := ap.Apply(context.Background(), set); err != nil {
		t.Fatal(err)
	}
	shake()
	h.check()
	if strings.Count(out.String(), "handshake") != 2 {
		t.Errorf("after removal and return: %q, want a second line", out.String())
	}
}

// serveUnix serves h on a unix socket in a temporary directory.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keyd.sock")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

// TestSocketSource: meshd's PeerSource over attestd's socket speaks
// keyd's API: since and wait reach the socket, the set comes back, and
// attestd's 403 and 503 read as ErrDenied and ErrRetryLater. A Follower
// applies what it returns.
func TestSocketSource(t *testing.T) {
	var mode atomic.Int32
	var mu sync.Mutex
	var queries []string
	self, a := newKey(t), newKey(t)
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		switch mode.Load() {
		case 1:
			w.WriteHeader(http.StatusForbidden)
			json.NewEncoder(w).Encode(api.Error{Error: api.ErrTextDenied})
		case 2:
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(api.Error{Error: api.ErrTextRetryLater})
		default:
			json.NewEncoder(w).Encode(api.PeerSet{Revision: 7, Peers: []api.Peer{peer("self", self, 1, ""), peer("n-a", a, 2, "10.0.0.2:51820")}})
		}
	}))
	src := SocketSource(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	set, err := src.Peers(ctx, 3, 2*time.Second)
	if err != nil || set.Revision != 7 || len(set.Peers) != 2 {
		t.Fatalf("peers: %+v %v", set, err)
	}
	mu.Lock()
	if len(queries) != 1 || queries[0] != "GET "+api.PathPeers+"?since=3&wait=2s" {
		t.Errorf("socket saw %q", queries)
	}
	mu.Unlock()
	mode.Store(1)
	if _, err := src.Peers(ctx, 0, 0); !errors.Is(err, api.ErrDenied) {
		t.Errorf("403: %v, want ErrDenied", err)
	}
	mode.Store(2)
	if _, err := src.Peers(ctx, 0, 0); !errors.Is(err, api.ErrRetryLater) {
		t.Errorf("503: %v, want ErrRetryLater", err)
	}
	if _, err := SocketSource(filepath.Join(t.TempDir(), "none")).Peers(ctx, 0, 0); err == nil {
		t.Error("a missing socket answered")
	}

	mode.Store(0)
	wg := &fakeWG{}
	ap := &Applier{WG: wg, Interface: "wg0", PrivateKey: self}
	f := &Follower{Source: src, Wait: time.Second}
	fctx, fcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- f.Run(fctx, func(ctx context.Context, s *api.PeerSet) error { _, err := ap.Apply(ctx, s); return err })
	}()
	for f.Status().Revision != 7 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	fcancel()
	<-done
	if got := wg.peers(); len(got) != 1 || got[a.PublicKey()] == "" {
		t.Errorf("device peers %v, want n-a only", got)
	}
}

func TestParseAdmission(t *testing.T) {
	for _, c := range []struct{ in, err string }{
		{`{"node_id":"n1","mesh_address":"fd00::1","mesh_ipv4":"10.0.0.1","profile":"p","claims":{}}`, ""},
		{`{"node_id":"n1","mesh_address":"fd00::1"}`, ""},
		{`{"mesh_address":"fd00::1"}`, "node_id"},
		{`{"node_id":"n1","mesh_address":"10.0.0.1"}`, "mesh_address"},
		{`{"node_id":"n1","mesh_address":"fd00::1","mesh_ipv4":"fd00::2"}`, "mesh_ipv4"},
		{`[`, "admission record"},
	} {
		a, err := ParseAdmission([]byte(c.in))
		if c.err == "" && (err != nil || a.NodeID != "n1") || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %+v %v, want %q", c.in, a, err, c.err)
		}
	}
}

func FuzzParseAdmission(f *testing.F) {
	f.Add([]byte(`{"node_id":"n1","mesh_address":"fd00::1","mesh_ipv4":"10.0.0.1"}`))
	f.Add([]byte(`{"node_id":"n1","mesh_address":"::ffff:1.2.3.4"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAdmission(b)
		if err != nil {
			return
		}
		if _, err := a.Addresses(16); err != nil || a.NodeID == "" {
			t.Fatalf("accepted %q: %v", b, err)
		}
	})
}
