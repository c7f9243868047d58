// Package rekortest is test support for the manifest's transparency log: an
// in-memory Rekor log that issues real Rekor log entries offline (Log), and
// the real Rekor stack (rekor-server, Trillian, MariaDB) in a network
// namespace (Stack, built by scripts/rekor.sh).
//
// Log computes entry bodies with Rekor's own dsse v0.0.1 type (the server's
// validation and canonicalization), RFC 6962 trees, signed checkpoints and
// signed entry timestamps exactly as rekor-server v1.5.4 does, so unit tests
// exercise the verifier on the bytes a real log returns.
package rekortest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"sync"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/go-openapi/strfmt"
	"github.com/sigstore/rekor/pkg/generated/models"
	"github.com/sigstore/rekor/pkg/types"
	_ "github.com/sigstore/rekor/pkg/types/dsse/v0.0.1" // registers the dsse kind
	"github.com/sigstore/rekor/pkg/util"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"
	"github.com/transparency-dev/merkle/rfc6962"
)

// Log is an in-memory Rekor log with one shard.
type Log struct {
	// Signer signs checkpoints and signed entry timestamps.
	Signer crypto.Signer
	// Hostname and TreeID make the checkpoint origin ("host - id").
	Hostname string
	TreeID   int64
	// Now stamps integratedTime; nil means time.Now.
	Now func() time.Time

	mu     sync.Mutex
	leaves [][]byte
	times  []int64
}

// NewLog returns a log with a fresh ECDSA P-256 key (rekor-server's
// default key type).
func NewLog() *Log {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return &Log{Signer: k, Hostname: "rekor.test", TreeID: 1}
}

// PublicKey is the log's public key.
func (l *Log) PublicKey() crypto.PublicKey { return l.Signer.Public() }

// PublicKeyPEM is the log's public key as PEM PUBLIC KEY (what an operator
// pins; GET /api/v1/log/publicKey returns the same).
func (l *Log) PublicKeyPEM() []byte { return PublicKeyPEM(l.Signer.Public()) }

// PublicKeyPEM encodes a public key as PEM PUBLIC KEY (PKIX).
func PublicKeyPEM(k crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ProposedEntry is the dsse v0.0.1 entry a publisher submits for envelope
// with its verifier keys (PEM); manifest.RekorProposedEntry is the same, and
// this copy only avoids an import cycle with manifest's own tests.
func ProposedEntry(envelope []byte, verifiers ...[]byte) *models.DSSE {
	env := string(envelope)
	vs := make([]strfmt.Base64, len(verifiers))
	for i, v := range verifiers {
		vs[i] = v
	}
	api := "0.0.1"
	return &models.DSSE{APIVersion: &api, Spec: &models.DSSEV001Schema{
		ProposedContent: &models.DSSEV001SchemaProposedContent{Envelope: &env, Verifiers: vs}}}
}

// Add records envelope (with its signers' PEM public keys) as a dsse entry,
// validating it as rekor-server does, and returns its index.
func (l *Log) Add(envelope []byte, verifiers ...[]byte) (int, error) {
	body, err := l.body(envelope, verifiers...)
	if err != nil {
		return 0, err
	}
	return l.AddBody(body), nil
}

// body is the canonical entry body rekor-server writes for the proposal.
func (l *Log) body(envelope []byte, verifiers ...[]byte) ([]byte, error) {
	ei, err := types.CreateVersionedEntry(ProposedEntry(envelope, verifiers...))
	if err != nil {
		return nil, fmt.Errorf("rekortest: entry: %w", err)
	}
	body, err := types.CanonicalizeEntry(context.Background(), ei)
	if err != nil {
		return nil, fmt.Errorf("rekortest: canonicalize: %w", err)
	}
	return body, nil
}

// AddBody appends a raw leaf (any entry body) and returns its index.
func (l *Log) AddBody(body []byte) int {
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leaves = append(l.leaves, body)
	l.times = append(l.times, now().Unix())
	return len(l.leaves) - 1
}

// Size is the number of entries.
func (l *Log) Size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leaves)
}

// Entry returns entry i as rekor-server's GET /api/v1/log/entries returns it
// (a LogEntryAnon, JSON), with its inclusion proof at the current tree size.
func (l *Log) Entry(i int) ([]byte, error) {
	l.mu.Lock()
	leaves := l.leaves
	times := l.times
	l.mu.Unlock()
	if i < 0 || i >= len(leaves) {
		return nil, fmt.Errorf("rekortest: no entry %d in a log of %d", i, len(leaves))
	}
	ctx := context.Background()
	sv, err := signature.LoadSignerVerifier(l.Signer, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	logID, err := keyID(l.Signer.Public())
	if err != nil {
		return nil, err
	}
	hashes := make([][]byte, len(leaves))
	for j, b := range leaves {
		hashes[j] = rfc6962.DefaultHasher.HashLeaf(b)
	}
	root := mth(hashes)
	path := auditPath(i, hashes)
	cp, err := util.CreateAndSignCheckpoint(ctx, l.Hostname, l.TreeID, uint64(len(leaves)), root, sv)
	if err != nil {
		return nil, err
	}
	body := base64.StdEncoding.EncodeToString(leaves[i])
	idx, t, size := int64(i), times[i], int64(len(leaves))
	// Rekor api/entries.go signEntry: the SET is a signature over the JCS
	// of {body, integratedTime, logID, logIndex}.
	set, err := json.Marshal(struct {
		Body           any    `json:"body"`
		IntegratedTime int64  `json:"integratedTime"`
		LogIndex       int64  `json:"logIndex"`
		LogID          string `json:"logID"`
	}{body, t, idx, logID})
	if err != nil {
		return nil, err
	}
	canon, err := jsoncanonicalizer.Transform(set)
	if err != nil {
		return nil, err
	}
	setSig, err := sv.SignMessage(bytesReader(canon), options.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	hx := make([]string, len(path))
	for j, h := range path {
		hx[j] = hex.EncodeToString(h)
	}
	rootHex, cps := hex.EncodeToString(root), string(cp)
	e := models.LogEntryAnon{
		Body: body, IntegratedTime: &t, LogID: &logID, LogIndex: &idx,
		Verification: &models.LogEntryAnonVerification{
			SignedEntryTimestamp: setSig,
			InclusionProof: &models.InclusionProof{Checkpoint: &cps, Hashes: hx, LogIndex: &idx,
				RootHash: &rootHex, TreeSize: &size},
		},
	}
	return json.Marshal(&e)
}

func keyID(k crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(sha256Sum(der)), nil
}

// mth is RFC 6962 §2.1's Merkle Tree Hash over leaf hashes.
func mth(h [][]byte) []byte {
	switch len(h) {
	case 0:
		return rfc6962.DefaultHasher.EmptyRoot()
	case 1:
		return h[0]
	}
	k := split(len(h))
	return rfc6962.DefaultHasher.HashChildren(mth(h[:k]), mth(h[k:]))
}

// auditPath is RFC 6962 §2.1.1's PATH(m, D[n]), leaf to root.
func auditPath(m int, h [][]byte) [][]byte {
	if len(h) <= 1 {
		return nil
	}
	k := split(len(h))
	if m < k {
		return append(auditPath(m, h[:k]), mth(h[k:]))
	}
	return append(auditPath(m-k, h[k:]), mth(h[:k]))
}

// split is the largest power of two smaller than n.
func split(n int) int {
	k := 1
	for k<<1 < n {
		k <<= 1
	}
	return k
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
