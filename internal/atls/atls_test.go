package atls

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/palisade-cc/palisade/internal/attest"
)

func TestMutual(t *testing.T) {
	p := newPair()
	r := p.run(t)
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("client: %v; server: %v", r.clientErr, r.serverErr)
	}
	wantV := &attest.Verified{Platform: testPlatform, Profile: testProfile,
		HardwareID: hex.EncodeToString(testKeys().Public().(ed25519.PublicKey)), TCB: "test",
		Measurements: map[string]string{"measurement": hex.EncodeToString(goodMeasurement)}}
	if d := cmp.Diff(wantV, r.client.PeerVerified()); d != "" {
		t.Errorf("client's view of the server (-want +got):\n%s", d)
	}
	if d := cmp.Diff(wantV, r.server.PeerVerified()); d != "" {
		t.Errorf("server's view of the client (-want +got):\n%s", d)
	}
	if d := cmp.Diff(p.server.Claims, r.client.PeerClaims()); d != "" {
		t.Errorf("client's peer claims (-want +got):\n%s", d)
	}
	if d := cmp.Diff(p.client.Claims, r.server.PeerClaims()); d != "" {
		t.Errorf("server's peer claims (-want +got):\n%s", d)
	}
	if p.cAtt.calls.Load() != 1 || p.sAtt.calls.Load() != 1 {
		t.Errorf("attester calls: client %d, server %d; want 1 each", p.cAtt.calls.Load(), p.sAtt.calls.Load())
	}
	// Application data flows after the handshake, both ways, and nothing
	// of the handshake leaks into it.
	go func() { r.server.Write([]byte("from server")); r.server.CloseWrite() }()
	if _, err := r.client.Write([]byte("from client")); err != nil {
		t.Fatal(err)
	}
	r.client.CloseWrite()
	got, err := io.ReadAll(r.server)
	if err != nil || string(got) != "from client" {
		t.Errorf("server read %q, %v", got, err)
	}
	got, err = io.ReadAll(r.client)
	if err != nil || string(got) != "from server" {
		t.Errorf("client read %q, %v", got, err)
	}
}

// TestUnattestedAllowed is the owner's verifier CLI: no hardware, so it
// does not attest; the server must opt in to talk to it, and still attests.
func TestUnattestedAllowed(t *testing.T) {
	p := newPair()
	p.client.Attester = nil
	p.server.Verifiers, p.server.Reference = nil, nil
	p.server.AllowUnattestedPeer = true
	r := p.run(t)
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("client: %v; server: %v", r.clientErr, r.serverErr)
	}
	if r.client.PeerVerified() == nil {
		t.Error("client did not verify the server")
	}
	if r.server.PeerVerified() != nil {
		t.Error("server claims to have verified an unattested client")
	}
	if n := p.sAtt.calls.Load(); n != 1 {
		t.Errorf("server attested %d times, want 1", n)
	}
}

// TestNotVerifyingPeerSkipsEvidence: a side that does not verify asks for
// no evidence, and the peer produces none.
func TestNotVerifyingPeerSkipsEvidence(t *testing.T) {
	p := newPair()
	p.server.Verifiers, p.server.Reference = nil, nil
	p.server.AllowUnattestedPeer = true
	r := p.run(t)
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("client: %v; server: %v", r.clientErr, r.serverErr)
	}
	if n := p.cAtt.calls.Load(); n != 0 {
		t.Errorf("client attested %d times for a server that does not verify", n)
	}
	if r.server.PeerVerified() != nil || r.client.PeerVerified() == nil {
		t.Errorf("verified: server→client %v, client→server %v", r.server.PeerVerified(), r.client.PeerVerified())
	}
}

