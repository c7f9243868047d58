package atls

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// TestDeny holds one subtest per attack class. Each starts from a pair whose
// honest handshake succeeds (mustSucceed), or from an honest side facing a
// hand-played peer, changes one thing, and asserts the denial and its class.
func TestDeny(t *testing.T) {
	t.Run("replay", func(t *testing.T) {
		// Evidence recorded in an earlier session is replayed by the
		// attacker's software in a new one: old nonce, old exporter.
		for _, mode := range []struct {
			name        string
			noChallenge bool
		}{{"binding-only", true}, {"with-challenge", false}} {
			t.Run(mode.name+"/server-evidence", func(t *testing.T) {
				p := newPair()
				if mode.noChallenge {
					p.noChallenge()
				}
				p.mustSucceed(t)
				p.sAtt.replay = p.sAtt.lastEvidence()
				r := p.run(t)
				wantClass(t, "client", r.clientErr, attest.ClassBinding)
				wantPeerDenied(t, "server", r.serverErr)
				if n := p.cAtt.calls.Load(); n != 1 {
					t.Errorf("client attested %d times, want 1 (baseline only)", n)
				}
			})
			t.Run(mode.name+"/client-evidence", func(t *testing.T) {
				p := newPair()
				if mode.noChallenge {
					p.noChallenge()
				}
				p.mustSucceed(t)
				p.cAtt.replay = p.cAtt.lastEvidence()
				r := p.run(t)
				wantClass(t, "server", r.serverErr, attest.ClassBinding)
				wantPeerDenied(t, "client", r.clientErr)
			})
		}
	})

	t.Run("replay/stale-nonce", func(t *testing.T) {
		// Evidence made on this connection but for a nonce that is not
		// the verifier's (precomputed, or from an earlier exchange).
		stale := make([]byte, attest.NonceSize)
		t.Run("server-evidence", func(t *testing.T) {
			p := newPair().noChallenge()
			p.mustSucceed(t)
			claims := p.server.Claims
			p.sAtt.mutate = func(b *attest.Binding) { *b = binding(testCluster, &claims, b.Exporter, stale) }
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassBinding)
		})
		t.Run("client-evidence", func(t *testing.T) {
			p := newPair().noChallenge()
			p.mustSucceed(t)
			claims := p.client.Claims
			p.cAtt.mutate = func(b *attest.Binding) { *b = binding(testCluster, &claims, b.Exporter, stale) }
			r := p.run(t)
			wantClass(t, "server", r.serverErr, attest.ClassBinding)
		})
	})

	t.Run("relay", func(t *testing.T) {
		// A man in the middle terminates the victim's session and opens
		// its own to a genuine peer, forwarding every message (nonces,
		// challenges, evidence) between the two sessions. The platform
		// has no challenge, so only the exporter tells the sessions apart.
		t.Run("server-evidence", func(t *testing.T) {
			p := newPair().noChallenge()
			p.mustSucceed(t)
			ln := listen(t)
			serr := serveOnce(ln, p.server)
			_, err := Dial(context.Background(), "tcp", relay(t, ln.Addr().String()), p.client)
			wantClass(t, "client", err, attest.ClassBinding)
			wantPeerDenied(t, "server", <-serr)
			if n := p.cAtt.calls.Load(); n != 1 {
				t.Errorf("client attested %d times, want 1 (baseline only)", n)
			}
		})
		t.Run("client-evidence", func(t *testing.T) {
			// A client that does not verify its server (explicitly) is
			// relayed to a genuine server, which must not accept the
			// client's evidence bound to the relay's session.
			p := newPair().noChallenge()
			p.client.Verifiers, p.client.Reference, p.client.AllowUnattestedPeer = nil, nil, true
			p.mustSucceedOneWay(t)
			ln := listen(t)
			serr := serveOnce(ln, p.server)
			_, err := Dial(context.Background(), "tcp", relay(t, ln.Addr().String()), p.client)
			wantClass(t, "server", <-serr, attest.ClassBinding)
			wantPeerDenied(t, "client", err)
		})
	})

	t.Run("diversion-cluster", func(t *testing.T) {
		t.Run("server", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.server.ClusterID = "other-cluster"
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassBinding)
		})
		t.Run("client", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			// The client's evidence is for another cluster (its own
			// view of the server is this cluster's, so it proceeds).
			claims := p.client.Claims
			p.cAtt.mutate = func(b *attest.Binding) { *b = binding("other-cluster", &claims, b.Exporter, b.Nonce) }
			r := p.run(t)
			wantClass(t, "server", r.serverErr, attest.ClassBinding)
		})
	})

	t.Run("diversion-role", func(t *testing.T) {
		t.Run("node-evidence-as-keyd", func(t *testing.T) {
			// The server's evidence was made for role node; it claims
			// keyd in its hello.
			p := newPair()
			p.mustSucceed(t)
			asNode := p.server.Claims
			asNode.Role = attest.RoleNode
			p.sAtt.mutate = func(b *attest.Binding) { *b = binding(testCluster, &asNode, b.Exporter, b.Nonce) }
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassBinding)
		})
		t.Run("role-field", func(t *testing.T) {
			// Only the binding's role differs (the claims digest is the
			// keyd's): the role is checked on its own too.
			p := newPair()
			p.mustSucceed(t)
			p.sAtt.mutate = func(b *attest.Binding) { b.Role = attest.RoleNode }
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassBinding)
		})
		t.Run("policy", func(t *testing.T) {
			// A node attesting honestly as a node is not a keyd.
			p := newPair()
			p.client.AcceptPeer = func(c attest.Claims) error {
				if c.Role != attest.RoleKeyd {
					return errNotKeyd
				}
				return nil
			}
			p.mustSucceed(t)
			p.server.Claims.Role = attest.RoleNode
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassPolicy)
			if n := p.sAtt.calls.Load(); n != 1 {
				t.Errorf("server attested %d times, want 1 (baseline only)", n)
			}
		})
	})

	t.Run("tls-unbound", func(t *testing.T) {
		// Report data computed over another exporter than this
		// connection's (an earlier connection's, or none at all).
		other := make([]byte, attest.ExporterSize)
		rand.Read(other)
		for _, exp := range []struct {
			name string
			v    []byte
		}{{"other-exporter", other}, {"zero-exporter", make([]byte, attest.ExporterSize)}} {
			t.Run(exp.name+"/server", func(t *testing.T) {
				p := newPair().noChallenge()
				p.mustSucceed(t)
				claims := p.server.Claims
				p.sAtt.mutate = func(b *attest.Binding) { *b = binding(testCluster, &claims, exp.v, b.Nonce) }
				r := p.run(t)
				wantClass(t, "client", r.clientErr, attest.ClassBinding)
			})
			t.Run(exp.name+"/client", func(t *testing.T) {
				p := newPair().noChallenge()
				p.mustSucceed(t)
				claims := p.client.Claims
				p.cAtt.mutate = func(b *attest.Binding) { *b = binding(testCluster, &claims, exp.v, b.Nonce) }
				r := p.run(t)
				wantClass(t, "server", r.serverErr, attest.ClassBinding)
			})
		}
	})

	t.Run("unattested-server", func(t *testing.T) {
		t.Run("no-platform", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.server.Attester = nil
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassProtocol)
			if !strings.Contains(r.clientErr.Error(), "unattested peer") {
				t.Errorf("client err %v, want it to say unattested peer", r.clientErr)
			}
			wantPeerDenied(t, "server", r.serverErr)
			if n := p.cAtt.calls.Load(); n != 1 {
				t.Errorf("client attested %d times, want 1 (baseline only)", n)
			}
		})
		t.Run("no-evidence", func(t *testing.T) {
			// The server announces a platform, then sends no evidence:
			// the client must deny, and what it sends next is a denial,
			// never its own evidence.
			p := newPair()
			p.mustSucceed(t)
			var seen []msgType
			addr, done := rawServer(t, func(s *rawPeer) {
				s.recv()
				s.send(msgServerHello, s.hello(p.server.Claims, true))
				s.recv()
				s.send(msgServerEvidence, &evidence{})
				seen = s.drain()
			})
			_, err := Dial(context.Background(), "tcp", addr, p.client)
			<-done
			wantClass(t, "client", err, attest.ClassProtocol)
			if !slices.Equal(seen, []msgType{msgVerdict}) {
				t.Errorf("client sent %v after the missing evidence, want only a verdict", seen)
			}
			if n := p.cAtt.calls.Load(); n != 1 {
				t.Errorf("client attested %d times, want 1 (baseline only)", n)
			}
		})
	})

	t.Run("unattested-client", func(t *testing.T) {
		t.Run("no-platform", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.client.Attester = nil
			r := p.run(t)
			wantClass(t, "server", r.serverErr, attest.ClassProtocol)
			wantPeerDenied(t, "client", r.clientErr)
			if n := p.sAtt.calls.Load(); n != 1 {
				t.Errorf("server attested %d times for an unattested client, want 1 (baseline only)", n)
			}
		})
		t.Run("no-evidence", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			err := rawClient(t, p.server, func(c *rawPeer) {
				c.send(msgClientHello, c.hello(p.client.Claims, false))
				c.recv()
				c.send(msgChallenge, &challenge{})
				c.recv()
				c.send(msgClientEvidence, &evidence{})
				c.drain()
			})
			wantClass(t, "server", err, attest.ClassProtocol)
		})
	})

	t.Run("wrong-measurement", func(t *testing.T) {
		bad := bytes.Repeat([]byte{0xee}, testMeasurement)
		t.Run("server", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.sAtt.measurement = bad
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassMeasurement)
			wantPeerDenied(t, "server", r.serverErr)
			if n := p.cAtt.calls.Load(); n != 1 {
				t.Errorf("client attested %d times, want 1 (baseline only)", n)
			}
		})
		t.Run("client", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.cAtt.measurement = bad
			r := p.run(t)
			wantClass(t, "server", r.serverErr, attest.ClassMeasurement)
			wantPeerDenied(t, "client", r.clientErr)
		})
	})

	t.Run("wrong-claims", func(t *testing.T) {
		// The evidence committed to one set of claims; the hello carries
		// another (a different WireGuard key).
		bound := func(c attest.Claims) func(*attest.Binding) {
			c.WireGuardKey = bytes.Repeat([]byte{1}, 32)
			return func(b *attest.Binding) { *b = binding(testCluster, &c, b.Exporter, b.Nonce) }
		}
		t.Run("server", func(t *testing.T) {
			p := newPair()
			p.server.Claims.WireGuardKey = bytes.Repeat([]byte{2}, 32)
			p.mustSucceed(t)
			p.sAtt.mutate = bound(p.server.Claims)
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassBinding)
		})
		t.Run("client", func(t *testing.T) {
			p := newPair()
			p.client.Claims.WireGuardKey = bytes.Repeat([]byte{2}, 32)
			p.mustSucceed(t)
			p.cAtt.mutate = bound(p.client.Claims)
			r := p.run(t)
			wantClass(t, "server", r.serverErr, attest.ClassBinding)
		})
	})

	t.Run("oversized-evidence", func(t *testing.T) {
		t.Run("blob", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.sAtt.tamper = func(ev *attest.Evidence) *attest.Evidence {
				ev.Blobs["padding"] = make([]byte, attest.MaxBlobSize+1)
				return ev
			}
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassMalformed)
		})
		t.Run("frame", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			addr, done := rawServer(t, func(s *rawPeer) {
				s.recv()
				s.send(msgServerHello, s.hello(p.server.Claims, true))
				s.recv()
				s.header(protocolVersion, msgServerEvidence, DefaultMaxMessageSize+1)
				s.drain()
			})
			_, err := Dial(context.Background(), "tcp", addr, p.client)
			<-done
			wantClass(t, "client", err, attest.ClassProtocol)
			if !strings.Contains(err.Error(), "oversized") {
				t.Errorf("err %v, want it to say oversized", err)
			}
		})
		t.Run("hello-frame", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			err := rawClient(t, p.server, func(c *rawPeer) {
				c.header(protocolVersion, msgClientHello, maxSmallFrame+1)
				c.drain()
			})
			wantClass(t, "server", err, attest.ClassProtocol)
		})
	})

	t.Run("truncated-evidence", func(t *testing.T) {
		t.Run("blob", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.sAtt.tamper = func(ev *attest.Evidence) *attest.Evidence {
				ev.Blobs[blobReport] = ev.Blobs[blobReport][:testReportSize-1]
				return ev
			}
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassMalformed)
		})
		t.Run("frame", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			addr, done := rawServer(t, func(s *rawPeer) {
				s.recv()
				s.send(msgServerHello, s.hello(p.server.Claims, true))
				s.recv()
				s.header(protocolVersion, msgServerEvidence, 1000)
				s.tc.Write([]byte(`{"evidence":`))
				s.tc.CloseWrite()
			})
			_, err := Dial(context.Background(), "tcp", addr, p.client)
			<-done
			wantClass(t, "client", err, attest.ClassProtocol)
			if !strings.Contains(err.Error(), "truncated") {
				t.Errorf("err %v, want it to say truncated", err)
			}
		})
	})

	t.Run("handshake-timeout", func(t *testing.T) {
		const limit = 300 * time.Millisecond
		cutOff := func(t *testing.T, who string, err error, start time.Time) {
			t.Helper()
			wantClass(t, who, err, attest.ClassProtocol)
			t.Logf("%s cut off after %s", who, time.Since(start).Round(time.Millisecond))
		}
		// within is a liveness guard, not a timing assertion: it fails
		// the test instead of hanging on a handshake never cut off.
		within := func(t *testing.T, f func() error) error {
			t.Helper()
			errc := make(chan error, 1)
			go func() { errc <- f() }()
			select {
			case err := <-errc:
				return err
			case <-time.After(limit + 3*time.Second):
				t.Fatalf("handshake not cut off after %s", limit+3*time.Second)
				return nil
			}
		}
		t.Run("server-stalls", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.client.HandshakeTimeout = limit
			addr, done := rawServer(t, func(s *rawPeer) {
				s.recv()
				s.drain() // never answers
			})
			start := time.Now()
			err := within(t, func() error { _, err := Dial(context.Background(), "tcp", addr, p.client); return err })
			cutOff(t, "client", err, start)
			<-done
		})
		t.Run("server-silent-tcp", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.client.HandshakeTimeout = limit
			ln := listen(t)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					t.Cleanup(func() { c.Close() })
				}
			}()
			start := time.Now()
			err := within(t, func() error { _, err := Dial(context.Background(), "tcp", ln.Addr().String(), p.client); return err })
			cutOff(t, "client", err, start)
		})
		t.Run("client-stalls", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.server.HandshakeTimeout = limit
			start := time.Now()
			err := within(t, func() error {
				return rawClient(t, p.server, func(c *rawPeer) {
					c.drain() // never says hello
				})
			})
			cutOff(t, "server", err, start)
		})
		t.Run("context-cancelled", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			addr, done := rawServer(t, func(s *rawPeer) { s.drain() })
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			defer cancel()
			start := time.Now()
			err := within(t, func() error { _, err := Dial(ctx, "tcp", addr, p.client); return err })
			cutOff(t, "client", err, start)
			<-done
		})
	})

	t.Run("challenge-skipped", func(t *testing.T) {
		t.Run("attester", func(t *testing.T) {
			p := newPair()
			p.mustSucceed(t)
			p.sAtt.ignoreChallenge = true
			r := p.run(t)
			wantClass(t, "client", r.clientErr, attest.ClassBinding)
			if !strings.Contains(r.clientErr.Error(), "challenge") {
				t.Errorf("err %v, want it to name the challenge", r.clientErr)
			}
		})
		t.Run("message", func(t *testing.T) {
			// The client skips its challenge message and goes straight
			// to its evidence: the server denies and sends no evidence.
			p := newPair()
			p.mustSucceed(t)
			var seen []msgType
			err := rawClient(t, p.server, func(c *rawPeer) {
				c.send(msgClientHello, c.hello(p.client.Claims, true))
				c.recv()
				c.send(msgClientEvidence, &evidence{})
				seen = c.drain()
			})
			wantClass(t, "server", err, attest.ClassProtocol)
			if !slices.Equal(seen, []msgType{msgVerdict}) {
				t.Errorf("server sent %v, want only a verdict", seen)
			}
		})
	})

	// Protocol hygiene beyond the named attack classes.
	t.Run("duplicate-message", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		err := rawClient(t, p.server, func(c *rawPeer) {
			h := c.hello(p.client.Claims, true)
			c.send(msgClientHello, h)
			c.recv()
			c.send(msgClientHello, h)
			c.drain()
		})
		wantClass(t, "server", err, attest.ClassProtocol)
	})
	t.Run("unknown-version", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		err := rawClient(t, p.server, func(c *rawPeer) {
			c.header(protocolVersion+1, msgClientHello, 2)
			c.tc.Write([]byte("{}"))
			c.drain()
		})
		wantClass(t, "server", err, attest.ClassProtocol)
	})
	t.Run("unknown-type", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		err := rawClient(t, p.server, func(c *rawPeer) {
			c.header(protocolVersion, msgVerdict+1, 2)
			c.tc.Write([]byte("{}"))
			c.drain()
		})
		wantClass(t, "server", err, attest.ClassProtocol)
		if !strings.Contains(err.Error(), "unknown") || !strings.Contains(err.Error(), "type 7") {
			t.Errorf("err %v, want it to name unknown type 7", err)
		}
	})
	t.Run("early-verdict", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		addr, done := rawServer(t, func(s *rawPeer) {
			s.recv()
			s.send(msgVerdict, &verdict{OK: true})
			s.drain()
		})
		_, err := Dial(context.Background(), "tcp", addr, p.client)
		<-done
		wantClass(t, "client", err, attest.ClassProtocol)
	})
	t.Run("forged-signature", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		p.sAtt.key = other
		r := p.run(t)
		wantClass(t, "client", r.clientErr, attest.ClassChain)
	})
	t.Run("unknown-platform", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		err := rawClient(t, p.server, func(c *rawPeer) {
			h := c.hello(p.client.Claims, true)
			h.Platform = attest.PlatformTDX
			c.send(msgClientHello, h)
			c.drain()
		})
		wantClass(t, "server", err, attest.ClassPolicy)
	})
	t.Run("unknown-profile", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		p.server.Claims.Profile = "other-profile"
		r := p.run(t)
		wantClass(t, "client", r.clientErr, attest.ClassPolicy)
	})
	t.Run("reference-mismatch", func(t *testing.T) {
		// A Reference func that hands back another profile's values is
		// not used to judge this peer.
		p := newPair()
		p.mustSucceed(t)
		ref, _ := p.client.Reference(context.Background(), p.server.Claims)
		other := *ref
		other.Profile = "other-profile"
		p.client.Reference = func(context.Context, attest.Claims) (*attest.Reference, error) { return &other, nil }
		r := p.run(t)
		wantClass(t, "client", r.clientErr, attest.ClassPolicy)
	})
	t.Run("unsolicited-evidence", func(t *testing.T) {
		// A server that does not verify asked for no evidence; a client
		// that sends some anyway breaks the protocol.
		p := newPair()
		p.server.Verifiers, p.server.Reference, p.server.AllowUnattestedPeer = nil, nil, true
		p.mustSucceedOneWayServer(t)
		err := rawClient(t, p.server, func(c *rawPeer) {
			c.send(msgClientHello, c.hello(p.client.Claims, false))
			c.recv()
			c.send(msgChallenge, &challenge{})
			c.recv()
			c.send(msgClientEvidence, &evidence{Evidence: &attest.Evidence{Platform: testPlatform}})
			c.drain()
		})
		wantClass(t, "server", err, attest.ClassProtocol)
	})
	t.Run("challenge-without-attester", func(t *testing.T) {
		// A server that does not attest answers a challenge request
		// with nothing: a challenge for it is a protocol violation.
		p := newPair()
		p.client.Verifiers, p.client.Reference, p.client.AllowUnattestedPeer = nil, nil, true
		p.server.Attester = nil
		p.mustSucceedNoneVerified(t)
		err := rawClient(t, p.server, func(c *rawPeer) {
			c.send(msgClientHello, c.hello(p.client.Claims, true))
			_, m := c.recv()
			sh, ok := m.(*hello)
			if !ok {
				t.Errorf("raw client: got %T, want a server hello", m)
				return
			}
			c.send(msgChallenge, &challenge{Challenge: make([]byte, testChallenge)})
			if typ, _ := c.recv(); typ != msgServerEvidence {
				return // denied, as it should
			}
			// Otherwise finish like an honest client, so that a server
			// that let the stray challenge pass would accept us.
			ev, err := p.cAtt.Attest(context.Background(), sh.Challenge,
				binding(testCluster, &p.client.Claims, c.exporter, sh.Nonce))
			if err != nil {
				t.Errorf("raw client: attest: %v", err)
				return
			}
			c.send(msgClientEvidence, &evidence{Evidence: ev})
			c.drain()
		})
		wantClass(t, "server", err, attest.ClassProtocol)
	})
	t.Run("invalid-claims", func(t *testing.T) {
		p := newPair()
		p.mustSucceed(t)
		err := rawClient(t, p.server, func(c *rawPeer) {
			h := c.hello(p.client.Claims, true)
			h.Claims.NodeID = "Not A Node"
			c.send(msgClientHello, h)
			c.drain()
		})
		wantClass(t, "server", err, attest.ClassMalformed)
	})
}

