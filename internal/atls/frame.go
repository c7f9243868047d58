package atls

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/palisade-cc/palisade/internal/attest"
)

// protocolVersion is the only version of the frame exchange (doc.go).
const protocolVersion = 1

// headerSize is version (1) + type (1) + payload length (4, big endian).
const headerSize = 6

// msgType is a frame's message type; its order is the order of the exchange.
type msgType uint8

const (
	msgClientHello    msgType = 1
	msgServerHello    msgType = 2
	msgChallenge      msgType = 3
	msgServerEvidence msgType = 4
	msgClientEvidence msgType = 5
	msgVerdict        msgType = 6
)

func (t msgType) String() string {
	switch t {
	case msgClientHello:
		return "client-hello"
	case msgServerHello:
		return "server-hello"
	case msgChallenge:
		return "challenge"
	case msgServerEvidence:
		return "server-evidence"
	case msgClientEvidence:
		return "client-evidence"
	case msgVerdict:
		return "verdict"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

func (t msgType) known() bool { return t >= msgClientHello && t <= msgVerdict }

// limit is the largest payload a message of type t may have: evidence is
// bounded by the configuration, everything else by maxSmallFrame.
func (t msgType) limit(maxEvidence int) int {
	if t == msgServerEvidence || t == msgClientEvidence {
		return maxEvidence
	}
	return maxSmallFrame
}

// writeFrame writes one frame in a single Write, so a frame is never split
// across TLS records more than the record layer requires.
func writeFrame(w io.Writer, t msgType, payload []byte) error {
	if len(payload) > MaxMessageSizeLimit {
		return fmt.Errorf("frame %s: payload %d bytes, at most %d", t, len(payload), MaxMessageSizeLimit)
	}
	b := make([]byte, headerSize, headerSize+len(payload))
	b[0] = protocolVersion
	b[1] = byte(t)
	binary.BigEndian.PutUint32(b[2:], uint32(len(payload)))
	b = append(b, payload...)
	_, err := w.Write(b)
	return err
}

// readFrame reads exactly one frame and nothing more (application data may
// follow the last frame in the same stream). It checks the version, type and
// length before it allocates the payload.
func readFrame(r io.Reader, maxEvidence int) (msgType, []byte, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, ioDenial("frame header", err)
	}
	if h[0] != protocolVersion {
		return 0, nil, attest.Denyf(attest.ClassProtocol, "frame: version %d, want %d", h[0], protocolVersion)
	}
	t := msgType(h[1])
	if !t.known() {
		return 0, nil, attest.Denyf(attest.ClassProtocol, "frame: unknown message type %d", h[1])
	}
	n := binary.BigEndian.Uint32(h[2:])
	if lim := t.limit(maxEvidence); uint64(n) > uint64(lim) {
		return 0, nil, attest.Denyf(attest.ClassProtocol, "frame %s: oversized, %d bytes, at most %d", t, n, lim)
	}
	if n == 0 {
		return 0, nil, attest.Denyf(attest.ClassProtocol, "frame %s: empty payload", t)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, ioDenial(fmt.Sprintf("frame %s: truncated payload of %d bytes", t, n), err)
	}
	return t, p, nil
}

// ioDenial classifies an I/O failure during the handshake: the peer stalled,
// closed or broke the stream, which is a protocol failure.
func ioDenial(what string, err error) error {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return attest.Denyf(attest.ClassProtocol, "%s: handshake timed out: %w", what, err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return attest.Denyf(attest.ClassProtocol, "%s: peer closed the connection: %w", what, err)
	}
	return attest.Denyf(attest.ClassProtocol, "%s: %w", what, err)
}

// hello is the client-hello and server-hello payload. Challenge is only in
// a server hello.
type hello struct {
	Nonce  []byte        `json:"nonce"`
	Claims attest.Claims `json:"claims"`
	// Platform is what the sender will attest with, empty if it does not
	// attest itself.
	Platform attest.Platform `json:"platform,omitempty"`
	// Identity is the sender attester's Identity, for the challenge.
	Identity []byte `json:"identity,omitempty"`
	// Verify says the sender verifies the receiver, who therefore attests.
	Verify bool `json:"verify"`
	// Challenge is the server's challenge for the client's attester.
	Challenge []byte `json:"challenge,omitempty"`
}

type challenge struct {
	Challenge []byte `json:"challenge,omitempty"`
}

type evidence struct {
	Evidence *attest.Evidence `json:"evidence"`
}

type verdict struct {
	OK bool `json:"ok"`
}

// newMessage returns an empty payload struct of type t.
func newMessage(t msgType) any {
	switch t {
	case msgClientHello, msgServerHello:
		return new(hello)
	case msgChallenge:
		return new(challenge)
	case msgServerEvidence, msgClientEvidence:
		return new(evidence)
	case msgVerdict:
		return new(verdict)
	}
	return nil
}

// decodeMessage parses a payload strictly: one JSON object, no unknown
// fields, nothing after it; then checks the message's shape.
func decodeMessage(t msgType, p []byte) (any, error) {
	m := newMessage(t)
	if m == nil {
		return nil, attest.Denyf(attest.ClassProtocol, "message: unknown type %d", uint8(t))
	}
	if len(p) == 0 || p[0] != '{' {
		return nil, attest.Denyf(attest.ClassMalformed, "message %s: not a JSON object", t)
	}
	d := json.NewDecoder(bytes.NewReader(p))
	d.DisallowUnknownFields()
	if err := d.Decode(m); err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "message %s: %w", t, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, attest.Denyf(attest.ClassMalformed, "message %s: trailing data after the JSON object", t)
	}
	if err := checkMessage(t, m); err != nil {
		return nil, attest.Deny(attest.ClassMalformed, fmt.Errorf("message %s: %w", t, err))
	}
	return m, nil
}

// checkMessage enforces what every message of type t must satisfy,
// independent of the session.
func checkMessage(t msgType, m any) error {
	switch m := m.(type) {
	case *hello:
		if len(m.Nonce) != attest.NonceSize {
			return fmt.Errorf("nonce: %d bytes, want %d", len(m.Nonce), attest.NonceSize)
		}
		if err := m.Claims.Validate(); err != nil {
			return err
		}
		if m.Platform == "" && len(m.Identity) != 0 {
			return errors.New("identity without a platform")
		}
		if t == msgClientHello && len(m.Challenge) != 0 {
			return errors.New("challenge in a client hello")
		}
	case *evidence:
		if m.Evidence != nil && m.Evidence.Platform == "" {
			return errors.New("evidence: platform empty")
		}
	}
	return nil
}

// encodeMessage is the inverse of decodeMessage.
func encodeMessage(m any) ([]byte, error) {
	return json.Marshal(m)
}