func TestHTTP(t *testing.T) {
	p := newPair()
	ln, err := NewListener(listen(t), p.server, ListenerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type peerKey struct{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c := r.Context().Value(peerKey{}).(*Conn)
			fmt.Fprintf(w, "hello %s (%s)", c.PeerClaims().NodeID, c.PeerVerified().Measurements["measurement"][:8])
		}),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, c)
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	var dialed []*Conn
	var mu sync.Mutex
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := Dial(ctx, network, addr, p.client)
			if err == nil {
				mu.Lock()
				dialed = append(dialed, c)
				mu.Unlock()
			}
			return c, err
		},
	}}
	defer client.CloseIdleConnections()
	for range 2 {
		resp, err := client.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "hello node-1 (5a5a5a5a)"; string(body) != want {
			t.Errorf("body %q, want %q", body, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialed) != 1 || dialed[0].PeerClaims().Role != attest.RoleKeyd {
		t.Errorf("dialed %d connections (want 1, kept alive) to a keyd", len(dialed))
	}
}

// TestListenerConcurrency: clients that stall hold handshake slots, yet
// honest clients are accepted while the stalled ones are still pending;
// the stalled ones are then counted by class.
func TestListenerConcurrency(t *testing.T) {
	p := newPair()
	p.server.HandshakeTimeout = time.Minute // stalled peers stay pending
	var mu sync.Mutex
	denied := map[attest.Class]int{}
	ln, err := NewListener(listen(t), p.server, ListenerOptions{
		MaxHandshakes: 4,
		OnDenied: func(_ net.Addr, c attest.Class) {
			mu.Lock()
			denied[c]++
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// Three stalled peers: two never speak TLS, one stalls after it.
	var stalled []net.Conn
	for i := range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
		if i == 2 {
			cert, err := newCertificate(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			tc := tls.Client(c, tlsConfig(false, cert, nil))
			hs := make(chan error, 1)
			go func() { hs <- tc.Handshake() }()
			t.Cleanup(func() { c.Close(); <-hs })
		}
	}
	accepted := make(chan *Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c.(*Conn)
		}
	}()
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := *p.client
			cfg.Claims.NodeID = fmt.Sprintf("node-%d", i+1)
			c, err := Dial(context.Background(), "tcp", ln.Addr().String(), &cfg)
			if err != nil {
				t.Errorf("honest client %d: %v", i, err)
				return
			}
			c.Close()
		}()
	}
	wg.Wait()
	var names []string
	for range 3 {
		names = append(names, (<-accepted).PeerClaims().NodeID)
	}
	slices.Sort(names)
	if d := cmp.Diff([]string{"node-1", "node-2", "node-3"}, names); d != "" {
		t.Errorf("accepted (-want +got):\n%s", d)
	}
	// The honest ones got through while the stalled ones still hold
	// their slots: nothing has failed yet.
	if d := ln.Denials(); len(d) != 0 {
		t.Fatalf("denials before the stalled peers gave up: %v", d)
	}
	for _, c := range stalled {
		c.Close()
	}
	ln.Close() // waits for every handshake
	if d := cmp.Diff(map[attest.Class]uint64{attest.ClassProtocol: 3}, ln.Denials()); d != "" {
		t.Errorf("denials (-want +got):\n%s", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if d := cmp.Diff(map[attest.Class]int{attest.ClassProtocol: 3}, denied); d != "" {
		t.Errorf("OnDenied (-want +got):\n%s", d)
	}
	if _, err := ln.Accept(); err == nil {
		t.Error("Accept after Close succeeded")
	}
}

// TestDenialReporting: the local log gets class and precise reason, the
// peer only the generic denial.
func TestDenialReporting(t *testing.T) {
	p := newPair()
	p.cAtt.measurement = bytes.Repeat([]byte{0xee}, testMeasurement)
	var logBuf bytes.Buffer
	var mu sync.Mutex
	p.server.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logBuf}, nil))
	r := p.run(t)
	wantClass(t, "server", r.serverErr, attest.ClassMeasurement)
	wantPeerDenied(t, "client", r.clientErr)
	if strings.Contains(r.clientErr.Error(), "measurement") || strings.Contains(r.clientErr.Error(), "eeee") {
		t.Errorf("client learned why: %v", r.clientErr)
	}
	mu.Lock()
	log := logBuf.String()
	mu.Unlock()
	for _, want := range []string{"class=measurement", "side=server", "measurement eeee"} {
		if !strings.Contains(log, want) {
			t.Errorf("server log lacks %q:\n%s", want, log)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // substring naming the field; "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"cluster-empty", func(c *Config) { c.ClusterID = "" }, "ClusterID"},
		{"cluster-long", func(c *Config) { c.ClusterID = strings.Repeat("x", 65) }, "ClusterID"},
		{"claims", func(c *Config) { c.Claims.Role = "admin" }, "Claims"},
		{"verifier-nil", func(c *Config) { c.Verifiers[attest.PlatformTDX] = nil }, "Verifiers"},
		{"verifier-wrong-key", func(c *Config) { c.Verifiers[attest.PlatformTDX] = &testVerifier{} }, "Verifiers"},
		{"no-verifiers", func(c *Config) { c.Verifiers = nil }, "AllowUnattestedPeer"},
		{"no-verifiers-allowed", func(c *Config) { c.Verifiers, c.AllowUnattestedPeer = nil, true }, ""},
		{"no-reference", func(c *Config) { c.Reference = nil }, "Reference"},
		{"timeout", func(c *Config) { c.HandshakeTimeout = -1 }, "HandshakeTimeout"},
		{"max-small", func(c *Config) { c.MaxMessageSize = 10 }, "MaxMessageSize"},
		{"max-large", func(c *Config) { c.MaxMessageSize = MaxMessageSizeLimit + 1 }, "MaxMessageSize"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(attest.RoleNode, "node-1", newAttester())
			tc.mutate(c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want an error naming %s", err, tc.want)
			}
			// An invalid config never handshakes.
			c1, c2 := net.Pipe()
			defer c2.Close()
			if _, err := Client(context.Background(), c1, c); attest.ClassOf(err) != attest.ClassInternal {
				t.Errorf("Client with invalid config: %v, want an internal error", err)
			}
		})
	}
}

// The ephemeral certificate is reused within its lifetime and renewed after
// it, and a clock that went backwards gets a new one too.
func TestCertCache(t *testing.T) {
	var c certCache
	now := time.Now()
	a, err := c.get(now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.get(now.Add(certLifetime - time.Second))
	if !bytes.Equal(a.Certificate[0], b.Certificate[0]) {
		t.Error("certificate renewed within its lifetime")
	}
	d, _ := c.get(now.Add(certLifetime))
	if bytes.Equal(a.Certificate[0], d.Certificate[0]) {
		t.Error("certificate reused after its lifetime")
	}
	e, _ := c.get(now.Add(-time.Hour))
	if bytes.Equal(d.Certificate[0], e.Certificate[0]) {
		t.Error("certificate reused for a clock before it was made")
	}
}
