package manifest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-openapi/strfmt"
	"github.com/sigstore/rekor/pkg/generated/models"
	"github.com/sigstore/rekor/pkg/util"
	rekorverify "github.com/sigstore/rekor/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/palisade-cc/palisade/internal/attest"
)

// The transparency log is Rekor (v1 API), and a manifest is recorded as a
// "dsse" entry (Rekor pkg/types/dsse v0.0.1), not as a "hashedrekord":
//   - the dsse entry is the envelope itself: Rekor checks the signature over
//     DSSE's PAE with the verifier key submitted, and the canonical body keeps
//     the SHA-256 of the exact envelope bytes, of the payload, and each
//     signature with its key. A verifier can therefore tie the entry to THIS
//     envelope and THIS pinned key without any other artifact;
//   - hashedrekord would log a signature over a detached digest; Rekor v1.5
//     accepts Ed25519 there only pre-hashed, and our default manifest key is
//     Ed25519 over the PAE (not over a digest), so it could not record what
//     we sign.
//
// The bundle's log_proof is the LogEntryAnon Rekor returns for the entry
// (openapi.yaml: body, integratedTime, logID, logIndex, verification with
// the signed entry timestamp and the inclusion proof with its checkpoint).
// Verification is offline: nothing is fetched.

// RekorEntryKind and RekorEntryVersion are the Rekor entry type a manifest is
// logged as.
const (
	RekorEntryKind    = "dsse"
	RekorEntryVersion = "0.0.1"
)

// Errors of the log proof, each wrapped with the detail.
var (
	ErrLogEntry      = errors.New("log entry is not this envelope")
	ErrLogSET        = errors.New("signed entry timestamp does not verify")
	ErrLogInclusion  = errors.New("inclusion proof does not verify")
	ErrLogCheckpoint = errors.New("checkpoint does not verify")
	ErrLogKey        = errors.New("log entry by another log")
)

// RekorVerifier is the LogVerifier for Rekor: it checks a log_proof offline
// against a pinned Rekor public key. The entry must record this exact
// envelope, signed by one of ManifestKeys.
type RekorVerifier struct {
	// LogKey is the pinned Rekor public key (Ed25519 or ECDSA P-256): it signs
	// the signed entry timestamp and the checkpoints.
	LogKey crypto.PublicKey
	// ManifestKeys are the pinned manifest keys; the entry's signature must
	// be by one of them.
	ManifestKeys []crypto.PublicKey
	// Now bounds the entry's integration time (a log entry from the future
	// is refused); nil means time.Now.
	Now func() time.Time
}

var _ LogVerifier = (*RekorVerifier)(nil)

// maxFutureSkew tolerates clock skew between the log and the verifier.
const maxFutureSkew = 10 * time.Minute

// LogKeyID is Rekor's log ID for a public key: the hex SHA-256 of its PKIX
// DER encoding (Rekor api.go, the same bytes as KeyID).
func LogKeyID(pub crypto.PublicKey) (string, error) { return KeyID(pub) }

// LogEntry is a parsed log_proof.
type LogEntry struct {
	// Raw is the decoded LogEntryAnon.
	Raw models.LogEntryAnon
	// Body is the entry's canonical body (the Merkle leaf).
	Body []byte
	// Spec is the body's dsse v0.0.1 spec.
	Spec models.DSSEV001Schema
	// Checkpoint is the inclusion proof's signed checkpoint, parsed.
	Checkpoint util.SignedCheckpoint
}

// IntegratedTime is when the log says it integrated the entry.
func (e *LogEntry) IntegratedTime() time.Time { return time.Unix(*e.Raw.IntegratedTime, 0).UTC() }

// LogIndex is the entry's index in the log.
func (e *LogEntry) LogIndex() int64 { return *e.Raw.LogIndex }

// entryBody is the canonical body of a dsse entry; Rekor writes exactly
// these three fields (dsse v0.0.1 Canonicalize).
type entryBody struct {
	APIVersion string                `json:"apiVersion"`
	Kind       string                `json:"kind"`
	Spec       models.DSSEV001Schema `json:"spec"`
}

