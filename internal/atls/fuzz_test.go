package atls

import (
	"bytes"
	"crypto/ed25519"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/palisade-cc/palisade/internal/attest"
)

// seedFrames are valid frames of every type, the seed corpus.
func seedFrames(f *testing.F) [][]byte {
	f.Helper()
	claims := attest.Claims{NodeID: "node-1", Role: attest.RoleNode, Profile: testProfile,
		WireGuardKey: bytes.Repeat([]byte{7}, 32), DiskUUIDs: []string{"0f8fad5b-d9cb-469f-a165-70867728950e"}}
	id := testKeys().Public().(ed25519.PublicKey)
	msgs := []struct {
		t msgType
		m any
	}{
		{msgClientHello, &hello{Nonce: make([]byte, 32), Claims: claims, Platform: testPlatform, Identity: id, Verify: true}},
		{msgServerHello, &hello{Nonce: make([]byte, 32), Claims: claims, Verify: true, Challenge: make([]byte, 32)}},
		{msgChallenge, &challenge{Challenge: make([]byte, 32)}},
		{msgServerEvidence, &evidence{Evidence: &attest.Evidence{Platform: testPlatform,
			Blobs: map[string][]byte{blobReport: make([]byte, testReportSize), blobSignature: make([]byte, 64)}}}},
		{msgClientEvidence, &evidence{}},
		{msgVerdict, &verdict{OK: true}},
	}
	var out [][]byte
	for _, m := range msgs {
		p, err := encodeMessage(m.m)
		if err != nil {
			f.Fatal(err)
		}
		var b bytes.Buffer
		if err := writeFrame(&b, m.t, p); err != nil {
			f.Fatal(err)
		}
		out = append(out, b.Bytes())
	}
	return out
}

// FuzzFrame: reading and decoding frames from arbitrary bytes never
// panics, never reads past what a frame announces, and what decodes
// re-encodes to a message that decodes the same.
func FuzzFrame(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s)
		f.Add(s[:len(s)/2])
		f.Add(append(append([]byte{}, s...), s...))
	}
	f.Add([]byte{1, 4, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{2, 1, 0, 0, 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			typ, p, err := readFrame(r, 1<<16)
			if err != nil {
				if attest.ClassOf(err) != attest.ClassProtocol {
					t.Fatalf("readFrame error of class %q: %v", attest.ClassOf(err), err)
				}
				return
			}
			if len(p) > typ.limit(1<<16) {
				t.Fatalf("frame %s of %d bytes over its limit", typ, len(p))
			}
			roundTrip(t, typ, p)
		}
	})
}

// FuzzMessages: decoding any payload as any message type never panics and
// every decoded message survives a round trip.
func FuzzMessages(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s[1], s[headerSize:])
	}
	f.Add(byte(msgClientHello), []byte(`{"nonce":null,"claims":{}}`))
	f.Add(byte(msgServerEvidence), []byte(`{"evidence":{"platform":"tpm","blobs":{"a":"AA=="}}}`))
	f.Add(byte(msgVerdict), []byte(`{"ok":true} {}`))
	f.Add(byte(0), []byte(`{}`))
	f.Fuzz(func(t *testing.T, typ byte, p []byte) {
		roundTrip(t, msgType(typ), p)
	})
}

func roundTrip(t *testing.T, typ msgType, p []byte) {
	t.Helper()
	m, err := decodeMessage(typ, p)
	if err != nil {
		if c := attest.ClassOf(err); c != attest.ClassMalformed && c != attest.ClassProtocol {
			t.Fatalf("decode error of class %q: %v", c, err)
		}
		return
	}
	q, err := encodeMessage(m)
	if err != nil {
		t.Fatalf("re-encode %s: %v", typ, err)
	}
	m2, err := decodeMessage(typ, q)
	if err != nil {
		t.Fatalf("decode re-encoded %s: %v\n%s", typ, err, q)
	}
	// Empty and absent byte strings mean the same on the wire.
	if d := cmp.Diff(m, m2, cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("%s round trip (-first +second):\n%s", typ, d)
	}
}
