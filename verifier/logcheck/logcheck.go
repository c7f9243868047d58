// Package logcheck is the owner's check of keyd's admission log: signed
// checkpoints, consistency with the last one seen, inclusion of records and
// a replay of every record. It is not the log: it never writes one.
//
// The formats and proof checks are internal/admissionlog, the same code keyd
// writes the log with; this package adds what only the owner does (the
// replay of every record) and names the checks as the verifier uses them.
package logcheck

import (
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/palisade-cc/palisade/internal/admissionlog"
)

// Errors by what the log did wrong; test with errors.Is.
var (
	ErrMalformed   = admissionlog.ErrMalformed
	ErrSignature   = admissionlog.ErrSignature
	ErrOrigin      = admissionlog.ErrOrigin
	ErrRollback    = admissionlog.ErrRollback
	ErrFork        = admissionlog.ErrFork
	ErrConsistency = admissionlog.ErrConsistency
	ErrInclusion   = admissionlog.ErrInclusion
	ErrReplay      = errors.New("log: records do not hash to the checkpoint")
)

// Checkpoint is a verified "origin has size records with root".
type Checkpoint = admissionlog.Checkpoint

// ParseCheckpoint parses a checkpoint body (C2SP tlog-checkpoint).
func ParseCheckpoint(body []byte) (Checkpoint, error) { return admissionlog.ParseCheckpoint(body) }

// Verify opens a signed checkpoint note with the pinned key; the origin
// must be the key's name (keyd names its log key after the log).
func Verify(msg []byte, v note.Verifier) (Checkpoint, error) {
	if v == nil {
		return Checkpoint{}, fmt.Errorf("%w: no log key", ErrSignature)
	}
	return admissionlog.VerifyCheckpoint(msg, v.Name(), v)
}

// Consistent checks that newer extends older (RFC 6962 §2.1.2): a smaller
// newer tree is a rollback, the same size with another root a fork.
func Consistent(older, newer Checkpoint, proof tlog.TreeProof) error {
	return admissionlog.VerifyConsistency(older, newer, proof)
}

// Included checks that leaf is record index of the tree c commits to.
func Included(c Checkpoint, index int64, leaf []byte, proof tlog.RecordProof) error {
	return admissionlog.VerifyInclusion(c, index, leaf, proof)
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

// Record is one log record, as keyd wrote it (canonical JSON).
type Record = admissionlog.Record

// Record types and revocation events the owner acts on.
const (
	TypeAdmission   = admissionlog.TypeAdmission
	TypeRevocation  = admissionlog.TypeRevocation
	EventRevokeNode = "revoke-node"
)

// ParseRecord decodes one leaf; only keyd's canonical encoding is accepted.
func ParseRecord(leaf []byte) (Record, error) { return admissionlog.ParseRecord(leaf) }
