package atls

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// ErrPeerDenied is the local error when the peer denied us; like every peer
// denial it says nothing about why (the peer's log does).
var ErrPeerDenied = errors.New("atls: peer denied the handshake")

// session is one handshake in progress.
type session struct {
	cfg      *Config
	server   bool
	tc       *tls.Conn
	exporter []byte
}

func (s *session) side() string {
	if s.server {
		return "server"
	}
	return "client"
}

func handshake(ctx context.Context, conn net.Conn, cfg *Config, server bool) (*Conn, error) {
	s := &session{cfg: cfg, server: server}
	c, err := s.run(ctx, conn)
	if err != nil {
		side := s.side()
		cfg.logger().LogAttrs(ctx, slog.LevelWarn, "atls handshake failed",
			slog.String("side", side), slog.String("remote", remote(conn)),
			slog.String("class", string(attest.ClassOf(err))), slog.String("err", err.Error()))
		return nil, fmt.Errorf("atls %s handshake with %s: %w", side, remote(conn), err)
	}
	cfg.logger().LogAttrs(ctx, slog.LevelInfo, "atls peer accepted",
		slog.String("side", s.side()), slog.String("remote", remote(conn)),
		slog.String("node", c.claims.NodeID), slog.String("role", string(c.claims.Role)),
		slog.String("profile", c.claims.Profile), slog.Bool("attested", c.verified != nil))
	return c, nil
}

func remote(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return "?"
}

// run performs the handshake; on error the connection is closed.
func (s *session) run(ctx context.Context, conn net.Conn) (_ *Conn, err error) {
	if err := s.cfg.Validate(); err != nil {
		conn.Close()
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout())
	defer cancel()
	// The whole handshake, frames included, shares one deadline; a
	// cancelled context cuts blocked I/O short.
	dl, _ := ctx.Deadline()
	if err := conn.SetDeadline(dl); err != nil {
		conn.Close()
		return nil, attest.Denyf(attest.ClassInternal, "set deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() && err == nil {
			err = ctxDenial(ctx)
		}
		if err != nil {
			conn.Close()
			return
		}
		if e := conn.SetDeadline(time.Time{}); e != nil {
			conn.Close()
			err = attest.Denyf(attest.ClassInternal, "clear deadline: %w", e)
		}
	}()

	cert, err := certs.get(s.cfg.now())
	if err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	tcfg := tlsConfig(s.server, cert, s.cfg.Now)
	if s.server {
		s.tc = tls.Server(conn, tcfg)
	} else {
		s.tc = tls.Client(conn, tcfg)
	}
	if err := s.tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctxDenial(ctx)
		}
		return nil, attest.Denyf(attest.ClassProtocol, "tls: %w", err)
	}
	cs := s.tc.ConnectionState()
	if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != alpn {
		return nil, attest.Denyf(attest.ClassProtocol, "tls: version %#x, protocol %q; want TLS 1.3 and %q", cs.Version, cs.NegotiatedProtocol, alpn)
	}
	// RFC 8446 §7.5: the exporter of this connection, empty context.
	s.exporter, err = cs.ExportKeyingMaterial(attest.ExporterLabel, nil, attest.ExporterSize)
	if err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "tls exporter: %w", err)
	}
	var c *Conn
	if s.server {
		c, err = s.serve(ctx)
	} else {
		c, err = s.client(ctx)
	}
	if err != nil {
		if ctx.Err() != nil && attest.ClassOf(err) == attest.ClassProtocol {
			err = fmt.Errorf("%w (%w)", ctxDenial(ctx), err)
		}
		return nil, err
	}
	return c, nil
}

func ctxDenial(ctx context.Context) error {
	return attest.Denyf(attest.ClassProtocol, "handshake cut off: %w", context.Cause(ctx))
}

// client is the client's side of the exchange (doc.go).
func (s *session) client(ctx context.Context) (*Conn, error) {
	cfg := s.cfg
	nonce, err := newNonce()
	if err != nil {
		return nil, err
	}
	my, err := s.myHello(ctx, nonce)
	if err != nil {
		return nil, err
	}
	if err := s.send(msgClientHello, my); err != nil {
		return nil, err
	}
	m, err := s.recv(msgServerHello)
	if err != nil {
		return nil, err
	}
	peer := m.(*hello)
	if len(peer.Challenge) != 0 && !peer.Verify {
		return nil, s.deny(attest.Denyf(attest.ClassProtocol, "server hello: a challenge but no verify"))
	}
	if len(peer.Challenge) != 0 && cfg.Attester == nil {
		return nil, s.deny(attest.Denyf(attest.ClassProtocol, "server hello: a challenge for a client that does not attest"))
	}
	pv, err := s.checkPeer(ctx, peer)
	if err != nil {
		return nil, s.deny(err)
	}
	if err := s.send(msgChallenge, &challenge{Challenge: pv.send}); err != nil {
		return nil, err
	}
	m, err = s.recv(msgServerEvidence)
	if err != nil {
		return nil, err
	}
	// The server is verified before the client reveals any evidence.
	verified, err := s.verifyPeer(ctx, pv, peer, nonce, m.(*evidence).Evidence)
	if err != nil {
		return nil, s.deny(err)
	}
	ev, err := s.attest(ctx, peer, peer.Challenge)
	if err != nil {
		return nil, s.deny(err)
	}
	if err := s.send(msgClientEvidence, &evidence{Evidence: ev}); err != nil {
		return nil, err
	}
	if _, err := s.recv(msgVerdict); err != nil {
		return nil, err
	}
	return &Conn{tc: s.tc, claims: peer.Claims, verified: verified}, nil
}

