package api

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"
)

// FuzzOwnerRequest feeds keyd's decoding of owner requests: nothing may
// panic, and only the one correctly signed request verifies.
func FuzzOwnerRequest(f *testing.F) {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	now := time.Unix(1_800_000_000, 0)
	r := OwnerRequest{Action: ActionRevokeNode, ClusterID: "c", NodeID: "node-1", Timestamp: now.Unix(), Nonce: make([]byte, OwnerNonceSize)}
	r.Sign(key)
	good, _ := json.Marshal(r)
	f.Add(good)
	f.Add([]byte(`{"action":"revoke-version","cluster_id":"c","security_version":3}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req OwnerRequest
		if json.Unmarshal(b, &req) != nil {
			return
		}
		if err := req.Verify(key.Public().(ed25519.PublicKey), "c", now); err == nil {
			if string(req.SigningBytes()) != string(r.SigningBytes()) {
				t.Fatalf("a request other than the signed one verified: %+v", req)
			}
		}
	})
}

func TestOwnerRequestSigningBytesDistinct(t *testing.T) {
	a := OwnerRequest{Action: ActionRevokeNode, ClusterID: "c", NodeID: "ab", Timestamp: 1, Nonce: []byte("n")}
	b := a
	b.ClusterID, b.NodeID = "ca", "b"
	if string(a.SigningBytes()) == string(b.SigningBytes()) {
		t.Fatal("field boundaries not encoded")
	}
}