// ParseLogProof parses a log_proof without verifying anything: every field
// verification reads is present and well-formed afterwards, so the checks
// cannot dereference a missing one. Errors name the field.
func ParseLogProof(proof []byte) (*LogEntry, error) {
	if len(proof) > MaxSize {
		return nil, fmt.Errorf("log_proof: %d bytes, at most %d", len(proof), MaxSize)
	}
	var e LogEntry
	if err := strictUnmarshal(proof, &e.Raw); err != nil {
		return nil, fmt.Errorf("log_proof: %w", err)
	}
	r := &e.Raw
	switch {
	case r.IntegratedTime == nil:
		return nil, errors.New("log_proof.integratedTime: missing")
	case r.LogID == nil:
		return nil, errors.New("log_proof.logID: missing")
	case r.LogIndex == nil || *r.LogIndex < 0:
		return nil, errors.New("log_proof.logIndex: missing or negative")
	case r.Verification == nil:
		return nil, errors.New("log_proof.verification: missing")
	case len(r.Verification.SignedEntryTimestamp) == 0:
		return nil, errors.New("log_proof.verification.signedEntryTimestamp: missing")
	case r.Attestation != nil:
		return nil, errors.New("log_proof.attestation: not expected in a dsse entry")
	}
	p := r.Verification.InclusionProof
	switch {
	case p == nil:
		return nil, errors.New("log_proof.verification.inclusionProof: missing")
	case p.Checkpoint == nil:
		return nil, errors.New("log_proof.verification.inclusionProof.checkpoint: missing")
	case p.LogIndex == nil || *p.LogIndex < 0:
		return nil, errors.New("log_proof.verification.inclusionProof.logIndex: missing or negative")
	case p.TreeSize == nil || *p.TreeSize <= *p.LogIndex:
		return nil, errors.New("log_proof.verification.inclusionProof.treeSize: missing or not above logIndex")
	case p.RootHash == nil:
		return nil, errors.New("log_proof.verification.inclusionProof.rootHash: missing")
	case len(p.Hashes) > 64:
		// A tree of 2^63 leaves needs at most 63 hashes.
		return nil, fmt.Errorf("log_proof.verification.inclusionProof.hashes: %d, at most 64", len(p.Hashes))
	}
	if rh, err := hex.DecodeString(*p.RootHash); err != nil || len(rh) != sha256.Size {
		return nil, errors.New("log_proof.verification.inclusionProof.rootHash: want 64 hex digits")
	}
	for i, h := range p.Hashes {
		if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("log_proof.verification.inclusionProof.hashes[%d]: want 64 hex digits", i)
		}
	}
	if err := e.Checkpoint.UnmarshalText([]byte(*p.Checkpoint)); err != nil {
		return nil, fmt.Errorf("log_proof.verification.inclusionProof.checkpoint: %w", err)
	}
	bs, ok := r.Body.(string)
	if !ok {
		return nil, fmt.Errorf("log_proof.body: %T, want a base64 string", r.Body)
	}
	body, err := base64.StdEncoding.DecodeString(bs)
	if err != nil {
		return nil, fmt.Errorf("log_proof.body: %w", err)
	}
	e.Body = body
	var eb entryBody
	if err := strictUnmarshal(body, &eb); err != nil {
		return nil, fmt.Errorf("log_proof.body: %w", err)
	}
	if eb.Kind != RekorEntryKind || eb.APIVersion != RekorEntryVersion {
		return nil, fmt.Errorf("log_proof.body: entry %s/%s, want %s/%s", eb.Kind, eb.APIVersion, RekorEntryKind, RekorEntryVersion)
	}
	s := &eb.Spec
	switch {
	case s.ProposedContent != nil:
		return nil, errors.New("log_proof.body.spec.proposedContent: present in a canonical entry")
	case s.EnvelopeHash == nil || s.EnvelopeHash.Algorithm == nil || s.EnvelopeHash.Value == nil:
		return nil, errors.New("log_proof.body.spec.envelopeHash: missing")
	case s.PayloadHash == nil || s.PayloadHash.Algorithm == nil || s.PayloadHash.Value == nil:
		return nil, errors.New("log_proof.body.spec.payloadHash: missing")
	case len(s.Signatures) == 0 || len(s.Signatures) > MaxSignatures:
		return nil, fmt.Errorf("log_proof.body.spec.signatures: %d, want 1-%d", len(s.Signatures), MaxSignatures)
	}
	for i, sig := range s.Signatures {
		if sig == nil || sig.Signature == nil || sig.Verifier == nil {
			return nil, fmt.Errorf("log_proof.body.spec.signatures[%d]: signature or verifier missing", i)
		}
	}
	e.Spec = eb.Spec
	return &e, nil
}