// mustSucceedOneWay is mustSucceed for a client that does not verify.
func (p *pair) mustSucceedOneWay(t *testing.T) {
	t.Helper()
	r := p.run(t)
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("baseline handshake failed: client: %v; server: %v", r.clientErr, r.serverErr)
	}
	if r.server.PeerVerified() == nil {
		t.Fatalf("baseline handshake: server did not verify the client")
	}
}

// mustSucceedOneWayServer is mustSucceed for a server that does not verify.
func (p *pair) mustSucceedOneWayServer(t *testing.T) {
	t.Helper()
	r := p.run(t)
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("baseline handshake failed: client: %v; server: %v", r.clientErr, r.serverErr)
	}
	if r.client.PeerVerified() == nil || r.server.PeerVerified() != nil {
		t.Fatalf("baseline handshake: want only the client to verify")
	}
}

// mustSucceedNoneVerified is the baseline when only the server verifies
// an attesting client and the client accepts an unattested server.
func (p *pair) mustSucceedNoneVerified(t *testing.T) {
	t.Helper()
	r := p.run(t)
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("baseline handshake failed: client: %v; server: %v", r.clientErr, r.serverErr)
	}
	if r.client.PeerVerified() != nil || r.server.PeerVerified() == nil {
		t.Fatalf("baseline handshake: want only the server to verify")
	}
}

// hello is an honest-looking hello of the test platform.
func (p *rawPeer) hello(c attest.Claims, verify bool) *hello {
	nonce := make([]byte, attest.NonceSize)
	rand.Read(nonce)
	h := &hello{Nonce: nonce, Claims: c, Platform: testPlatform,
		Identity: testKeys().Public().(ed25519.PublicKey), Verify: verify}
	if p.server {
		h.Challenge = make([]byte, testChallenge)
	}
	return h
}

// header writes a bare frame header.
func (p *rawPeer) header(version byte, typ msgType, n int) {
	var h [headerSize]byte
	h[0], h[1] = version, byte(typ)
	binary.BigEndian.PutUint32(h[2:], uint32(n))
	p.tc.Write(h[:])
}
