package manifest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Envelope is a DSSE envelope (github.com/secure-systems-lab/dsse,
// envelope.md); []byte fields are standard base64 in JSON.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     []byte      `json:"payload"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one DSSE signature.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"`
}

// Bundle is what images publishes: the envelope and the transparency log's
// inclusion proof for it (rekor.go).
type Bundle struct {
	DSSE Envelope `json:"dsse"`
	// LogProof is the transparency-log entry's inclusion proof and signed
	// timestamp in the log's own format; only a LogVerifier reads it.
	LogProof json.RawMessage `json:"log_proof,omitempty"`
}

// MaxSignatures bounds the signatures tried, so a bundle cannot make a
// verifier spend unbounded time.
const MaxSignatures = 8

// PAE is DSSE's pre-authentication encoding (protocol.md):
// "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, LEN in ASCII decimal.
func PAE(payloadType string, payload []byte) []byte {
	b := []byte("DSSEv1 ")
	b = strconv.AppendInt(b, int64(len(payloadType)), 10)
	b = append(b, ' ')
	b = append(b, payloadType...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(payload)), 10)
	b = append(b, ' ')
	return append(b, payload...)
}

// KeyID is the hex SHA-256 of the key's PKIX DER encoding.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:]), nil
}

// Sign encodes m and signs it with an Ed25519 or ECDSA P-256 key.
func Sign(m *Manifest, key crypto.Signer) (*Bundle, error) {
	payload, err := m.Encode()
	if err != nil {
		return nil, err
	}
	pae := PAE(PayloadType, payload)
	var sig []byte
	switch k := key.(type) {
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, pae)
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("sign: ECDSA key on %s, want P-256", k.Curve.Params().Name)
		}
		h := sha256.Sum256(pae)
		if sig, err = ecdsa.SignASN1(rand.Reader, k, h[:]); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("sign: %T key, want Ed25519 or ECDSA P-256", key)
	}
	id, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	return &Bundle{DSSE: Envelope{PayloadType: PayloadType, Payload: payload, Signatures: []Signature{{KeyID: id, Sig: sig}}}}, nil
}

func verifySig(pub crypto.PublicKey, pae, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return len(k) == ed25519.PublicKeySize && ed25519.Verify(k, pae, sig)
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return false
		}
		h := sha256.Sum256(pae)
		return ecdsa.VerifyASN1(k, h[:], sig)
	}
	return false
}

// ParsePublicKey reads a PEM "PUBLIC KEY" (PKIX) Ed25519 or P-256 key.
func ParsePublicKey(b []byte) (crypto.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("public key: no PEM PUBLIC KEY block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	switch k := k.(type) {
	case ed25519.PublicKey:
		return k, nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return k, nil
		}
	}
	return nil, fmt.Errorf("public key: %T, want Ed25519 or ECDSA P-256", k)
}

// Sentinel reasons; Verify wraps each in an attest denial naming the detail.
var (
	ErrMalformed   = errors.New("malformed manifest bundle")
	ErrPayloadType = errors.New("wrong payload type")
	ErrSignature   = errors.New("no valid signature by a pinned key")
	ErrRollback    = errors.New("security version below the last accepted")
	ErrNoLogProof  = errors.New("no transparency-log proof")
	ErrLogProof    = errors.New("transparency-log proof does not verify")
	ErrFileDigest  = errors.New("file digest mismatch")
)

// LogVerifier checks a transparency-log inclusion proof for an envelope
// offline, against the log's pinned public key; RekorVerifier is the one
// Palisade uses.
type LogVerifier interface {
	VerifyLogProof(envelope []byte, proof json.RawMessage) error
}

// LogStatus says what Verify established about the transparency log.
type LogStatus string

// Log statuses.
const (
	LogVerified LogStatus = "transparency-log proof verified"
	// LogMissing is reported only when the caller explicitly allowed it.
	LogMissing LogStatus = "no transparency-log proof"
)