// VerifyLogProof checks, offline, that proof is a Rekor entry of exactly
// this envelope (the bytes Verify hands in), signed by a pinned manifest
// key, with a signed entry timestamp by the pinned log key and an RFC 6962
// inclusion proof to a checkpoint signed by the pinned log key.
func (v *RekorVerifier) VerifyLogProof(envelope []byte, proof json.RawMessage) error {
	_, err := v.Verify(envelope, proof)
	return err
}

// Verify is VerifyLogProof returning the verified entry.
func (v *RekorVerifier) Verify(envelope, proof []byte) (*LogEntry, error) {
	if v.LogKey == nil {
		return nil, attest.Denyf(attest.ClassInternal, "rekor: no pinned log key configured")
	}
	if len(v.ManifestKeys) == 0 {
		return nil, attest.Denyf(attest.ClassInternal, "rekor: no pinned manifest keys configured")
	}
	logVerifier, err := signature.LoadVerifier(v.LogKey, crypto.SHA256)
	if err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "rekor: pinned log key: %v", err)
	}
	logID, err := LogKeyID(v.LogKey)
	if err != nil {
		return nil, attest.Denyf(attest.ClassInternal, "rekor: pinned log key: %v", err)
	}
	e, err := ParseLogProof(proof)
	if err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "rekor: %v: %w", err, ErrMalformed)
	}
	if err := v.checkBody(envelope, e); err != nil {
		return nil, err
	}
	// The log ID names the key; a mismatch means the proof comes from
	// another log (or a log key that is not pinned), whatever it verifies with.
	if *e.Raw.LogID != logID {
		return nil, attest.Denyf(attest.ClassChain, "rekor: logID %.16s…, pinned log key is %.16s…: %w", *e.Raw.LogID, logID, ErrLogKey)
	}
	ctx := context.Background()
	// The SET is the log's promise to include this body at this index and
	// time (Rekor api/entries.go signEntry: the JCS of body, integratedTime,
	// logID, logIndex).
	if err := rekorverify.VerifySignedEntryTimestamp(ctx, &e.Raw, logVerifier); err != nil {
		return nil, attest.Denyf(attest.ClassChain, "rekor: %v: %w", err, ErrLogSET)
	}
	// RFC 6962 §2.1.1: the audit path from the body's leaf hash to rootHash.
	if err := rekorverify.VerifyInclusion(ctx, &e.Raw); err != nil {
		return nil, attest.Denyf(attest.ClassChain, "rekor: log index %d of tree size %d: %v: %w",
			*e.Raw.Verification.InclusionProof.LogIndex, *e.Raw.Verification.InclusionProof.TreeSize, err, ErrLogInclusion)
	}
	// The checkpoint (a signed note, transparency-dev's checkpoint format)
	// must be signed by the pinned log key and commit to the same root and
	// tree size the inclusion proof was checked against.
	if err := rekorverify.VerifyCheckpointSignature(&e.Raw, logVerifier); err != nil {
		return nil, attest.Denyf(attest.ClassChain, "rekor: %v: %w", err, ErrLogCheckpoint)
	}
	if ts := *e.Raw.Verification.InclusionProof.TreeSize; e.Checkpoint.Size != uint64(ts) {
		return nil, attest.Denyf(attest.ClassChain, "rekor: checkpoint of tree size %d, inclusion proof for tree size %d: %w", e.Checkpoint.Size, ts, ErrLogCheckpoint)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	if t := e.IntegratedTime(); t.After(now().Add(maxFutureSkew)) {
		return nil, attest.Denyf(attest.ClassChain, "rekor: integratedTime %s is in the future: %w", t.Format(time.RFC3339), ErrLogSET)
	}
	return e, nil
}

