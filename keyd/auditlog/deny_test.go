package auditlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/palisade-cc/palisade/keyd/store"
)

// valid is what a client holds before each attack: an old checkpoint it
// saw, a newer one, a consistency proof between them, and an entry with
// its inclusion proof in the newer one. Each TestDeny subtest first checks
// that all of it verifies, then changes one thing.
type valid struct {
	f              *fixture
	oldMsg, newMsg []byte
	old, new       Checkpoint
	cons           tlog.TreeProof
	index          int64
	leaf           []byte
	incl           tlog.RecordProof
}

func newValid(t testing.TB) *valid {
	t.Helper()
	ctx := context.Background()
	v := &valid{f: newFixture(t), index: 4}
	v.f.append(t, 7)
	v.old, v.oldMsg = v.f.checkpoint(t)
	v.f.append(t, 6)
	v.new, v.newMsg = v.f.checkpoint(t)
	var err error
	if v.cons, err = v.f.log.ProveConsistency(ctx, v.old.Size, v.new.Size); err != nil {
		t.Fatal(err)
	}
	leaves, err := v.f.log.Entries(ctx, v.index, v.index+1)
	if err != nil {
		t.Fatal(err)
	}
	v.leaf = leaves[0]
	if v.incl, err = v.f.log.ProveInclusion(ctx, v.index, v.new.Size); err != nil {
		t.Fatal(err)
	}
	if err := v.check(v.f.ver); err != nil {
		t.Fatalf("valid log does not verify: %v", err)
	}
	return v
}

// check runs the client's checks in order: both checkpoints, consistency,
// inclusion.
func (v *valid) check(ver note.Verifier) error {
	old, err := VerifyCheckpoint(v.oldMsg, testOrigin, ver)
	if err != nil {
		return err
	}
	newer, err := VerifyCheckpoint(v.newMsg, testOrigin, ver)
	if err != nil {
		return err
	}
	if err := VerifyConsistency(old, newer, v.cons); err != nil {
		return err
	}
	return VerifyInclusion(newer, v.index, v.leaf, v.incl)
}

func wantDenied(t *testing.T, err, class error) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted, want %v", class)
	}
	if !errors.Is(err, class) {
		t.Fatalf("denied with %v, want %v", err, class)
	}
}

func TestValidVerifies(t *testing.T) {
	newValid(t) // newValid fails the test if the unmodified log is denied
}

