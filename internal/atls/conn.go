package atls

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Conn is an attested TLS connection: a net.Conn over which HTTP or any
// other protocol runs, plus what the handshake proved about the peer.
type Conn struct {
	tc       *tls.Conn
	claims   attest.Claims
	verified *attest.Verified
}

// PeerClaims are the claims of the peer's hello. When PeerVerified is not
// nil its evidence committed to them; otherwise they are the peer's word.
func (c *Conn) PeerClaims() attest.Claims { return c.claims }

// PeerVerified is what the peer's verifier proved, or nil if the peer was
// accepted unattested (Config.AllowUnattestedPeer).
func (c *Conn) PeerVerified() *attest.Verified { return c.verified }

// ConnectionState is the TLS state of the session.
func (c *Conn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

func (c *Conn) Read(b []byte) (int, error)         { return c.tc.Read(b) }
func (c *Conn) Write(b []byte) (int, error)        { return c.tc.Write(b) }
func (c *Conn) Close() error                       { return c.tc.Close() }
func (c *Conn) CloseWrite() error                  { return c.tc.CloseWrite() }
func (c *Conn) LocalAddr() net.Addr                { return c.tc.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.tc.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.tc.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.tc.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.tc.SetWriteDeadline(t) }

var _ net.Conn = (*Conn)(nil)

// Client runs the client side of the handshake over conn and takes
// ownership of it: on error conn is closed. The error carries the denial
// class (attest.ClassOf); errors.Is(err, ErrPeerDenied) when the server
// denied us.
func Client(ctx context.Context, conn net.Conn, cfg *Config) (*Conn, error) {
	return handshake(ctx, conn, cfg, false)
}

// Server runs the server side of the handshake over conn, like Client.
func Server(ctx context.Context, conn net.Conn, cfg *Config) (*Conn, error) {
	return handshake(ctx, conn, cfg, true)
}

// Dial connects to addr and runs the client handshake. It fits
// http.Transport.DialContext for HTTP over aTLS (use an http:// URL: the
// TLS is below the transport's view).
func Dial(ctx context.Context, network, addr string, cfg *Config) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "atls: dial %s: %w", addr, err)
	}
	return Client(ctx, conn, cfg)
}
