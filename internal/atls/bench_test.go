package atls

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
)

// benchVerify is one peer verification as the handshake runs it, on
// evidence bound to a fixed session.
func benchVerify(b *testing.B) (*session, *peerPlan, *hello, []byte, *attest.Evidence) {
	b.Helper()
	cfg := testConfig(attest.RoleNode, "node-1", newAttester())
	s := &session{cfg: cfg, exporter: make([]byte, attest.ExporterSize)}
	rand.Read(s.exporter)
	a := newAttester()
	peer := &hello{Nonce: make([]byte, 32), Claims: attest.Claims{NodeID: "keyd-1", Role: attest.RoleKeyd, Profile: testProfile},
		Platform: testPlatform, Identity: testKeys().Public().(ed25519.PublicKey), Verify: true}
	pv, err := s.checkPeer(context.Background(), peer)
	if err != nil {
		b.Fatal(err)
	}
	nonce := make([]byte, attest.NonceSize)
	rand.Read(nonce)
	ev, err := a.Attest(context.Background(), pv.send, attest.Binding{Role: attest.RoleKeyd, ClusterID: testCluster,
		Exporter: s.exporter, Nonce: nonce, ClaimsDigest: peer.Claims.Digest()})
	if err != nil {
		b.Fatal(err)
	}
	return s, pv, peer, nonce, ev
}

// BenchmarkVerify is one full verification of the peer's evidence (shape,
// binding, signature, challenge, measurement), reference cached.
func BenchmarkVerify(b *testing.B) {
	s, pv, peer, nonce, ev := benchVerify(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := s.verifyPeer(ctx, pv, peer, nonce, ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloor is the one signature verification BenchmarkVerify does.
func BenchmarkFloor(b *testing.B) {
	_, _, _, _, ev := benchVerify(b)
	pub := testKeys().Public().(ed25519.PublicKey)
	msg := append([]byte(testSigDomain), ev.Blobs[blobReport]...)
	sig := ev.Blobs[blobSignature]
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("signature")
		}
	}
}

// BenchmarkHandshake is a full mutual handshake on loopback TCP:
// TLS 1.3 with two ephemeral certificates, six frames, two attestations,
// two verifications.
func BenchmarkHandshake(b *testing.B) {
	p := newPair()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				if sc, err := Server(context.Background(), c, p.server); err == nil {
					sc.Close()
				}
			}()
		}
	}()
	ctx := context.Background()
	for b.Loop() {
		c, err := Dial(ctx, "tcp", ln.Addr().String(), p.client)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