// checkBody ties the entry to this envelope: the envelope's and payload's
// SHA-256, and a signature of this envelope by a pinned manifest key whose
// logged verifier is that key.
func (v *RekorVerifier) checkBody(envelope []byte, e *LogEntry) error {
	var env Envelope
	if err := strictUnmarshal(envelope, &env); err != nil {
		return attest.Denyf(attest.ClassMalformed, "rekor: envelope: %v: %w", err, ErrMalformed)
	}
	s := &e.Spec
	eh := sha256.Sum256(envelope)
	if *s.EnvelopeHash.Algorithm != models.DSSEV001SchemaEnvelopeHashAlgorithmSha256 || *s.EnvelopeHash.Value != hex.EncodeToString(eh[:]) {
		return attest.Denyf(attest.ClassChain, "rekor: entry's envelopeHash %s:%.16s…, this envelope's sha256:%.16s…: %w",
			*s.EnvelopeHash.Algorithm, *s.EnvelopeHash.Value, hex.EncodeToString(eh[:]), ErrLogEntry)
	}
	ph := sha256.Sum256(env.Payload)
	if *s.PayloadHash.Algorithm != models.DSSEV001SchemaPayloadHashAlgorithmSha256 || *s.PayloadHash.Value != hex.EncodeToString(ph[:]) {
		return attest.Denyf(attest.ClassChain, "rekor: entry's payloadHash %s:%.16s…, this payload's sha256:%.16s…: %w",
			*s.PayloadHash.Algorithm, *s.PayloadHash.Value, hex.EncodeToString(ph[:]), ErrLogEntry)
	}
	// The envelope hash matched, so the logged signatures are this
	// envelope's; one must verify over its PAE with a pinned key that is
	// also the key the log recorded (Rekor verified it with that key).
	pae := PAE(env.PayloadType, env.Payload)
	for _, ls := range s.Signatures {
		sig, err := base64.StdEncoding.DecodeString(*ls.Signature)
		if err != nil {
			continue
		}
		// Rekor logs the verifier as the PEM of its canonical PKIX key.
		lk, err := ParsePublicKey(*ls.Verifier)
		if err != nil {
			continue
		}
		for _, k := range v.ManifestKeys {
			if sameKey(k, lk) && verifySig(k, pae, sig) {
				return nil
			}
		}
	}
	return attest.Denyf(attest.ClassChain, "rekor: no signature in the entry is this envelope's by a pinned manifest key: %w", ErrLogEntry)
}

func sameKey(a, b crypto.PublicKey) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}

// EnvelopeBytes are the bytes of b's envelope as Verify hands them to a
// LogVerifier, and as a publisher must submit them to the log: the entry's
// envelopeHash covers exactly these bytes.
func EnvelopeBytes(b *Bundle) ([]byte, error) { return json.Marshal(b.DSSE) }

// RekorProposedEntry is the dsse v0.0.1 entry a publisher submits to Rekor
// (POST /api/v1/log/entries) for envelope, the bytes EnvelopeBytes gives,
// with the PEM public keys that verify its signatures: Rekor refuses an
// envelope with a signature none of them verifies.
func RekorProposedEntry(envelope []byte, verifierPEMs ...[]byte) *models.DSSE {
	env := string(envelope)
	vs := make([]strfmt.Base64, len(verifierPEMs))
	for i, v := range verifierPEMs {
		vs[i] = v
	}
	api := RekorEntryVersion
	return &models.DSSE{APIVersion: &api, Spec: &models.DSSEV001Schema{
		ProposedContent: &models.DSSEV001SchemaProposedContent{Envelope: &env, Verifiers: vs}}}
}