// serve is the server's side of the exchange (doc.go).
func (s *session) serve(ctx context.Context) (*Conn, error) {
	m, err := s.recv(msgClientHello)
	if err != nil {
		return nil, err
	}
	peer := m.(*hello)
	pv, err := s.checkPeer(ctx, peer)
	if err != nil {
		return nil, s.deny(err)
	}
	nonce, err := newNonce()
	if err != nil {
		return nil, s.deny(err)
	}
	my, err := s.myHello(ctx, nonce)
	if err != nil {
		return nil, s.deny(err)
	}
	my.Challenge = pv.send
	if err := s.send(msgServerHello, my); err != nil {
		return nil, err
	}
	m, err = s.recv(msgChallenge)
	if err != nil {
		return nil, err
	}
	ch := m.(*challenge).Challenge
	if len(ch) != 0 && (!peer.Verify || s.cfg.Attester == nil) {
		return nil, s.deny(attest.Denyf(attest.ClassProtocol, "challenge: sent for evidence that will not be produced"))
	}
	ev, err := s.attest(ctx, peer, ch)
	if err != nil {
		return nil, s.deny(err)
	}
	if err := s.send(msgServerEvidence, &evidence{Evidence: ev}); err != nil {
		return nil, err
	}
	m, err = s.recv(msgClientEvidence)
	if err != nil {
		return nil, err
	}
	verified, err := s.verifyPeer(ctx, pv, peer, nonce, m.(*evidence).Evidence)
	if err != nil {
		return nil, s.deny(err)
	}
	if err := s.send(msgVerdict, &verdict{OK: true}); err != nil {
		return nil, err
	}
	return &Conn{tc: s.tc, claims: peer.Claims, verified: verified}, nil
}

func newNonce() ([]byte, error) {
	n := make([]byte, attest.NonceSize)
	if _, err := rand.Read(n); err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "nonce: %w", err)
	}
	return n, nil
}

// myHello is this side's hello, without the server's challenge.
func (s *session) myHello(ctx context.Context, nonce []byte) (*hello, error) {
	h := &hello{Nonce: nonce, Claims: s.cfg.Claims, Verify: s.cfg.verifies()}
	if a := s.cfg.Attester; a != nil {
		id, err := a.Identity(ctx)
		if err != nil {
			return nil, attest.Denyf(attest.ClassInternal, "attester identity: %w", err)
		}
		h.Platform, h.Identity = a.Platform(), id
	}
	return h, nil
}

// peerPlan is what this side decided about the peer on its hello.
type peerPlan struct {
	verifier  attest.Verifier
	reference *attest.Reference
	send      []byte // challenge for the peer's attester
	keep      []byte // what the verifier kept for Verify
}

// checkPeer applies policy to the peer's hello: claims policy, whether the
// peer must and can be verified, its reference values and its challenge.
func (s *session) checkPeer(ctx context.Context, peer *hello) (*peerPlan, error) {
	cfg := s.cfg
	if cfg.AcceptPeer != nil {
		if err := cfg.AcceptPeer(peer.Claims); err != nil {
			return nil, attest.Deny(attest.ClassPolicy, fmt.Errorf("peer claims (node %q, role %q) rejected: %w", peer.Claims.NodeID, peer.Claims.Role, err))
		}
	}
	if !cfg.verifies() {
		return &peerPlan{}, nil
	}
	if peer.Platform == "" {
		if !cfg.AllowUnattestedPeer {
			return nil, attest.Denyf(attest.ClassProtocol, "unattested peer: node %q announced no platform", peer.Claims.NodeID)
		}
		return &peerPlan{}, nil
	}
	v := cfg.Verifiers[peer.Platform]
	if v == nil {
		return nil, attest.Denyf(attest.ClassPolicy, "peer platform %q: no verifier configured", peer.Platform)
	}
	ref, err := cfg.Reference(ctx, peer.Claims)
	if err != nil {
		return nil, attest.Deny(attest.ClassPolicy, fmt.Errorf("reference for role %q profile %q: %w", peer.Claims.Role, peer.Claims.Profile, err))
	}
	if ref == nil {
		return nil, attest.Denyf(attest.ClassInternal, "reference for role %q profile %q: nil", peer.Claims.Role, peer.Claims.Profile)
	}
	if err := ref.Validate(); err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "reference for profile %q: %w", peer.Claims.Profile, err)
	}
	if ref.Platform != peer.Platform || ref.Profile != peer.Claims.Profile {
		return nil, attest.Denyf(attest.ClassPolicy, "reference is for %q profile %q, peer claims %q profile %q",
			ref.Platform, ref.Profile, peer.Platform, peer.Claims.Profile)
	}
	p := &peerPlan{verifier: v, reference: ref}
	p.send, p.keep, err = v.Challenge(peer.Identity)
	if err != nil {
		return nil, attest.Deny(attest.ClassMalformed, fmt.Errorf("challenge for peer identity: %w", err))
	}
	return p, nil
}

