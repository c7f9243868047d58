package atls

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

const testCluster = "test-cluster"

func newAttester() *testAttester {
	return &testAttester{key: testKeys(), measurement: goodMeasurement}
}

// testConfig is an honest side: it attests with a, verifies with the
// pinned test key and accepts the test profile.
func testConfig(role attest.Role, node string, a *testAttester) *Config {
	ref := &attest.Reference{Profile: testProfile, Platform: testPlatform,
		SNP: &attest.SNPReference{Product: "test", Measurement: goodMeasurement}}
	c := &Config{
		ClusterID: testCluster,
		Claims:    attest.Claims{NodeID: node, Role: role, Profile: testProfile},
		Verifiers: map[attest.Platform]attest.Verifier{testPlatform: &testVerifier{pub: testKeys().Public().(ed25519.PublicKey)}},
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			if peer.Profile != testProfile {
				return nil, attest.Denyf(attest.ClassPolicy, "profile %q unknown", peer.Profile)
			}
			return ref, nil
		},
		HandshakeTimeout: 5 * time.Second,
	}
	if a != nil {
		c.Attester = a
	}
	return c
}

// pair is an honest keyd server and node client.
type pair struct {
	client, server *Config
	cAtt, sAtt     *testAttester
}

func newPair() *pair {
	p := &pair{cAtt: newAttester(), sAtt: newAttester()}
	p.client = testConfig(attest.RoleNode, "node-1", p.cAtt)
	p.server = testConfig(attest.RoleKeyd, "keyd-1", p.sAtt)
	return p
}

// noChallenge switches both sides to a challenge-less platform, so that
// freshness rests on atls's binding alone.
func (p *pair) noChallenge() *pair {
	for _, c := range []*Config{p.client, p.server} {
		c.Verifiers[testPlatform].(*testVerifier).noChallenge = true
	}
	return p
}

type result struct {
	client, server       *Conn
	clientErr, serverErr error
}

// run performs one handshake between the pair's configs on loopback TCP.
func (p *pair) run(t *testing.T) result {
	t.Helper()
	ln := listen(t)
	var r result
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			r.serverErr = err
			return
		}
		r.server, r.serverErr = Server(context.Background(), c, p.server)
	}()
	r.client, r.clientErr = Dial(context.Background(), "tcp", ln.Addr().String(), p.client)
	<-done
	t.Cleanup(func() {
		for _, c := range []*Conn{r.client, r.server} {
			if c != nil {
				c.Close()
			}
		}
	})
	return r
}

// mustSucceed asserts the honest baseline of a denial test.
func (p *pair) mustSucceed(t *testing.T) {
	t.Helper()
	r := p.run(t)
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("baseline handshake failed: client: %v; server: %v", r.clientErr, r.serverErr)
	}
	if r.client.PeerVerified() == nil || r.server.PeerVerified() == nil {
		t.Fatalf("baseline handshake: a side is unverified")
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func wantClass(t *testing.T, who string, err error, want attest.Class) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: handshake succeeded, want a %q denial", who, want)
	}
	if got := attest.ClassOf(err); got != want {
		t.Fatalf("%s: class %q, want %q; err: %v", who, got, want, err)
	}
}

func wantPeerDenied(t *testing.T, who string, err error) {
	t.Helper()
	if !errors.Is(err, ErrPeerDenied) {
		t.Fatalf("%s: err %v, want ErrPeerDenied", who, err)
	}
}

// rawPeer speaks the frame protocol by hand, to play a peer that breaks it.
type rawPeer struct {
	t        *testing.T
	tc       *tls.Conn
	exporter []byte
	server   bool
}

// newRawPeer runs TLS on c; it may run in a goroutine, so it reports
// failures with Errorf and returns nil.
func newRawPeer(t *testing.T, c net.Conn, server bool) *rawPeer {
	cert, err := newCertificate(time.Now())
	if err != nil {
		t.Error(err)
		return nil
	}
	var tc *tls.Conn
	if server {
		tc = tls.Server(c, tlsConfig(true, cert, nil))
	} else {
		tc = tls.Client(c, tlsConfig(false, cert, nil))
	}
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Errorf("raw peer: tls: %v", err)
		return nil
	}
	cs := tc.ConnectionState()
	exp, err := cs.ExportKeyingMaterial(attest.ExporterLabel, nil, attest.ExporterSize)
	if err != nil {
		t.Errorf("raw peer: exporter: %v", err)
	}
	return &rawPeer{t: t, tc: tc, exporter: exp, server: server}
}

func (p *rawPeer) send(typ msgType, m any) {
	b, err := encodeMessage(m)
	if err != nil {
		p.t.Errorf("raw peer: encode: %v", err)
		return
	}
	if err := writeFrame(p.tc, typ, b); err != nil {
		p.t.Logf("raw peer: send %s: %v", typ, err)
	}
}

// recv returns the next message type and payload, or 0 at EOF.
func (p *rawPeer) recv() (msgType, any) {
	typ, b, err := readFrame(p.tc, MaxMessageSizeLimit)
	if err != nil {
		return 0, nil
	}
	m, err := decodeMessage(typ, b)
	if err != nil {
		p.t.Errorf("raw peer: decode %s: %v", typ, err)
		return 0, nil
	}
	return typ, m
}

// drain reads until EOF and returns the types it saw.
func (p *rawPeer) drain() []msgType {
	var seen []msgType
	for {
		typ, _ := p.recv()
		if typ == 0 {
			return seen
		}
		seen = append(seen, typ)
	}
}

// serveOnce accepts one connection on ln, runs the server handshake with
// cfg, closes the connection and sends the handshake's error.
func serveOnce(ln net.Listener, cfg *Config) <-chan error {
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		sc, err := Server(context.Background(), c, cfg)
		if sc != nil {
			sc.Close()
		}
		errc <- err
	}()
	return errc
}

// rawServer runs script as the server of one connection; the returned
// channel closes when it finished.
func rawServer(t *testing.T, script func(p *rawPeer)) (string, <-chan struct{}) {
	t.Helper()
	ln := listen(t)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if p := newRawPeer(t, c, true); p != nil {
			script(p)
		}
	}()
	return ln.Addr().String(), done
}

// rawClient runs script as the client of one connection to a Server with
// cfg and returns the server's error.
func rawClient(t *testing.T, cfg *Config, script func(p *rawPeer)) error {
	t.Helper()
	ln := listen(t)
	errc := serveOnce(ln, cfg)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := newRawPeer(t, c, false); p != nil {
		script(p)
	}
	return <-errc
}

// relay is a man in the middle that terminates the victim's TLS session and
// opens its own to target, forwarding plaintext both ways.
func relay(t *testing.T, target string) string {
	t.Helper()
	ln := listen(t)
	finished := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-finished })
	go func() {
		defer close(finished)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		up, err := net.Dial("tcp", target)
		if err != nil {
			t.Errorf("relay: dial: %v", err)
			return
		}
		defer up.Close()
		victim := newRawPeer(t, c, true)
		genuine := newRawPeer(t, up, false)
		if victim == nil || genuine == nil {
			return
		}
		done := make(chan struct{}, 2)
		go func() { io.Copy(genuine.tc, victim.tc); genuine.tc.CloseWrite(); done <- struct{}{} }()
		go func() { io.Copy(victim.tc, genuine.tc); victim.tc.CloseWrite(); done <- struct{}{} }()
		<-done
		<-done
	}()
	return ln.Addr().String()
}
