package admissionlog

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Errors of the client-side checks; test with errors.Is.
var (
	// ErrMalformed: a checkpoint or proof does not parse.
	ErrMalformed = errors.New("auditlog: malformed")
	// ErrSignature: the checkpoint is not signed by the pinned key.
	ErrSignature = errors.New("auditlog: checkpoint not signed by the log key")
	// ErrOrigin: the checkpoint is for another log.
	ErrOrigin = errors.New("auditlog: checkpoint of another log")
	// ErrInclusion: the leaf is not at that index in the tree.
	ErrInclusion = errors.New("auditlog: inclusion proof does not verify")
	// ErrConsistency: the newer tree does not extend the older one.
	ErrConsistency = errors.New("auditlog: consistency proof does not verify")
	// ErrFork: two checkpoints of one size with different roots, signed by
	// the same key: the log showed different histories.
	ErrFork = errors.New("auditlog: forked log")
	// ErrRollback: a checkpoint smaller than one already seen.
	ErrRollback = errors.New("auditlog: checkpoint rolled back")
)

// MaxProofHashes bounds a parsed proof: a tree of 2^63 leaves needs at
// most 2·63 hashes in a consistency proof.
const MaxProofHashes = 128

// Checkpoint is the signed statement "the log origin has size leaves with
// this root" (C2SP tlog-checkpoint).
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// Body is the checkpoint's note text: "origin\nsize\nbase64(root)\n".
func (c Checkpoint) Body() []byte {
	return fmt.Appendf(nil, "%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root[:]))
}

// ValidOrigin checks a log origin: it doubles as the note key name.
func ValidOrigin(origin string) error {
	// The origin doubles as the note key name, so it follows note's rules
	// for names (no whitespace, no '+') as well as C2SP's (one line).
	if origin == "" || strings.ContainsAny(origin, "+") || strings.ContainsFunc(origin, func(r rune) bool {
		return r <= ' ' || r == 0x7f || r == 0x85 || r == 0xa0 || r == 0x2028 || r == 0x2029
	}) || !isUTF8(origin) {
		return fmt.Errorf("origin %q: want a non-empty name without whitespace or '+'", origin)
	}
	return nil
}

func isUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// ParseCheckpoint parses a checkpoint body (the note text, unsigned).
// Extension lines are not accepted: this log writes none, and a client
// must not trust what it cannot check.
func ParseCheckpoint(body []byte) (Checkpoint, error) {
	lines := strings.Split(string(body), "\n")
	if len(lines) != 4 || lines[3] != "" {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint body has %d lines, want origin, size and root", ErrMalformed, len(lines)-1)
	}
	if err := ValidOrigin(lines[0]); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint %v", ErrMalformed, err)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint size %q", ErrMalformed, lines[1])
	}
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint root %q: want base64 of %d bytes", ErrMalformed, lines[2], tlog.HashSize)
	}
	c := Checkpoint{Origin: lines[0], Size: size}
	copy(c.Root[:], root)
	if !bytes.Equal(c.Body(), body) {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint not in canonical form", ErrMalformed)
	}
	return c, nil
}

// VerifyCheckpoint opens a signed checkpoint note: it must carry a valid
// signature by v (other signatures are ignored) and name origin.
func VerifyCheckpoint(msg []byte, origin string, v note.Verifier) (Checkpoint, error) {
	if v == nil {
		return Checkpoint{}, fmt.Errorf("%w: no verifier key", ErrSignature)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		if errors.As(err, &unverified) || errors.As(err, &invalid) {
			return Checkpoint{}, fmt.Errorf("%w: %v", ErrSignature, err)
		}
		return Checkpoint{}, fmt.Errorf("%w: checkpoint note: %v", ErrMalformed, err)
	}
	c, err := ParseCheckpoint([]byte(n.Text))
	if err != nil {
		return Checkpoint{}, err
	}
	if c.Origin != origin {
		return Checkpoint{}, fmt.Errorf("%w: origin %q, want %q", ErrOrigin, c.Origin, origin)
	}
	return c, nil
}