func TestDeny(t *testing.T) {
	ctx := context.Background()

	t.Run("forked-log", func(t *testing.T) {
		// The same key signs a second history of the old size: a client
		// holding one and shown the other must see the fork.
		v := newValid(t)
		fork := &fixture{path: v.f.path + ".fork", key: v.f.key}
		fork.open(t)
		fork.append(t, int(v.old.Size)-1)
		if _, err := fork.log.Append(ctx, Record{Type: TypeAdmission, Node: "evil", Time: t0}); err != nil {
			t.Fatal(err)
		}
		_, v.newMsg = fork.checkpoint(t)
		v.cons = tlog.TreeProof{}
		wantDenied(t, v.check(v.f.ver), ErrFork)
	})

	t.Run("forked-log-grown", func(t *testing.T) {
		// A forked history that has grown past the old checkpoint cannot
		// prove it extends it.
		v := newValid(t)
		fork := &fixture{path: v.f.path + ".fork", key: v.f.key}
		fork.open(t)
		fork.append(t, 3)
		if _, err := fork.log.Append(ctx, Record{Type: TypeAdmission, Node: "evil", Time: t0}); err != nil {
			t.Fatal(err)
		}
		fork.append(t, int(v.new.Size)-4)
		_, v.newMsg = fork.checkpoint(t)
		var err error
		if v.cons, err = fork.log.ProveConsistency(ctx, v.old.Size, v.new.Size); err != nil {
			t.Fatal(err)
		}
		wantDenied(t, v.check(v.f.ver), ErrConsistency)
	})

	t.Run("rewritten-leaf", func(t *testing.T) {
		v := newValid(t)
		v.leaf = bytes.Replace(v.leaf, []byte("node-4"), []byte("node-5"), 1)
		wantDenied(t, v.check(v.f.ver), ErrInclusion)
	})

	t.Run("rewritten-history", func(t *testing.T) {
		// An attacker with write access to the store rewrites an old
		// entry and every stored hash, then signs a fresh checkpoint of
		// the rewritten log with the real key.
		v := newValid(t)
		leaves, err := v.f.log.Entries(ctx, 0, v.new.Size)
		if err != nil {
			t.Fatal(err)
		}
		leaves[2] = bytes.Replace(leaves[2], []byte("node-2"), []byte("evil-2"), 1)
		if err := v.f.store.Update(ctx, func(tx store.Tx) error {
			var hashes []tlog.Hash
			r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
				out := make([]tlog.Hash, len(idx))
				for i, x := range idx {
					out[i] = hashes[x]
				}
				return out, nil
			})
			for i, leaf := range leaves {
				hs, err := tlog.StoredHashes(int64(i), leaf, r)
				if err != nil {
					return err
				}
				hashes = append(hashes, hs...)
				if err := tx.Put(BucketLeaves, indexKey(int64(i)), leaf); err != nil {
					return err
				}
			}
			for i, h := range hashes {
				if err := tx.Put(BucketHashes, indexKey(int64(i)), h[:]); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		_, v.newMsg = v.f.checkpoint(t)
		if v.cons, err = v.f.log.ProveConsistency(ctx, v.old.Size, v.new.Size); err != nil {
			t.Fatal(err)
		}
		if v.incl, err = v.f.log.ProveInclusion(ctx, v.index, v.new.Size); err != nil {
			t.Fatal(err)
		}
		wantDenied(t, v.check(v.f.ver), ErrConsistency)
	})

	t.Run("wrong-checkpoint-key", func(t *testing.T) {
		// The same log, its checkpoint signed by another key of the same
		// name.
		v := newValid(t)
		other, _, err := NewSigner(testOrigin, testKey(2))
		if err != nil {
			t.Fatal(err)
		}
		if v.newMsg, err = note.Sign(&note.Note{Text: string(v.new.Body())}, other); err != nil {
			t.Fatal(err)
		}
		wantDenied(t, v.check(v.f.ver), ErrSignature)
	})

	t.Run("forged-signature", func(t *testing.T) {
		// The pinned key's name and hash, but a signature over other text.
		v := newValid(t)
		body := v.new.Body()
		v.newMsg = append(bytes.Replace(v.newMsg[:len(body)], []byte("\n13\n"), []byte("\n14\n"), 1), v.newMsg[len(body):]...)
		wantDenied(t, v.check(v.f.ver), ErrSignature)
	})

	t.Run("rolled-back-checkpoint", func(t *testing.T) {
		// A client that saw the newer checkpoint is later shown the older.
		v := newValid(t)
		v.oldMsg, v.newMsg = v.newMsg, v.oldMsg
		v.cons = tlog.TreeProof{}
		wantDenied(t, v.check(v.f.ver), ErrRollback)
	})

	t.Run("wrong-origin", func(t *testing.T) {
		// The log key also signs checkpoints of another log (same trees,
		// other origin): they must not pass for this log's.
		v := newValid(t)
		for _, m := range []*[]byte{&v.oldMsg, &v.newMsg} {
			c, err := VerifyCheckpoint(*m, testOrigin, v.f.ver)
			if err != nil {
				t.Fatal(err)
			}
			c.Origin = "other.log"
			if *m, err = note.Sign(&note.Note{Text: string(c.Body())}, v.f.log.signer); err != nil {
				t.Fatal(err)
			}
		}
		wantDenied(t, v.check(v.f.ver), ErrOrigin)
	})

	t.Run("wrong-index", func(t *testing.T) {
		v := newValid(t)
		v.index++
		wantDenied(t, v.check(v.f.ver), ErrInclusion)
	})

	t.Run("truncated-inclusion-proof", func(t *testing.T) {
		v := newValid(t)
		v.incl = v.incl[:len(v.incl)-1]
		wantDenied(t, v.check(v.f.ver), ErrInclusion)
	})

	t.Run("altered-consistency-proof", func(t *testing.T) {
		v := newValid(t)
		v.cons[0][0] ^= 1
		wantDenied(t, v.check(v.f.ver), ErrConsistency)
	})

	t.Run("index-beyond-tree", func(t *testing.T) {
		// An inclusion proof in a tree the checkpoint does not cover.
		v := newValid(t)
		v.index = v.new.Size
		wantDenied(t, v.check(v.f.ver), ErrInclusion)
	})
}

// BenchmarkVerify is one full client check of the log: two checkpoint
// signatures, a consistency proof and an inclusion proof.
func BenchmarkVerify(b *testing.B) {
	v := newValid(b)
	for b.Loop() {
		if err := v.check(v.f.ver); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloor is only the two Ed25519 signature verifications that
// BenchmarkVerify performs.
func BenchmarkFloor(b *testing.B) {
	v := newValid(b)
	type signed struct{ text, sig []byte }
	var sigs []signed
	for _, msg := range [][]byte{v.oldMsg, v.newMsg} {
		i := bytes.Index(msg, []byte("\n\n"))
		line := bytes.TrimSuffix(msg[i+2:], []byte("\n"))
		_, b64, _ := bytes.Cut(bytes.TrimPrefix(line, []byte("\u2014 ")), []byte(" "))
		raw, err := base64.StdEncoding.DecodeString(string(b64))
		if err != nil || len(raw) != 4+ed25519.SignatureSize {
			b.Fatalf("signature line %q: %v", line, err)
		}
		sigs = append(sigs, signed{msg[:i+1], raw[4:]})
	}
	pub := v.f.key.Public().(ed25519.PublicKey)
	for b.Loop() {
		for _, s := range sigs {
			if !ed25519.Verify(pub, s.text, s.sig) {
				b.Fatal("signature does not verify")
			}
		}
	}
}
