// Package logcheck is the owner's check of keyd's admission log: signed
// checkpoints, consistency with the last one seen, inclusion of records and
// a replay of every record. It is not the log: it never writes one.
//
// keyd/auditlog holds keyd's side, but a component may import only keyd/api
// (ARCHITECTURE §2 rule 4), so these checks are written here against the
// formats themselves: C2SP tlog-checkpoint in a signed note
// (golang.org/x/mod/sumdb/note) and RFC 6962 Merkle proofs
// (golang.org/x/mod/sumdb/tlog).
package logcheck

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Errors by what the log did wrong; test with errors.Is.
var (
	ErrMalformed   = errors.New("log: malformed")
	ErrSignature   = errors.New("log: checkpoint not signed by the pinned log key")
	ErrOrigin      = errors.New("log: checkpoint of another log")
	ErrRollback    = errors.New("log: rolled back")
	ErrFork        = errors.New("log: forked")
	ErrConsistency = errors.New("log: consistency proof does not verify")
	ErrInclusion   = errors.New("log: inclusion proof does not verify")
	ErrReplay      = errors.New("log: records do not hash to the checkpoint")
)

// Checkpoint is a verified "origin has size records with root".
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// ParseCheckpoint parses a checkpoint body: exactly origin, size and root
// lines (C2SP tlog-checkpoint); keyd writes no extension lines, and one we
// cannot check is refused rather than ignored.
func ParseCheckpoint(body []byte) (Checkpoint, error) {
	lines := strings.Split(string(body), "\n")
	if len(lines) != 4 || lines[3] != "" {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint has %d lines, want origin, size, root", ErrMalformed, len(lines)-1)
	}
	if lines[0] == "" {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint origin empty", ErrMalformed)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint size %q", ErrMalformed, lines[1])
	}
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint root %q", ErrMalformed, lines[2])
	}
	c := Checkpoint{Origin: lines[0], Size: size}
	copy(c.Root[:], root)
	return c, nil
}

// Verify opens a signed checkpoint note with the pinned key; the origin
// must be the key's name (keyd names its log key after the log).
func Verify(msg []byte, v note.Verifier) (Checkpoint, error) {
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
	if c.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("%w: origin %q, log key is for %q", ErrOrigin, c.Origin, v.Name())
	}
	return c, nil
}

// Consistent checks that newer extends older (RFC 6962 §2.1.2): a smaller
// newer tree is a rollback, the same size with another root a fork.
func Consistent(older, newer Checkpoint, proof tlog.TreeProof) error {
	switch {
	case older.Origin != newer.Origin:
		return fmt.Errorf("%w: origins %q and %q", ErrOrigin, older.Origin, newer.Origin)
	case newer.Size < older.Size:
		return fmt.Errorf("%w: keyd shows size %d, this owner saw size %d", ErrRollback, newer.Size, older.Size)
	case newer.Size == older.Size:
		if newer.Root != older.Root {
			return fmt.Errorf("%w: two roots for size %d", ErrFork, newer.Size)
		}
		return nil
	case older.Size == 0:
		return nil
	}
	if err := tlog.CheckTree(proof, newer.Size, newer.Root, older.Size, older.Root); err != nil {
		return fmt.Errorf("%w (fork or rewritten history): size %d to %d: %v", ErrConsistency, older.Size, newer.Size, err)
	}
	return nil
}

// Included checks that leaf is record index of the tree c commits to.
func Included(c Checkpoint, index int64, leaf []byte, proof tlog.RecordProof) error {
	if index < 0 || index >= c.Size {
		return fmt.Errorf("%w: index %d outside tree of size %d", ErrInclusion, index, c.Size)
	}
	if err := tlog.CheckRecord(proof, c.Size, c.Root, index, tlog.RecordHash(leaf)); err != nil {
		return fmt.Errorf("%w: record %d in tree of size %d: %v", ErrInclusion, index, c.Size, err)
	}
	return nil
}

// Replay checks that leaves are exactly the records of c: their Merkle tree
// has c's size and root. Only then does what they say count.
func Replay(c Checkpoint, leaves [][]byte) error {
	if int64(len(leaves)) != c.Size {
		return fmt.Errorf("%w: %d records for a tree of size %d", ErrReplay, len(leaves), c.Size)
	}
	var stored []tlog.Hash
	for i, l := range leaves {
		hs, err := tlog.StoredHashes(int64(i), l, tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
			out := make([]tlog.Hash, len(idx))
			for j, k := range idx {
				out[j] = stored[k]
			}
			return out, nil
		}))
		if err != nil {
			return fmt.Errorf("%w: record %d: %v", ErrReplay, i, err)
		}
		stored = append(stored, hs...)
	}
	root, err := tlog.TreeHash(c.Size, tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for j, k := range idx {
			out[j] = stored[k]
		}
		return out, nil
	}))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrReplay, err)
	}
	if root != c.Root {
		return fmt.Errorf("%w: root of %d records differs", ErrReplay, c.Size)
	}
	return nil
}

// Record is what the owner reads of a log record (keyd/auditlog's
// canonical JSON; fields it does not need are ignored, since the record's
// bytes are already authenticated by its hash).
type Record struct {
	Type            string            `json:"type"`
	Node            string            `json:"node,omitempty"`
	Role            string            `json:"role,omitempty"`
	Profile         string            `json:"profile,omitempty"`
	Platform        string            `json:"platform,omitempty"`
	Claims          string            `json:"claims,omitempty"`
	SecurityVersion uint64            `json:"security_version,omitempty"`
	Attrs           map[string]string `json:"attrs,omitempty"`
}

// Record types and revocation events the owner acts on.
const (
	TypeAdmission   = "admission"
	TypeRevocation  = "revocation"
	EventRevokeNode = "revoke-node"
)

// ParseRecord decodes one leaf.
func ParseRecord(leaf []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(leaf))
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("%w: record: %v", ErrMalformed, err)
	}
	if dec.More() {
		return Record{}, fmt.Errorf("%w: record: trailing data", ErrMalformed)
	}
	if r.Type == "" {
		return Record{}, fmt.Errorf("%w: record without type", ErrMalformed)
	}
	return r, nil
}
