package atls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Defaults and bounds of a Config.
const (
	// DefaultHandshakeTimeout bounds a whole handshake: TLS, the frame
	// exchange, collecting evidence and verifying it. A TPM quote takes a
	// second or two, a cold collateral fetch a few more.
	DefaultHandshakeTimeout = 30 * time.Second
	// DefaultMaxMessageSize bounds an evidence frame: four times
	// attest.MaxBlobSize, i.e. about three maximal blobs once base64-encoded
	// in JSON. Real evidence (report, certificates, an event log) is far
	// smaller.
	DefaultMaxMessageSize = 4 * attest.MaxBlobSize
	// MaxMessageSizeLimit is the largest MaxMessageSize a Config may set:
	// every blob an Evidence may hold, base64-encoded, plus headroom.
	MaxMessageSizeLimit = attest.MaxBlobs*attest.MaxBlobSize*4/3 + 1<<16
	// maxSmallFrame bounds hello, challenge and verdict frames, which a
	// peer may send before it proved anything. A TPM identity (EK
	// certificate and AK public area) is a few KiB.
	maxSmallFrame = 64 << 10
	maxClusterID  = 64
)

// Config is one side of an attested TLS session. The same shape serves
// client and server, so either may run in another process.
type Config struct {
	// ClusterID is the cluster both sides must attest for.
	ClusterID string
	// Claims are what this side says about itself; its evidence commits
	// to their digest.
	Claims attest.Claims
	// Attester produces this side's evidence. Nil means this side does not
	// attest itself (the owner's verifier CLI has no hardware); the peer
	// then denies unless it sets AllowUnattestedPeer.
	Attester attest.Attester
	// Verifiers judge the peer's evidence by platform. Empty means this
	// side does not verify the peer, which requires AllowUnattestedPeer.
	Verifiers map[attest.Platform]attest.Verifier
	// Reference returns the accepted values for the peer's claimed
	// role and profile; it may deny (return an attest.Deny error to pick
	// the class; other errors count as ClassPolicy). Required with
	// Verifiers.
	Reference func(ctx context.Context, peer attest.Claims) (*attest.Reference, error)
	// AcceptPeer is the role and identity policy, applied to the peer's
	// claims as soon as they arrive (nil accepts any valid claims). The
	// claims are only proven once the evidence verified.
	AcceptPeer func(peer attest.Claims) error
	// AllowUnattestedPeer accepts a peer that sends no evidence, or does
	// not verify it when Verifiers is empty. Such a Conn has
	// PeerVerified() == nil and its PeerClaims are the peer's word only.
	AllowUnattestedPeer bool
	// HandshakeTimeout bounds the whole handshake (0: the default).
	HandshakeTimeout time.Duration
	// MaxMessageSize bounds an evidence frame in bytes (0: the default).
	MaxMessageSize int
	// Logger receives one record per denial with class and precise
	// reason (nil: discard).
	Logger *slog.Logger
	// Now is the clock of the ephemeral certificates (nil: time.Now).
	Now func() time.Time
}

// Validate checks the configuration and names the first bad field.
func (c *Config) Validate() error {
	if c == nil {
		return errors.New("atls config: nil")
	}
	if c.ClusterID == "" || len(c.ClusterID) > maxClusterID {
		return fmt.Errorf("atls config: ClusterID: length %d, want 1-%d", len(c.ClusterID), maxClusterID)
	}
	if err := c.Claims.Validate(); err != nil {
		return fmt.Errorf("atls config: Claims: %w", err)
	}
	if c.Attester != nil {
		if err := c.Attester.Platform().Validate(); err != nil {
			return fmt.Errorf("atls config: Attester: %w", err)
		}
	}
	for p, v := range c.Verifiers {
		if v == nil {
			return fmt.Errorf("atls config: Verifiers[%q]: nil", p)
		}
		if v.Platform() != p {
			return fmt.Errorf("atls config: Verifiers[%q]: verifier is for %q", p, v.Platform())
		}
	}
	if len(c.Verifiers) == 0 && !c.AllowUnattestedPeer {
		return errors.New("atls config: Verifiers: empty, so no peer can be verified; set AllowUnattestedPeer to accept unverified peers explicitly")
	}
	if len(c.Verifiers) > 0 && c.Reference == nil {
		return errors.New("atls config: Reference: nil, required to verify peers")
	}
	if c.HandshakeTimeout < 0 {
		return fmt.Errorf("atls config: HandshakeTimeout: %s, want > 0 (or 0 for %s)", c.HandshakeTimeout, DefaultHandshakeTimeout)
	}
	if c.MaxMessageSize != 0 && (c.MaxMessageSize < maxSmallFrame || c.MaxMessageSize > MaxMessageSizeLimit) {
		return fmt.Errorf("atls config: MaxMessageSize: %d, want %d-%d (or 0 for %d)",
			c.MaxMessageSize, maxSmallFrame, MaxMessageSizeLimit, DefaultMaxMessageSize)
	}
	return nil
}

// verifies reports whether this side verifies the peer's evidence.
func (c *Config) verifies() bool { return len(c.Verifiers) > 0 }

func (c *Config) timeout() time.Duration {
	if c.HandshakeTimeout == 0 {
		return DefaultHandshakeTimeout
	}
	return c.HandshakeTimeout
}

func (c *Config) maxMessage() int {
	if c.MaxMessageSize == 0 {
		return DefaultMaxMessageSize
	}
	return c.MaxMessageSize
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *Config) now() time.Time {
	if c.Now == nil {
		return time.Now()
	}
	return c.Now()
}