// verifyPeer judges the peer's evidence, if this side verifies and the
// peer attests; any other evidence is a protocol violation.
func (s *session) verifyPeer(ctx context.Context, p *peerPlan, peer *hello, nonce []byte, ev *attest.Evidence) (*attest.Verified, error) {
	if p.verifier == nil {
		if ev != nil {
			return nil, attest.Denyf(attest.ClassProtocol, "peer sent evidence that was not asked for")
		}
		return nil, nil
	}
	if ev == nil {
		return nil, attest.Denyf(attest.ClassProtocol, "unattested peer: node %q announced %q but sent no evidence", peer.Claims.NodeID, peer.Platform)
	}
	if err := ev.Check(peer.Platform); err != nil {
		return nil, err
	}
	// The binding is computed from this side's view: our exporter, our
	// nonce, our cluster, the peer's claimed role and claims.
	in := attest.Input{
		Binding:   binding(s.cfg.ClusterID, &peer.Claims, s.exporter, nonce),
		Identity:  peer.Identity,
		Kept:      p.keep,
		Reference: p.reference,
	}
	v, err := p.verifier.Verify(ctx, ev, in)
	if err != nil {
		return nil, attest.Deny(attest.ClassInternal, fmt.Errorf("verify %s evidence of node %q: %w", peer.Platform, peer.Claims.NodeID, err))
	}
	if v == nil {
		return nil, attest.Denyf(attest.ClassInternal, "verify %s evidence: verifier returned nothing", peer.Platform)
	}
	return v, nil
}

// binding is what the evidence of an attester with claims c commits to in
// the session with this exporter, answering the verifier's nonce
// (ARCHITECTURE §4.2). Both sides compute it here, each from its own view:
// the attester from its claims, the verifier from the claims the peer sent.
// The role is the claimed role, so evidence for one role cannot pass for
// another.
func binding(cluster string, c *attest.Claims, exporter, nonce []byte) attest.Binding {
	return attest.Binding{
		Role:         c.Role,
		ClusterID:    cluster,
		Exporter:     exporter,
		Nonce:        nonce,
		ClaimsDigest: c.Digest(),
	}
}

// attest produces this side's evidence if the peer verifies; nil otherwise.
func (s *session) attest(ctx context.Context, peer *hello, ch []byte) (*attest.Evidence, error) {
	a := s.cfg.Attester
	if a == nil || !peer.Verify {
		return nil, nil
	}
	ev, err := a.Attest(ctx, ch, binding(s.cfg.ClusterID, &s.cfg.Claims, s.exporter, peer.Nonce))
	if err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "attest: %w", err)
	}
	if ev == nil {
		return nil, attest.Denyf(attest.ClassInternal, "attest: attester returned no evidence")
	}
	return ev, nil
}

// send writes one message.
func (s *session) send(t msgType, m any) error {
	p, err := encodeMessage(m)
	if err != nil {
		return attest.Denyf(attest.ClassInternal, "encode %s: %w", t, err)
	}
	if len(p) > t.limit(s.cfg.maxMessage()) {
		return attest.Denyf(attest.ClassInternal, "%s: %d bytes, at most %d", t, len(p), t.limit(s.cfg.maxMessage()))
	}
	if err := writeFrame(s.tc, t, p); err != nil {
		return ioDenial("send "+t.String(), err)
	}
	return nil
}

// recv reads the next message, which must be of type want; a denial
// verdict from the peer ends the handshake in any state.
func (s *session) recv(want msgType) (any, error) {
	t, p, err := readFrame(s.tc, s.cfg.maxMessage())
	if err != nil {
		return nil, fmt.Errorf("waiting for %s: %w", want, err)
	}
	m, err := decodeMessage(t, p)
	if err != nil {
		return nil, s.deny(err)
	}
	if v, ok := m.(*verdict); ok && !v.OK {
		return nil, attest.Deny(attest.ClassProtocol, fmt.Errorf("waiting for %s: %w", want, ErrPeerDenied))
	}
	if t != want {
		return nil, s.deny(attest.Denyf(attest.ClassProtocol, "message %s out of order, want %s", t, want))
	}
	return m, nil
}

// deny tells the peer, generically, and returns err for the local caller.
func (s *session) deny(err error) error {
	// Best effort: the peer may be gone; the caller closes the connection.
	if p, e := encodeMessage(&verdict{OK: false}); e == nil {
		_ = writeFrame(s.tc, msgVerdict, p)
	}
	return err
}