// VerifyInclusion checks that leaf is entry index of the tree c commits to.
func VerifyInclusion(c Checkpoint, index int64, leaf []byte, proof tlog.RecordProof) error {
	if index < 0 || index >= c.Size {
		return fmt.Errorf("%w: index %d outside tree of size %d", ErrInclusion, index, c.Size)
	}
	if err := tlog.CheckRecord(proof, c.Size, c.Root, index, tlog.RecordHash(leaf)); err != nil {
		return fmt.Errorf("%w: entry %d in tree of size %d: %v", ErrInclusion, index, c.Size, err)
	}
	return nil
}

// VerifyConsistency checks that newer extends older: same origin, not
// smaller, same root at equal size, and a valid consistency proof
// (RFC 6962 §2.1.2) otherwise. Both must already be verified checkpoints.
func VerifyConsistency(older, newer Checkpoint, proof tlog.TreeProof) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("%w: origins %q and %q", ErrOrigin, older.Origin, newer.Origin)
	}
	switch {
	case newer.Size < older.Size:
		return fmt.Errorf("%w: size %d after size %d", ErrRollback, newer.Size, older.Size)
	case newer.Size == older.Size:
		if newer.Root != older.Root {
			return fmt.Errorf("%w: two roots for size %d", ErrFork, newer.Size)
		}
		if len(proof) != 0 {
			return fmt.Errorf("%w: non-empty proof between equal trees", ErrConsistency)
		}
		return nil
	case older.Size == 0:
		// Every tree extends the empty tree; there is nothing to prove.
		if len(proof) != 0 {
			return fmt.Errorf("%w: non-empty proof from the empty tree", ErrConsistency)
		}
		return nil
	}
	if err := tlog.CheckTree(proof, newer.Size, newer.Root, older.Size, older.Root); err != nil {
		return fmt.Errorf("%w: size %d to %d: %v", ErrConsistency, older.Size, newer.Size, err)
	}
	return nil
}

// FormatProof encodes a proof as one base64 hash per line.
func FormatProof(p []tlog.Hash) []byte {
	var b bytes.Buffer
	for _, h := range p {
		b.WriteString(base64.StdEncoding.EncodeToString(h[:]))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ParseProof decodes FormatProof's encoding (canonical form only).
func ParseProof(b []byte) ([]tlog.Hash, error) {
	if len(b) == 0 {
		return []tlog.Hash{}, nil
	}
	if b[len(b)-1] != '\n' {
		return nil, fmt.Errorf("%w: proof does not end in a newline", ErrMalformed)
	}
	lines := strings.Split(string(b[:len(b)-1]), "\n")
	if len(lines) > MaxProofHashes {
		return nil, fmt.Errorf("%w: proof of %d hashes exceeds %d", ErrMalformed, len(lines), MaxProofHashes)
	}
	p := make([]tlog.Hash, len(lines))
	for i, l := range lines {
		// The decoder skips '\r' and '\n' even in strict mode: compare
		// the re-encoding so one proof has exactly one text.
		h, err := base64.StdEncoding.Strict().DecodeString(l)
		if err != nil || len(h) != tlog.HashSize || base64.StdEncoding.EncodeToString(h) != l {
			return nil, fmt.Errorf("%w: proof hash %d: want base64 of %d bytes", ErrMalformed, i, tlog.HashSize)
		}
		copy(p[i][:], h)
	}
	return p, nil
}

// NewSigner returns the note signer for a log's checkpoints, named by the
// log's origin, and the verifier key clients pin (note's "name+hash+key").
func NewSigner(origin string, key ed25519.PrivateKey) (note.Signer, string, error) {
	if err := ValidOrigin(origin); err != nil {
		return nil, "", err
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, "", fmt.Errorf("checkpoint key: %d bytes, want an Ed25519 private key", len(key))
	}
	vkey, err := note.NewEd25519VerifierKey(origin, key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, "", err
	}
	// note only builds signers from its encoded key form, which shares
	// "name+hash" with the verifier key; algorithm 1 is Ed25519.
	name, rest, _ := strings.Cut(vkey, "+")
	hash, _, _ := strings.Cut(rest, "+")
	skey := "PRIVATE+KEY+" + name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(append([]byte{1}, key.Seed()...))
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, "", fmt.Errorf("checkpoint signer: %w", err)
	}
	return s, vkey, nil
}