// Options are the pinned state a verification uses.
type Options struct {
	// Keys are the pinned public keys; a key from the bundle is never used.
	Keys []crypto.PublicKey
	// LastAccepted is the highest security version accepted before.
	LastAccepted uint64
	// Log verifies the bundle's log proof. Nil requires AllowNoLogProof.
	Log LogVerifier
	// AllowNoLogProof accepts a manifest without a verified log proof and
	// reports LogMissing: test builds and explicit operator overrides only;
	// callers must surface the status, never drop it.
	AllowNoLogProof bool
}

// Result is what a verification established.
type Result struct {
	Manifest *Manifest
	KeyID    string
	Log      LogStatus
}

// Verify checks a bundle in order: shape, payload type, a signature by a
// pinned key over the PAE, the manifest's content, the security version,
// the log proof. The first failure denies.
func Verify(bundle []byte, o Options) (*Result, error) {
	if len(bundle) > MaxSize {
		return nil, attest.Denyf(attest.ClassMalformed, "bundle of %d bytes, at most %d: %w", len(bundle), MaxSize, ErrMalformed)
	}
	var b Bundle
	if err := strictUnmarshal(bundle, &b); err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "bundle: %v: %w", err, ErrMalformed)
	}
	env := b.DSSE
	if env.PayloadType != PayloadType {
		return nil, attest.Denyf(attest.ClassMalformed, "payloadType %q, want %q: %w", env.PayloadType, PayloadType, ErrPayloadType)
	}
	if len(env.Signatures) == 0 || len(env.Signatures) > MaxSignatures {
		return nil, attest.Denyf(attest.ClassMalformed, "%d signatures, want 1-%d: %w", len(env.Signatures), MaxSignatures, ErrMalformed)
	}
	if len(o.Keys) == 0 {
		return nil, attest.Denyf(attest.ClassInternal, "no pinned manifest keys configured")
	}
	pae := PAE(env.PayloadType, env.Payload)
	var keyID string
	for _, s := range env.Signatures {
		for _, k := range o.Keys {
			if verifySig(k, pae, s.Sig) {
				keyID, _ = KeyID(k)
				break
			}
		}
		if keyID != "" {
			break
		}
	}
	if keyID == "" {
		return nil, attest.Denyf(attest.ClassChain, "manifest signed by none of the %d pinned keys (signature keyids %s): %w", len(o.Keys), keyIDs(env), ErrSignature)
	}
	m, err := Decode(env.Payload)
	if err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "%v: %w", err, ErrMalformed)
	}
	if m.SecurityVersion < o.LastAccepted {
		return nil, attest.Denyf(attest.ClassTCB, "security_version %d < last accepted %d: %w", m.SecurityVersion, o.LastAccepted, ErrRollback)
	}
	res := &Result{Manifest: m, KeyID: keyID}
	switch {
	case o.Log != nil:
		if len(b.LogProof) == 0 {
			return nil, attest.Denyf(attest.ClassChain, "bundle carries no log proof: %w", ErrNoLogProof)
		}
		eb, err := EnvelopeBytes(&b)
		if err != nil {
			return nil, attest.Deny(attest.ClassInternal, err)
		}
		// Both wrapped: callers tell ErrLogProof apart, tests and logs the
		// verifier's own reason and class (a malformed proof stays malformed).
		if err := o.Log.VerifyLogProof(eb, b.LogProof); err != nil {
			return nil, attest.Denyf(attest.ClassChain, "%w: %w", ErrLogProof, err)
		}
		res.Log = LogVerified
	case o.AllowNoLogProof:
		res.Log = LogMissing
	default:
		return nil, attest.Denyf(attest.ClassChain, "no log verifier configured and no-log-proof not allowed: %w", ErrNoLogProof)
	}
	return res, nil
}

func keyIDs(e Envelope) string {
	s := ""
	for i, sig := range e.Signatures {
		if i > 0 {
			s += ","
		}
		id := sig.KeyID
		if len(id) > 16 {
			id = id[:16]
		}
		s += strconv.Quote(id)
	}
	return s
}
