package logcheck

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const origin = "palisade-keyd/test"

// testLog builds n records, their stored hashes, and a signed checkpoint.
type testLog struct {
	leaves [][]byte
	stored []tlog.Hash
	signer note.Signer
	v      note.Verifier
}

func newLog(t testing.TB, n int) *testLog {
	t.Helper()
	skey, vkey, err := note.GenerateKey(nil, origin)
	if err != nil {
		t.Fatal(err)
	}
	l := &testLog{}
	if l.signer, err = note.NewSigner(skey); err != nil {
		t.Fatal(err)
	}
	if l.v, err = note.NewVerifier(vkey); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.add(t, fmt.Appendf(nil, `{"type":"admission","node":"n%d"}`, i))
	}
	return l
}

func (l *testLog) reader() tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, k := range idx {
			out[i] = l.stored[k]
		}
		return out, nil
	})
}

func (l *testLog) add(t testing.TB, leaf []byte) {
	hs, err := tlog.StoredHashes(int64(len(l.leaves)), leaf, l.reader())
	if err != nil {
		t.Fatal(err)
	}
	l.stored = append(l.stored, hs...)
	l.leaves = append(l.leaves, leaf)
}

func (l *testLog) checkpoint(t testing.TB, size int64) []byte {
	t.Helper()
	root, err := tlog.TreeHash(size, l.reader())
	if err != nil {
		t.Fatal(err)
	}
	c := Checkpoint{Origin: origin, Size: size, Root: root}
	msg, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\n", c.Origin, c.Size, root)}, l.signer)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// verifyAll is one full owner-side check: both checkpoints, consistency,
// replay of every record and the inclusion of one.
func verifyAll(l *testLog, oldMsg, newMsg []byte, proof tlog.TreeProof, incl tlog.RecordProof, index int64) error {
	oc, err := Verify(oldMsg, l.v)
	if err != nil {
		return err
	}
	nc, err := Verify(newMsg, l.v)
	if err != nil {
		return err
	}
	if err := Consistent(oc, nc, proof); err != nil {
		return err
	}
	if err := Replay(nc, l.leaves[:nc.Size]); err != nil {
		return err
	}
	return Included(nc, index, l.leaves[index], incl)
}

func TestChecks(t *testing.T) {
	l := newLog(t, 7)
	oldMsg, newMsg := l.checkpoint(t, 4), l.checkpoint(t, 7)
	proof, err := tlog.ProveTree(7, 4, l.reader())
	if err != nil {
		t.Fatal(err)
	}
	incl, err := tlog.ProveRecord(7, 5, l.reader())
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyAll(l, oldMsg, newMsg, proof, incl, 5); err != nil {
		t.Fatalf("valid log: %v", err)
	}
	oc, _ := Verify(oldMsg, l.v)
	nc, _ := Verify(newMsg, l.v)
	other := newLog(t, 7)
	other.leaves[3] = []byte(`{"type":"admission","node":"x"}`)
	forked := newLog(t, 0)
	for _, lf := range other.leaves {
		forked.add(t, lf)
	}
	fc := Checkpoint{Origin: origin, Size: 7, Root: mustRoot(t, forked, 7)}
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"rollback", Consistent(nc, oc, nil), ErrRollback},
		{"same-size-fork", Consistent(nc, fc, nil), ErrFork},
		{"bad-consistency-proof", Consistent(oc, fc, proof), ErrConsistency},
		{"wrong-leaf", Included(nc, 4, l.leaves[5], incl), ErrInclusion},
		{"index-outside", Included(oc, 5, l.leaves[5], incl), ErrInclusion},
		{"replay-missing", Replay(nc, l.leaves[:6]), ErrReplay},
		{"replay-changed", Replay(nc, other.leaves), ErrReplay},
		{"other-key", func() error { _, err := Verify(newMsg, other.v); return err }(), ErrSignature},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
}

func mustRoot(t *testing.T, l *testLog, n int64) tlog.Hash {
	r, err := tlog.TreeHash(n, l.reader())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func FuzzParseCheckpoint(f *testing.F) {
	f.Add([]byte("palisade-keyd/c\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"))
	f.Add([]byte("o\n-1\nx\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCheckpoint(b)
		if err == nil && (c.Size < 0 || c.Origin == "") {
			t.Fatalf("accepted %q", b)
		}
	})
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"type":"admission","node":"a","attrs":{"hardware_id":"00"}}`))
	f.Add([]byte(`{"type":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := ParseRecord(b); err == nil && r.Type == "" {
			t.Fatal("accepted a record without type")
		}
	})
}

// BenchmarkVerify is one full owner-side log check of a 1,000-record log.
func BenchmarkVerify(b *testing.B) {
	l := newLog(b, 1000)
	oldMsg, newMsg := l.checkpoint(b, 600), l.checkpoint(b, 1000)
	proof, _ := tlog.ProveTree(1000, 600, l.reader())
	incl, _ := tlog.ProveRecord(1000, 700, l.reader())
	for b.Loop() {
		if err := verifyAll(l, oldMsg, newMsg, proof, incl, 700); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloor is the signature verifications of that check: the two
// checkpoint notes' Ed25519 signatures.
func BenchmarkFloor(b *testing.B) {
	l := newLog(b, 1)
	msg := l.checkpoint(b, 1)
	n, err := note.Open(msg, note.VerifierList(l.v))
	if err != nil {
		b.Fatal(err)
	}
	// note hides its key; the same Ed25519 verification over the same text.
	pub, priv, _ := ed25519.GenerateKey(nil)
	m := []byte(n.Text)
	s := ed25519.Sign(priv, m)
	for b.Loop() {
		for range 2 {
			if !ed25519.Verify(pub, m, s) {
				b.Fatal("verify")
			}
		}
	}
}
