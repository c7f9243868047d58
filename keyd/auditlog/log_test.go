package auditlog

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/palisade-cc/palisade/keyd/store"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
)

const testOrigin = "keyd.test.palisade/admissions"

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type fixture struct {
	path  string
	store store.Store
	log   *Log
	vkey  string
	ver   note.Verifier
	key   ed25519.PrivateKey
}

func testKey(seed byte) ed25519.PrivateKey {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return ed25519.NewKeyFromSeed(s)
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{path: filepath.Join(t.TempDir(), "keyd.db"), key: testKey(1)}
	f.open(t)
	return f
}

func (f *fixture) open(t testing.TB) {
	t.Helper()
	st, err := bbolt.Open(f.path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	signer, vkey, err := NewSigner(testOrigin, f.key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(st, testOrigin, signer)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	l.Now = func() time.Time { return t0.Add(time.Duration(n.Add(1)) * time.Second) }
	ver, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	f.store, f.log, f.vkey, f.ver = st, l, vkey, ver
}

func record(i int) Record {
	return Record{Type: TypeAdmission, Node: fmt.Sprintf("node-%d", i), Role: "node", Profile: "qemu-tpm",
		Platform: "tpm", SecurityVersion: 3, Attrs: map[string]string{"mesh": fmt.Sprintf("10.0.0.%d", i%250)}}
}

func (f *fixture) append(t testing.TB, n int) {
	t.Helper()
	for i := range n {
		if _, err := f.log.Append(context.Background(), record(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkpoint returns the current checkpoint, verified as a client would.
func (f *fixture) checkpoint(t testing.TB) (Checkpoint, []byte) {
	t.Helper()
	c, msg, err := f.log.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyCheckpoint(msg, testOrigin, f.ver)
	if err != nil {
		t.Fatalf("VerifyCheckpoint of own checkpoint: %v", err)
	}
	if got != c {
		t.Fatalf("verified checkpoint %+v, log said %+v", got, c)
	}
	return c, msg
}

func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const n = 33
	var cps []Checkpoint
	var leaves [][]byte
	var memHashes []tlog.Hash // an independent in-memory tree of the same leaves
	memReader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = memHashes[x]
		}
		return out, nil
	})
	empty, _ := f.checkpoint(t)
	// RFC 6962 §2.1: the empty tree's root is SHA-256 of the empty string.
	if got, want := empty.Root.String(), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="; got != want {
		t.Errorf("empty root %s, want SHA-256(\"\") %s", got, want)
	}
	for i := range n {
		idx, err := f.log.Append(ctx, record(i))
		if err != nil {
			t.Fatal(err)
		}
		if idx != int64(i) {
			t.Fatalf("Append %d returned index %d", i, idx)
		}
		leaf, _ := withTime(record(i), t0.Add(time.Duration(i+1)*time.Second)).Marshal()
		leaves = append(leaves, leaf)
		hs, err := tlog.StoredHashes(int64(i), leaf, memReader)
		if err != nil {
			t.Fatal(err)
		}
		memHashes = append(memHashes, hs...)

		c, _ := f.checkpoint(t)
		wantRoot, _ := tlog.TreeHash(int64(i+1), memReader)
		if c.Size != int64(i+1) || c.Root != wantRoot {
			t.Fatalf("checkpoint after %d appends: size %d root %s, want %d %s", i+1, c.Size, c.Root, i+1, wantRoot)
		}
		for j := range i + 1 {
			p, err := f.log.ProveInclusion(ctx, int64(j), c.Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(c, int64(j), leaves[j], p); err != nil {
				t.Errorf("entry %d in tree %d: %v", j, c.Size, err)
			}
		}
		for _, old := range append(cps, empty, c) {
			p, err := f.log.ProveConsistency(ctx, old.Size, c.Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(old, c, p); err != nil {
				t.Errorf("consistency %d → %d: %v", old.Size, c.Size, err)
			}
		}
		cps = append(cps, c)
	}
	got, err := f.log.Entries(ctx, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(leaves, got); diff != "" {
		t.Errorf("Entries (-want +got):\n%s", diff)
	}
	for i, leaf := range got {
		r, err := ParseRecord(leaf)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if r.Node != record(i).Node {
			t.Errorf("entry %d is for %s", i, r.Node)
		}
	}
}

func withTime(r Record, tm time.Time) Record { r.Time = tm; return r }

func TestProofArgumentErrors(t *testing.T) {
	f := newFixture(t)
	f.append(t, 5)
	ctx := context.Background()
	for _, tc := range []struct{ idx, size int64 }{{5, 5}, {-1, 5}, {0, 6}, {3, 2}, {0, 0}} {
		if _, err := f.log.ProveInclusion(ctx, tc.idx, tc.size); err == nil {
			t.Errorf("ProveInclusion(%d, %d) succeeded", tc.idx, tc.size)
		}
	}
	for _, tc := range []struct{ old, new int64 }{{3, 2}, {-1, 3}, {2, 6}} {
		if _, err := f.log.ProveConsistency(ctx, tc.old, tc.new); err == nil {
			t.Errorf("ProveConsistency(%d, %d) succeeded", tc.old, tc.new)
		}
	}
	for _, tc := range []struct{ start, end int64 }{{0, 6}, {3, 2}, {-1, 2}, {0, MaxEntries + 1}} {
		if _, err := f.log.Entries(ctx, tc.start, tc.end); err == nil {
			t.Errorf("Entries(%d, %d) succeeded", tc.start, tc.end)
		}
	}
}

func TestAppendTxIsAtomicWithCaller(t *testing.T) {
	f := newFixture(t)
	f.append(t, 3)
	before, _ := f.checkpoint(t)
	ctx := context.Background()
	err := f.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Put("registry", []byte("node-x"), []byte("admitted")); err != nil {
			return err
		}
		if _, err := f.log.AppendTx(tx, record(99)); err != nil {
			return err
		}
		return errors.New("admission failed after logging")
	})
	if err == nil {
		t.Fatal("failing Update returned nil")
	}
	if after, _ := f.checkpoint(t); after != before {
		t.Errorf("rolled-back AppendTx changed the log: %+v → %+v", before, after)
	}
	// Two appends and a registry write commit together.
	var idx [2]int64
	if err := f.store.Update(ctx, func(tx store.Tx) error {
		var err error
		if idx[0], err = f.log.AppendTx(tx, record(10)); err != nil {
			return err
		}
		if idx[1], err = f.log.AppendTx(tx, record(11)); err != nil {
			return err
		}
		return tx.Put("registry", []byte("node-10"), []byte("admitted"))
	}); err != nil {
		t.Fatal(err)
	}
	if idx != [2]int64{3, 4} {
		t.Errorf("indexes %v, want [3 4]", idx)
	}
	after, _ := f.checkpoint(t)
	p, err := f.log.ProveConsistency(ctx, before.Size, after.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(before, after, p); err != nil {
		t.Error(err)
	}
}

func TestConcurrentAppends(t *testing.T) {
	f := newFixture(t)
	const n = 64
	var wg sync.WaitGroup
	idx := make([]int64, n)
	for i := range n {
		wg.Go(func() {
			var err error
			if idx[i], err = f.log.Append(context.Background(), record(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	seen := make(map[int64]bool)
	for _, x := range idx {
		seen[x] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct indexes for %d appends", len(seen), n)
	}
	c, _ := f.checkpoint(t)
	if c.Size != n {
		t.Fatalf("size %d, want %d", c.Size, n)
	}
	leaves, err := f.log.Entries(context.Background(), 0, n)
	if err != nil {
		t.Fatal(err)
	}
	for i, leaf := range leaves {
		p, err := f.log.ProveInclusion(context.Background(), int64(i), n)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyInclusion(c, int64(i), leaf, p); err != nil {
			t.Error(err)
		}
	}
}

func TestReopenKeepsRoot(t *testing.T) {
	f := newFixture(t)
	f.append(t, 17)
	before, _ := f.checkpoint(t)
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	f.open(t)
	after, _ := f.checkpoint(t)
	if after != before {
		t.Fatalf("checkpoint after reopen %+v, before %+v", after, before)
	}
	f.append(t, 5)
	later, _ := f.checkpoint(t)
	p, err := f.log.ProveConsistency(context.Background(), before.Size, later.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(before, later, p); err != nil {
		t.Errorf("consistency from the checkpoint before reopen: %v", err)
	}
}

func TestNewChecks(t *testing.T) {
	st, err := bbolt.Open(filepath.Join(t.TempDir(), "db"), bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	signer, _, err := NewSigner("other.origin", testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(st, testOrigin, signer); err == nil {
		t.Error("New accepted a signer named for another origin")
	}
	for _, o := range []string{"", "a b", "a+b", "a\nb"} {
		if _, _, err := NewSigner(o, testKey(1)); err == nil {
			t.Errorf("NewSigner accepted origin %q", o)
		}
	}
}

func TestRecordCanonical(t *testing.T) {
	r := withTime(record(7), time.Date(2026, 3, 1, 13, 0, 0, 5, time.FixedZone("CET", 3600)))
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"admission","time":"2026-03-01T12:00:00.000000005Z","node":"node-7","role":"node","profile":"qemu-tpm","platform":"tpm","security_version":3,"attrs":{"mesh":"10.0.0.7"}}`
	if string(b) != want {
		t.Errorf("Marshal = %s\nwant      %s", b, want)
	}
	got, err := ParseRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(withTime(r, r.Time.UTC()), got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	for name, bad := range map[string]string{
		"whitespace":    strings.Replace(want, `,"node"`, `, "node"`, 1),
		"field order":   `{"time":"2026-03-01T12:00:00.000000005Z","type":"admission"}`,
		"not UTC":       strings.Replace(want, "12:00:00.000000005Z", "13:00:00.000000005+01:00", 1),
		"unknown field": strings.Replace(want, `{"type"`, `{"x":1,"type"`, 1),
		"unknown type":  strings.Replace(want, `"admission"`, `"party"`, 1),
		"trailing":      want + "{}",
		"newline":       want + "\n",
		"zero time":     `{"type":"init","time":"0001-01-01T00:00:00Z"}`,
		"empty attrs":   strings.Replace(want, `"mesh":"10.0.0.7"`, ``, 1),
	} {
		if _, err := ParseRecord([]byte(bad)); err == nil {
			t.Errorf("%s: ParseRecord accepted %s", name, bad)
		}
	}
	if _, err := (Record{Type: "bogus", Time: t0}).Marshal(); err == nil {
		t.Error("Marshal accepted an unknown type")
	}
	if _, err := (Record{Type: TypeInit, Time: t0, Reason: strings.Repeat("x", MaxRecordSize)}).Marshal(); err == nil {
		t.Error("Marshal accepted an oversized record")
	}
}

func TestParseProof(t *testing.T) {
	p := []tlog.Hash{tlog.RecordHash([]byte("a")), tlog.RecordHash([]byte("b"))}
	got, err := ParseProof(FormatProof(p))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	good := string(FormatProof(p))
	for name, bad := range map[string]string{
		"no newline":      strings.TrimSuffix(good, "\n"),
		"short hash":      "AAAA\n",
		"blank line":      good + "\n",
		"bad base64":      strings.Replace(good, "=", "!", 1),
		"carriage return": good[:16] + "\r" + good[16:],
		"too long":        strings.Repeat(good[:45], MaxProofHashes+1),
	} {
		if _, err := ParseProof([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		if _, err := f.log.Append(ctx, record(i)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkAppendParallel(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.log.Append(ctx, record(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
